// The centrifuge SDK's Protobuf build (binary frames, subprotocol
// `centrifuge-protobuf`) subscribed to one channel, reporting every event
// as a JSON line. Usage: node sdk_protobuf.mjs <ws-url[,ws-url2]> <channel> <token>
// As in sdk_stream.mjs, the WebSocket class stands in for a load balancer:
// when the transport to one edge closes, the next attempt goes to the next
// URL. Stdin commands: `publish` (a client publish of {"from":"pb"}),
// `history`, `presence`, `stats`, and `done` (prints a summary, exits).
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge/build/protobuf';
import { report, commands } from './lib.mjs';

const [urls, channel, token] = [process.argv[2].split(','), process.argv[3], process.argv[4]];
let current = 0;
const protocols = [];
class Balanced extends WebSocket {
  constructor(_url, protocol) {
    super(urls[current % urls.length], protocol);
    protocols.push(protocol);
    this.on('open', () => report({ event: 'open', protocol: this.protocol }));
  }
}
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));
const c = new Centrifuge(urls[0], {
  token, websocket: Balanced, minReconnectDelay: 100, maxReconnectDelay: 1000, timeout: 10000,
});
const offsets = [];
const subscribed = [];
c.on('connecting', (ctx) => {
  if (ctx.code === 1) current += 1; // transport closed: try the next edge
  report({ event: 'connecting', code: ctx.code, reason: ctx.reason });
});
c.on('connected', (ctx) => report({ event: 'connected', client: ctx.client, transport: ctx.transport }));
c.on('disconnected', (ctx) => report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
c.on('error', (e) => report({ event: 'error', error: e.error }));
const sub = c.newSubscription(channel);
sub.on('subscribed', (ctx) => {
  const s = { recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, position: ctx.streamPosition };
  subscribed.push(s);
  report({ event: 'subscribed', ...s });
});
sub.on('publication', (ctx) => {
  offsets.push(ctx.offset);
  report({ event: 'pub', offset: ctx.offset, data: decode(ctx.data), binary: ctx.data instanceof Uint8Array });
});
sub.on('error', (e) => report({ event: 'suberror', error: e.error }));
sub.subscribe();
c.connect();
const next = commands();
for (;;) {
  const cmd = await next();
  try {
    if (cmd === 'publish') {
      await sub.publish(new TextEncoder().encode(JSON.stringify({ from: 'pb' })));
      report({ event: 'published' });
    } else if (cmd === 'history') {
      const r = await sub.history({ limit: 100 });
      const publications = r.publications.map((p) => ({ offset: p.offset, data: decode(p.data), user: p.info ? p.info.user : null }));
      report({ event: 'history', publications, epoch: r.epoch, offset: r.offset });
    } else if (cmd === 'presence') {
      const r = await sub.presence();
      report({ event: 'presence', clients: Object.values(r.clients).map((i) => ({ client: i.client, user: i.user })) });
    } else if (cmd === 'stats') {
      const r = await sub.presenceStats();
      report({ event: 'stats', numClients: r.numClients, numUsers: r.numUsers });
    } else if (cmd === 'done') {
      report({ event: 'summary', offsets, subscribed, protocols });
      c.disconnect();
      process.exit(0);
    }
  } catch (e) {
    report({ event: 'callerror', cmd, code: e.code, message: e.message });
  }
}

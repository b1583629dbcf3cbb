// A centrifuge SDK client that subscribes to one channel and reports every
// event as a JSON line. Usage: node sdk_stream.mjs <ws-url[,ws-url2]> <channel> <token>
// The WebSocket class stands in for a load balancer: when the transport to
// one edge closes, the next connection attempt goes to the next URL.
// On the stdin line `done` it prints a summary and exits.
import WebSocket from 'ws';
import { client, report, commands } from './lib.mjs';

const [urls, channel, token] = [process.argv[2].split(','), process.argv[3], process.argv[4]];
let current = 0;
class Balanced extends WebSocket {
  constructor(_url, protocols) {
    super(urls[current % urls.length], protocols);
  }
}
const c = client(urls[0], { token, websocket: Balanced });
const offsets = [];
const subscribed = [];
c.on('connecting', (ctx) => {
  if (ctx.code === 1) current += 1; // transport closed: try the next edge
  report({ event: 'connecting', code: ctx.code, reason: ctx.reason });
});
c.on('connected', () => report({ event: 'connected', url: urls[current % urls.length] }));
c.on('error', (e) => report({ event: 'error', error: e.error }));
const sub = c.newSubscription(channel);
sub.on('subscribed', (ctx) => {
  subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, position: ctx.streamPosition });
  report({ event: 'subscribed', recovered: ctx.recovered, wasRecovering: ctx.wasRecovering, position: ctx.streamPosition });
});
sub.on('publication', (ctx) => {
  offsets.push(ctx.offset);
  report({ event: 'pub', offset: ctx.offset, data: ctx.data });
});
sub.on('error', (e) => report({ event: 'suberror', error: e.error }));
sub.subscribe();
c.connect();
const next = commands();
for (;;) {
  const cmd = await next();
  if (cmd === 'done') {
    report({ event: 'summary', offsets, subscribed });
    c.disconnect();
    process.exit(0);
  }
}

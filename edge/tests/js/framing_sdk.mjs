// A centrifuge SDK client (JSON over WebSocket) on one channel, reporting
// every publication with its parsed data. Usage:
//   node framing_sdk.mjs <ws-url> <channel> <token>
// Stdin: `cut` closes the connection and keeps the client away (its next
// attempts go to a closed port) until `resume`; it then reconnects and
// recovers from its position. `done` prints a summary and exits.
import WebSocket from 'ws';
import { client, report, commands } from './lib.mjs';

// A large summary must be flushed before exiting.
const finish = (fact) => process.stdout.write(JSON.stringify(fact) + '\n', () => process.exit(0));

const [url, channel, token] = process.argv.slice(2);
let away = false;
let socket = null;
class Switchable extends WebSocket {
  constructor(_url, protocols) {
    super(away ? 'ws://127.0.0.1:9/' : url, protocols);
    socket = this;
  }
}
const c = client(url, { token, websocket: Switchable });
const received = [];
const subscribed = [];
c.on('error', (e) => report({ event: 'error', error: e.error }));
c.on('disconnected', (ctx) => report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
const sub = c.newSubscription(channel);
sub.on('subscribed', (ctx) => {
  subscribed.push({ recovered: ctx.recovered, wasRecovering: ctx.wasRecovering });
  report({ event: 'subscribed', recovered: ctx.recovered, wasRecovering: ctx.wasRecovering });
});
sub.on('publication', (ctx) => {
  received.push({ offset: ctx.offset, data: ctx.data });
  report({ event: 'pub', offset: ctx.offset, size: JSON.stringify(ctx.data).length });
});
sub.on('error', (e) => report({ event: 'suberror', error: e.error }));
sub.subscribe();
c.connect();
const next = commands();
for (;;) {
  const cmd = await next();
  if (cmd === 'cut') {
    away = true;
    socket.close();
    report({ event: 'cut' });
  } else if (cmd === 'resume') {
    away = false;
    report({ event: 'resumed' });
  } else if (cmd === 'done') {
    c.disconnect();
    finish({ event: 'summary', received, subscribed });
  }
}

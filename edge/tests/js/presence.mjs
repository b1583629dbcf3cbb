// A centrifuge SDK client in one channel of a presence namespace. Usage:
// node presence.mjs <ws-url> <channel> <token>
// Reports `connected` (with its client id), `subscribed`, and every `join` /
// `leave` push as JSON lines. Stdin commands: `presence` and `stats` (the
// client-level presence / presence_stats calls; `presence <channel>` asks
// about another channel), `unsubscribe`, `quit`.
import { client, report, commands } from './lib.mjs';

const [url, channel, token] = process.argv.slice(2);
const c = client(url, { token });
c.on('connected', (ctx) => report({ event: 'connected', client: ctx.client }));
c.on('error', (e) => report({ event: 'error', error: e.error }));
const sub = c.newSubscription(channel, { joinLeave: true });
sub.on('subscribed', () => report({ event: 'subscribed' }));
sub.on('join', (ctx) => report({ event: 'join', client: ctx.info.client, user: ctx.info.user }));
sub.on('leave', (ctx) => report({ event: 'leave', client: ctx.info.client, user: ctx.info.user }));
sub.on('error', (e) => report({ event: 'suberror', error: e.error }));
sub.subscribe();
c.connect();
const next = commands();
for (;;) {
  const cmd = await next();
  try {
    if (cmd === 'presence' || cmd.startsWith('presence ')) {
      const r = await c.presence(cmd.split(' ')[1] || channel);
      const clients = Object.values(r.clients).map((i) => ({ client: i.client, user: i.user }));
      report({ event: 'presence', clients });
    } else if (cmd === 'stats') {
      const r = await c.presenceStats(channel);
      report({ event: 'stats', numClients: r.numClients, numUsers: r.numUsers });
    } else if (cmd === 'unsubscribe') {
      sub.unsubscribe();
      report({ event: 'unsubscribed' });
    } else if (cmd === 'quit') {
      c.disconnect();
      process.exit(0);
    }
  } catch (e) {
    report({ event: 'callerror', cmd, code: e.code, message: e.message });
  }
}

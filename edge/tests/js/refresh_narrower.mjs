// A connection token refreshed to narrower capabilities, with the real SDK.
// Usage: node refresh_narrower.mjs <ws-url> <hs256-secret> <kept> <revoked> <granted>
// The first connection token allows subscribing to <kept> and <revoked> and
// expires in 3 s; getToken returns one allowing only <kept>. <granted> is
// subscribed with a subscription token, which the refresh does not touch.
// Prints {"event":"ready"} once all three are subscribed, one line per
// state change and publication, and on the stdin line `done` a summary:
// the publications each subscription received and how <revoked> ended.
import { hs256, now, report, commands, client } from './lib.mjs';

const [url, secret, kept, revoked, granted] = process.argv.slice(2);
const user = 'narrowed';
const caps = (channels) => [{ channels, allow: ['sub'] }];
let refreshes = 0;
const c = client(url, {
  token: hs256({ sub: user, exp: now() + 3, caps: caps([kept, revoked]) }, secret),
  getToken: async () => {
    refreshes += 1;
    return hs256({ sub: user, exp: now() + 3600, caps: caps([kept]) }, secret);
  },
});
c.on('disconnected', (ctx) => report({ event: 'disconnected', code: ctx.code, reason: ctx.reason }));
const state = {};
const received = { [kept]: [], [revoked]: [], [granted]: [] };
const ended = {};
const subscribed = new Set();
for (const channel of [kept, revoked, granted]) {
  const opts = channel === granted
    ? { token: hs256({ sub: user, channel, exp: now() + 3600 }, secret) }
    : {};
  const sub = c.newSubscription(channel, opts);
  sub.on('subscribed', () => {
    state[channel] = 'subscribed';
    subscribed.add(channel);
    report({ event: 'subscribed', channel });
    if (subscribed.size === 3) report({ event: 'ready' });
  });
  sub.on('unsubscribed', (ctx) => {
    state[channel] = 'unsubscribed';
    ended[channel] = { code: ctx.code, reason: ctx.reason };
    report({ event: 'unsubscribed', channel, code: ctx.code, reason: ctx.reason });
  });
  sub.on('subscribing', (ctx) => {
    if (ctx.code !== 0) report({ event: 'subscribing', channel, code: ctx.code });
  });
  sub.on('publication', (ctx) => {
    received[channel].push(ctx.data.n);
    report({ event: 'pub', channel, n: ctx.data.n });
  });
  sub.subscribe();
}
c.connect();
const next = commands();
for (;;) {
  if ((await next()) === 'done') {
    report({ event: 'summary', refreshes, received, ended, state });
    process.exit(0);
  }
}

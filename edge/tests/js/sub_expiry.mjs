// Token expiry after subscribe, with the real SDK (JSON or its Protobuf
// build). Usage: node sub_expiry.mjs <ws-url> <hs256-secret> <channel> <json|protobuf>
// Three clients subscribe to <channel> with subscription tokens that expire
// in 3 s:
//   refreshing: connection token also expiring in 3 s; both getToken
//               callbacks return fresh tokens, so it stays connected and
//               subscribed throughout;
//   failing:    its subscription getToken throws, so the edge ends the
//               subscription (unsubscribe push 2501) and the SDK keeps
//               trying to subscribe again;
//   stale:      its subscription getToken returns an expired token, which
//               sub_refresh refuses (error 109), so the SDK unsubscribes.
// Prints {"event":"ready"} once all three are subscribed, then one line per
// state change; on the stdin line `done`, a summary per client.
import WebSocket from 'ws';
import { Centrifuge as JsonCentrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';
import { hs256, now, report, commands, until } from './lib.mjs';

const [url, secret, channel, format] = process.argv.slice(2);
const Centrifuge = format === 'protobuf' ? ProtobufCentrifuge : JsonCentrifuge;
const decode = (data) => (format === 'protobuf' ? JSON.parse(new TextDecoder().decode(data)) : data);
const TTL = 3;
const connToken = (user, ttl) => hs256({ sub: user, exp: now() + ttl }, secret);
const subToken = (user, exp) => hs256({ sub: user, channel, exp }, secret);

function start(name, { connTtl, getSubToken }) {
  const s = { offsets: [], events: [], connRefreshes: 0, subRefreshes: 0, ended: null, afterEnd: [] };
  const c = new Centrifuge(url, {
    websocket: WebSocket,
    token: connToken(name, connTtl),
    getToken: async () => { s.connRefreshes += 1; return connToken(name, connTtl); },
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 10000,
  });
  const note = (e) => { s.events.push(e); report({ client: name, ...e }); };
  c.on('disconnected', (ctx) => note({ event: 'disconnected', code: ctx.code }));
  c.on('connecting', (ctx) => { if (ctx.code !== 0) note({ event: 'connecting', code: ctx.code }); });
  const sub = c.newSubscription(channel, {
    token: subToken(name, now() + TTL),
    getToken: async () => { s.subRefreshes += 1; return getSubToken(name); },
  });
  sub.on('subscribed', () => note({ event: 'subscribed' }));
  sub.on('subscribing', (ctx) => {
    if (ctx.code === 0) return;
    note({ event: 'subscribing', code: ctx.code });
    if (s.ended === null) s.ended = ctx.code;
  });
  sub.on('unsubscribed', (ctx) => {
    note({ event: 'unsubscribed', code: ctx.code });
    if (s.ended === null) s.ended = ctx.code;
  });
  sub.on('publication', (ctx) => {
    const n = decode(ctx.data).n;
    (s.ended === null ? s.offsets : s.afterEnd).push(n);
  });
  sub.subscribe();
  c.connect();
  return { s, sub };
}

const clients = {
  refreshing: start('refreshing', { connTtl: TTL, getSubToken: (u) => subToken(u, now() + TTL) }),
  failing: start('failing', { connTtl: 3600, getSubToken: () => { throw new Error('token service down'); } }),
  stale: start('stale', { connTtl: 3600, getSubToken: (u) => subToken(u, now() - 10) }),
};
await until(() => Object.values(clients).every((c) => c.sub.state === 'subscribed'), 15000, 'all subscribed');
report({ event: 'ready' });
const next = commands();
for (;;) {
  if ((await next()) === 'done') {
    const summary = {};
    for (const [name, c] of Object.entries(clients)) summary[name] = { ...c.s, state: c.sub.state };
    report({ event: 'summary', ...summary });
    process.exit(0);
  }
}

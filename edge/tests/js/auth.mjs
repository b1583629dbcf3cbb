// Auth cases against one edge, each with the real SDK (and one raw ws for
// the cookie). Usage: node auth.mjs <ws-url> <hs256-secret>
// Prints one JSON line per case: {case, ok, detail}.
import WebSocket from 'ws';
import { hs256, allCaps, client, report, now, sleep, wsWithHeaders } from './lib.mjs';

const [url, secret] = [process.argv[2], process.argv[3]];

/** Connect and subscribe to `channel`; resolve with what happened. */
function attempt({ token, channel = 'chat:auth', websocket, query }) {
  return new Promise((resolve) => {
    const opts = { token };
    if (websocket) opts.websocket = websocket;
    const c = client(query ? `${url}?${query}` : url, opts);
    let settled = false;
    const done = (r) => { if (settled) return; settled = true; resolve(r); c.disconnect(); };
    const timer = setTimeout(() => done({ outcome: 'timeout' }), 8000);
    c.on('error', (e) => {
      if (e.type === 'connect') { clearTimeout(timer); done({ outcome: 'connect-error', code: e.error.code }); }
    });
    c.on('disconnected', (ctx) => { clearTimeout(timer); done({ outcome: 'disconnected', code: ctx.code, reason: ctx.reason }); });
    const sub = c.newSubscription(channel);
    sub.on('subscribed', () => { clearTimeout(timer); done({ outcome: 'subscribed' }); });
    sub.on('error', (e) => { clearTimeout(timer); done({ outcome: 'subscribe-error', code: e.error.code }); });
    sub.on('unsubscribed', (ctx) => { if (ctx.code !== 0) { clearTimeout(timer); done({ outcome: 'unsubscribed', code: ctx.code, reason: ctx.reason }); } });
    sub.subscribe();
    c.connect();
  });
}

const cases = [
  ['missing', { token: '' }],
  ['malformed', { token: 'not-a-jwt' }],
  ['wrong_key', { token: hs256(allCaps(), 'some-other-secret') }],
  ['expired', { token: hs256({ ...allCaps(), exp: now() - 60 }, secret) }],
  ['forbidden_channel', {
    token: hs256({ sub: 'u2', exp: now() + 600, caps: [{ channels: ['news:*'], match: 'wildcard', allow: ['sub'] }] }, secret),
    channel: 'chat:secret',
  }],
  ['valid', { token: hs256(allCaps(), secret) }],
  ['query_token', { token: '', query: `token=${hs256(allCaps('q-user'), secret)}` }],
  ['cookie_token', { token: '', websocket: wsWithHeaders({ Cookie: `other=1; herald_token=${hs256(allCaps('c-user'), secret)}` }) }],
];
for (const [name, args] of cases) {
  const r = await attempt(args);
  report({ case: name, ...r });
  await sleep(50);
}

// A token that expires while connected, on a raw WebSocket that does not
// refresh (the SDK would refresh or give up by itself): the edge
// disconnects with 3005 when `exp` passes.
{
  const r = await new Promise((resolve) => {
    const ws = new WebSocket(url);
    const timer = setTimeout(() => resolve({ outcome: 'timeout' }), 10000);
    ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: { token: hs256({ ...allCaps('shortlived'), exp: now() + 2 }, secret) } })));
    ws.on('close', (code, reason) => { clearTimeout(timer); resolve({ outcome: 'closed', code, reason: reason.toString() }); });
    ws.on('error', () => {});
  });
  report({ case: 'expires_while_connected', ...r });
}
process.exit(0);

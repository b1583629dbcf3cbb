// Bad input against one edge with raw WebSockets, while a well-behaved
// watcher on the same edge keeps receiving. Usage:
//   node bad_input.mjs <ws-url> <token> <watch-channel>
// Prints {"event":"ready"} once the watcher is subscribed, one
// {"case":...} line per abuse, {"event":"cases-done"}, and on the stdin
// line `done` the watcher's summary.
import WebSocket from 'ws';
import { report, commands, sleep } from './lib.mjs';

const [url, token, watchChannel] = process.argv.slice(2);

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const replies = [];
    let closed = null;
    ws.on('message', (d, isBinary) => {
      for (const line of d.toString().split('\n')) if (line.trim()) replies.push(JSON.parse(line));
    });
    ws.on('close', (code, reason) => { closed = { code, reason: reason.toString() }; });
    ws.on('error', () => {});
    ws.on('open', () => resolve({ ws, replies, closed: () => closed }));
    ws.on('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

async function waitFor(pred, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) { if (pred()) return true; await sleep(10); }
  return false;
}

async function connected() {
  const c = await open();
  c.ws.send(JSON.stringify({ id: 1, connect: { token } }));
  await waitFor(() => c.replies.some((r) => r.id === 1), 5000);
  return c;
}

// The watcher: subscribed for the whole run.
const watcher = await connected();
watcher.ws.send(JSON.stringify({ id: 2, subscribe: { channel: watchChannel } }));
await waitFor(() => watcher.replies.some((r) => r.id === 2 && r.subscribe), 10000);
watcher.ws.on('message', (d) => {
  if (d.toString().split('\n').some((l) => l.trim() === '{}')) watcher.ws.send('{}');
});
report({ event: 'ready' });

async function closeCase(name, setup, act) {
  const c = setup ? await connected() : await open();
  act(c.ws);
  await waitFor(() => c.closed() !== null, 5000);
  report({ case: name, closed: c.closed(), replies: c.replies.filter((r) => r.id !== 1).slice(0, 3) });
}

await closeCase('invalid_json', true, (ws) => ws.send('{"id":2,"subscribe":'));
await closeCase('binary_garbage', true, (ws) => ws.send(Buffer.from([0, 159, 146, 150, 255])));
await closeCase('subscribe_before_connect', false, (ws) => ws.send(JSON.stringify({ id: 1, subscribe: { channel: 'chat:x' } })));
await closeCase('huge_frame', true, (ws) => ws.send('x'.repeat(10 * 1024 * 1024)));
{
  const c = await connected();
  c.ws.send(JSON.stringify({ id: 7, frobnicate: {} }));
  await waitFor(() => c.replies.some((r) => r.id === 7), 5000);
  c.ws.send(JSON.stringify({ id: 8, ping: {} }));
  await waitFor(() => c.replies.some((r) => r.id === 8), 5000);
  report({ case: 'unknown_command', reply: c.replies.find((r) => r.id === 7), still_open: c.closed() === null, after: c.replies.find((r) => r.id === 8) });
  c.ws.close();
}
{
  const c = await connected();
  const n = 10000;
  for (let i = 0; i < n; i++) c.ws.send(JSON.stringify({ id: 100 + i, subscribe: { channel: `burst-c${i}` } }));
  await waitFor(() => c.replies.filter((r) => r.id >= 100).length >= n || c.closed() !== null, 60000);
  const answered = c.replies.filter((r) => r.id >= 100);
  const codes = {};
  for (const r of answered) { const k = r.error ? `error ${r.error.code}` : Object.keys(r).filter((k) => k !== 'id').join(','); codes[k] = (codes[k] || 0) + 1; }
  report({ case: 'subscribe_burst', answered: answered.length, codes, closed: c.closed() });
  c.ws.close();
}
report({ event: 'cases-done' });
const next = commands();
for (;;) {
  if ((await next()) === 'done') {
    const offsets = watcher.replies.filter((r) => r.push && r.push.pub).map((r) => r.push.pub.offset);
    report({ event: 'summary', offsets, closed: watcher.closed() });
    process.exit(0);
  }
}

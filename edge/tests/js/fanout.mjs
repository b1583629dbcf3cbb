// Many raw protocol clients on one channel across edges. Usage:
//   node fanout.mjs <ws-url,ws-url...> <channel> <token> <clients-per-edge> <expected>
// Prints {"event":"ready"} when every client is subscribed, then
// {"event":"summary", ...} once every client has `expected` publications
// (or on the stdin line `done`).
import WebSocket from 'ws';
import { report, commands } from './lib.mjs';

const [urls, channel, token, perEdge, expected] = [process.argv[2].split(','), process.argv[3], process.argv[4], +process.argv[5], +process.argv[6]];
const clients = [];
let subscribed = 0;
let complete = 0;
let outOfOrder = 0;
let closed = 0;

function start(url) {
  const st = { last: 0, count: 0 };
  const ws = new WebSocket(url);
  ws.on('open', () => ws.send(JSON.stringify({ id: 1, connect: { token } }) + '\n' + JSON.stringify({ id: 2, subscribe: { channel } })));
  ws.on('message', (d) => {
    for (const line of d.toString().split('\n')) {
      if (!line) continue;
      if (line === '{}') { ws.send('{}'); continue; }
      const m = JSON.parse(line);
      if (m.id === 2) { if (m.subscribe) subscribed += 1; else report({ event: 'suberror', m }); }
      else if (m.push && m.push.pub) {
        const o = m.push.pub.offset;
        if (o !== st.last + 1) outOfOrder += 1;
        st.last = o;
        st.count += 1;
        if (st.count === expected) complete += 1;
      }
    }
  });
  ws.on('close', () => { closed += 1; });
  ws.on('error', () => {});
  clients.push(st);
}

for (const url of urls) for (let i = 0; i < perEdge; i++) start(url);
const total = urls.length * perEdge;
const summary = () => report({ event: 'summary', clients: total, subscribed, complete, outOfOrder, closed, minCount: Math.min(...clients.map((c) => c.count)) });
const readyTimer = setInterval(() => {
  if (subscribed === total) { clearInterval(readyTimer); report({ event: 'ready' }); }
}, 50);
const doneTimer = setInterval(() => {
  if (complete === total) { clearInterval(doneTimer); summary(); process.exit(0); }
}, 100);
const next = commands();
for (;;) { if ((await next()) === 'done') { summary(); process.exit(0); } }

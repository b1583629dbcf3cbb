// A plain EventSource client (the `eventsource` package, the WHATWG
// EventSource for Node) on two channels. Usage:
//   node sse_resume.mjs <sse-base-url> <token> <chanA> <chanB>
// Prints every event as a JSON line. The stdin line `cut` closes the stream
// and opens a new one with `Last-Event-ID` set to the last id received,
// exactly what a browser does when its connection drops; `done` prints a
// summary and exits.
import { EventSource } from 'eventsource';
import { report, commands } from './lib.mjs';

const [base, token, a, b] = process.argv.slice(2);
const url = `${base}?channel=${encodeURIComponent(a)}&channel=${encodeURIComponent(b)}&token=${encodeURIComponent(token)}`;
const received = { [a]: [], [b]: [] };
const subscribed = [];
let lastId = '';
let es = null;

function open(resumeFrom) {
  const headers = resumeFrom ? { 'Last-Event-ID': resumeFrom } : {};
  es = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
  });
  es.onmessage = (ev) => {
    const m = JSON.parse(ev.data);
    lastId = ev.lastEventId;
    received[m.channel].push(m.pub.offset);
    report({ event: 'pub', channel: m.channel, offset: m.pub.offset });
  };
  es.addEventListener('subscribed', (ev) => {
    lastId = ev.lastEventId;
    const m = JSON.parse(ev.data);
    subscribed.push(m);
    report({ event: 'subscribed', ...m });
  });
  es.addEventListener('error', (ev) => report({ event: 'es-error', message: String(ev.message || '') }));
}

open('');
const next = commands();
for (;;) {
  const cmd = await next();
  if (cmd === 'cut') {
    es.close();
    report({ event: 'cut', lastId });
    open(lastId);
  } else if (cmd === 'done') {
    report({ event: 'summary', received, subscribed });
    es.close();
    process.exit(0);
  }
}

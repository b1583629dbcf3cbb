// A plain EventSource (the `eventsource` package, the WHATWG EventSource
// for Node) on one channel, reporting every publication with its parsed
// data. Usage: node framing_sse.mjs <sse-base-url> <token> <channel>
// Stdin: `cut` closes the stream; `resume` opens a new one with
// `Last-Event-ID` set to the last id received, as a browser does when its
// connection drops; `done` prints a summary and exits. Event data that is
// not JSON is reported as a failure, never skipped.
import { EventSource } from 'eventsource';
import { report, commands } from './lib.mjs';

// A large summary must be flushed before exiting.
const finish = (fact) => process.stdout.write(JSON.stringify(fact) + '\n', () => process.exit(0));

const [base, token, channel] = process.argv.slice(2);
const url = `${base}?channel=${encodeURIComponent(channel)}&token=${encodeURIComponent(token)}`;
const received = [];
const subscribed = [];
const broken = [];
let lastId = '';
let es = null;

function parse(ev) {
  try {
    return JSON.parse(ev.data);
  } catch (e) {
    broken.push(ev.data);
    report({ event: 'broken', data: ev.data });
    return null;
  }
}

function open(resumeFrom) {
  const headers = resumeFrom ? { 'Last-Event-ID': resumeFrom } : {};
  es = new EventSource(url, {
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
  });
  es.onmessage = (ev) => {
    const m = parse(ev);
    if (!m) return;
    lastId = ev.lastEventId;
    received.push({ offset: m.pub.offset, data: m.pub.data });
    report({ event: 'pub', offset: m.pub.offset });
  };
  es.addEventListener('subscribed', (ev) => {
    const m = parse(ev);
    if (!m) return;
    lastId = ev.lastEventId;
    subscribed.push({ recovered: m.recovered, wasRecovering: m.was_recovering });
    report({ event: 'subscribed', recovered: m.recovered, wasRecovering: m.was_recovering });
  });
}

open('');
const next = commands();
for (;;) {
  const cmd = await next();
  if (cmd === 'cut') {
    es.close();
    report({ event: 'cut', lastId });
  } else if (cmd === 'resume') {
    open(lastId);
    report({ event: 'resumed' });
  } else if (cmd === 'done') {
    es.close();
    finish({ event: 'summary', received, subscribed, broken });
  }
}

// Helpers shared by the edge test scripts: HS256 tokens, a centrifuge
// client wired to the `ws` package (Node 20 has no global WebSocket), and
// small waiting utilities. Every script prints one JSON line per fact it
// checks and exits non-zero on the first failure.
import crypto from 'node:crypto';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

export function b64url(buf) {
  return Buffer.from(buf).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
}

export function hs256(claims, secret) {
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = b64url(JSON.stringify(claims));
  const sig = b64url(crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest());
  return `${head}.${body}.${sig}`;
}

export const now = () => Math.floor(Date.now() / 1000);

export function allCaps(sub = 'user-1', extra = {}) {
  return { sub, exp: now() + 3600, caps: [{ channels: ['*'], match: 'wildcard', allow: ['sub', 'pub', 'hst', 'prs'] }], ...extra };
}

/** A WebSocket class that sends fixed headers (e.g. a Cookie). */
export function wsWithHeaders(headers) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { headers });
    }
  };
}

export function client(url, opts = {}) {
  return new Centrifuge(url, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 1000, timeout: 10000, ...opts });
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

export async function until(pred, ms, what) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pred()) return;
    await sleep(20);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`);
}

export function report(fact) {
  process.stdout.write(JSON.stringify(fact) + '\n');
}

export function fail(message) {
  report({ ok: false, message });
  process.exit(1);
}

/** Read lines from stdin as commands from the Rust test driver. */
export function commands() {
  const queue = [];
  const waiters = [];
  let buf = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (!line) continue;
      const w = waiters.shift();
      if (w) w(line); else queue.push(line);
    }
  });
  return () => new Promise((r) => { const q = queue.shift(); if (q !== undefined) r(q); else waiters.push(r); });
}

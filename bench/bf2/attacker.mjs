// The BF-2 attacker, forked by bench/bf2.mjs so that its CPU work never runs on the measurer's
// event loop. It sends well-formed wrong client keys (bkk_ + 43 random characters, each one new)
// to POST /v1/verify with service A's token, as fast as the daemon answers, on CONNS keep-alive
// TLS connections with one request in flight each (what a client that respects HTTP/1.1 does).
// It speaks HTTP/1.1 over tls.connect by hand instead of node:https: a cheaper client leaves more
// of the shared CPU to the daemon and the measurer, as an attacker on another machine would.
//
// Protocol with the parent (IPC): parent sends {url, ca, token, conns}; the child answers
// {type: 'ready'} once ≥ WARM responses came back, then attacks until it gets 'stop' and answers
// {type: 'done', ...counts}; 'count' is answered with the responses so far.
import { randomBytes } from 'node:crypto';
import { connect } from 'node:tls';

const WARM = 500;
const HEADER_END = Buffer.from('\r\n\r\n');

const counts = {
  sent: 0,
  answered: 0,
  invalid: 0, // 200 {"valid":false}
  successes: 0, // 200 with anything else: a wrong key was accepted (must stay 0)
  rateLimited: 0, // 429 rate_limited
  retryAfterMin: Infinity,
  retryAfterMax: 0,
  other: {}, // status → count, anything else
  reconnects: 0,
};
let stopping = false;
let readySent = false;
let t0 = 0n;
let cpu0;
const sockets = new Set();

function wrongKey() {
  return 'bkk_' + randomBytes(32).toString('base64url'); // 43 characters, the real format
}

function attack(cfg) {
  const u = new URL('/v1/verify', cfg.url);
  const head =
    `POST /v1/verify HTTP/1.1\r\nHost: ${u.host}\r\nAuthorization: Bearer ${cfg.token}\r\n` +
    `Content-Type: application/json\r\nContent-Length: `;
  const open = () => {
    const s = connect({ host: u.hostname, port: Number(u.port), ca: cfg.ca });
    s.setNoDelay(true);
    sockets.add(s);
    let buf = Buffer.alloc(0);
    const send = () => {
      if (stopping) {
        s.end();
        return;
      }
      const body = `{"key":"${wrongKey()}"}`;
      counts.sent++;
      s.write(`${head}${body.length}\r\n\r\n${body}`);
    };
    s.on('secureConnect', send);
    s.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      for (;;) {
        const end = buf.indexOf(HEADER_END);
        if (end < 0) return;
        const headers = buf.subarray(0, end).toString('latin1');
        const len = Number(/\r\ncontent-length: *(\d+)/i.exec(headers)?.[1] ?? 0);
        if (buf.length < end + 4 + len) return;
        const body = buf.subarray(end + 4, end + 4 + len).toString('utf8');
        buf = buf.subarray(end + 4 + len);
        const status = Number(headers.slice(9, 12));
        counts.answered++;
        if (status === 200) {
          if (body === '{"valid":false}') counts.invalid++;
          else counts.successes++;
        } else if (status === 429) {
          counts.rateLimited++;
          const ra = Number(/\r\nretry-after: *(\d+)/i.exec(headers)?.[1]);
          if (ra < counts.retryAfterMin) counts.retryAfterMin = ra;
          if (ra > counts.retryAfterMax) counts.retryAfterMax = ra;
        } else counts.other[status] = (counts.other[status] ?? 0) + 1;
        if (!readySent && counts.answered >= (cfg.warm ?? WARM)) {
          readySent = true;
          process.send({ type: 'ready' });
        }
        send();
      }
    });
    s.on('error', () => {});
    s.on('close', () => {
      sockets.delete(s);
      if (stopping) {
        if (sockets.size === 0) finish();
        return;
      }
      counts.reconnects++;
      open();
    });
  };
  t0 = process.hrtime.bigint();
  cpu0 = process.cpuUsage();
  for (let i = 0; i < cfg.conns; i++) open();
}

function finish() {
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  process.send({
    type: 'done',
    ...counts,
    retryAfterMin: counts.retryAfterMin === Infinity ? null : counts.retryAfterMin,
    seconds,
    perSecond: counts.answered / seconds,
    cpuShare: (cpu.user + cpu.system) / 1e6 / seconds,
  });
  process.disconnect();
}

process.on('message', (m) => {
  if (m.type === 'start') attack(m);
  else if (m.type === 'count') process.send({ type: 'count', answered: counts.answered });
  else if (m.type === 'stop') {
    stopping = true;
    // Sockets end after their in-flight response; a stuck one is cut after 2 s.
    setTimeout(() => {
      for (const s of sockets) s.destroy();
    }, 2000).unref();
    if (sockets.size === 0) finish();
  }
});

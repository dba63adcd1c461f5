// Apps for the gate benchmark. `sink PORT`: TCP, echoes one byte per line-free write burst and
// counts bytes. `http PORT`: plain HTTP, 'ok'. `https PORT CERT KEY`: the same over TLS directly.
import { createServer } from 'node:net';
import { createServer as createHttp } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { readFileSync } from 'node:fs';

const [kind, port, cert, key] = process.argv.slice(2);
const body = 'ok\n';
if (kind === 'sink') {
  createServer((s) => {
    s.setNoDelay(true);
    let first = true;
    s.on('data', () => {
      if (first) s.write('!'); // first byte back: connection latency probe
      first = false;
    });
  }).listen(Number(port), '127.0.0.1');
} else if (kind === 'http') {
  createHttp((_q, r) => r.end(body)).listen(Number(port), '127.0.0.1');
} else if (kind === 'https') {
  createHttps(
    { cert: readFileSync(cert), key: readFileSync(key), minVersion: 'TLSv1.2' },
    (_q, r) => r.end(body),
  ).listen(Number(port), '127.0.0.1');
}

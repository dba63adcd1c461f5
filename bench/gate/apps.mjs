// Apps for the gate benchmark. `sink PORT`: TCP, echoes one byte per line-free write burst and
// counts bytes. `http PORT`: plain HTTP, 'ok'. `https PORT CERT KEY`: the same over TLS directly.
// The ceilings, what any gate written in Node costs on this host before it checks anything:
// `relay PORT TARGET`: a bare TCP pipe; `tlsrelay PORT TARGET CERT KEY`: TLS off, then a bare pipe.
import { connect, createServer } from 'node:net';
import { createServer as createTls } from 'node:tls';
import { createServer as createHttp } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { readFileSync } from 'node:fs';

const [kind, port, ...rest] = process.argv.slice(2);
const [cert, key] = kind === 'tlsrelay' ? rest.slice(1) : rest;
const pipeTo = (s) => {
  s.setNoDelay(true);
  const up = connect(Number(rest[0]), '127.0.0.1');
  up.setNoDelay(true);
  s.pipe(up).pipe(s);
  s.on('error', () => up.destroy());
  up.on('error', () => s.destroy());
};
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
} else if (kind === 'relay') createServer(pipeTo).listen(Number(port), '127.0.0.1');
else if (kind === 'tlsrelay')
  createTls(
    { cert: readFileSync(cert), key: readFileSync(key), minVersion: 'TLSv1.2' },
    pipeTo,
  ).listen(Number(port), '127.0.0.1');

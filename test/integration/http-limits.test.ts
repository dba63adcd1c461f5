/** Requests node's HTTP parser rejects still get the API's JSON error shape (FUZZ-1, NET-3). */
import { rmSync } from 'node:fs';
import { connect as netConnect, type Socket as NetSocket } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

function raw(d: Daemon, request: string): Promise<string> {
  const { hostname, port } = new URL(d.url);
  return new Promise((resolve, reject) => {
    const s = connect(
      { host: hostname, port: Number(port), ca: d.ca, servername: 'localhost' },
      () => s.end(request),
    );
    let out = '';
    s.on('data', (c) => (out += c.toString()));
    s.on('close', () => resolve(out));
    s.on('error', (e: NodeJS.ErrnoException) => (out ? resolve(out) : reject(e)));
  });
}

function bodyOf(response: string): any {
  return JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4));
}

describe('requests the HTTP parser rejects', () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await Daemon.start();
  });
  afterAll(async () => {
    await d.stop();
  });

  it('fail/headers over 16 KiB → 431 headers_too_large in the error shape', async () => {
    const res = await raw(
      d,
      `GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
    );
    expect(res).toMatch(/^HTTP\/1\.1 431 /);
    const body = bodyOf(res);
    expect(body.error.code).toBe('headers_too_large');
    expect(res).toContain(`X-Request-Id: ${body.requestId}`);
  });

  it('fail/a malformed request line → 400 bad_request in the error shape', async () => {
    const res = await raw(d, 'GARBAGE\x01 / NOT-HTTP\r\n\r\n');
    expect(res).toMatch(/^HTTP\/1\.1 400 /);
    expect(bodyOf(res).error.code).toBe('bad_request');
  });

  it('ok/GET /v1/openapi.json serves the API description without a token', async () => {
    const r = await d.api('GET', '/v1/openapi.json', { token: null });
    expect(r.status).toBe(200);
    expect(r.body.openapi).toMatch(/^3\./);
    expect(Object.keys(r.body.paths)).toContain('/v1/verify');
  });

  it('ok/the daemon answers normally afterwards', async () => {
    expect((await d.api('GET', '/v1/health')).status).toBe(200);
  });
});

/**
 * NET-3 slowloris: sockets that never finish their TLS handshake, their headers or their body are
 * closed on time, and a legitimate client is served while they hang on. Timeouts are shortened
 * by config (the defaults, 10 s and 30 s, are the schema's maximums) to keep the test quick.
 */
describe('NET-3: a slowloris flood does not stop a legitimate request', () => {
  const HEADERS_MS = 2000;
  const REQUEST_MS = 4000;
  let d: Daemon;
  beforeAll(async () => {
    d = await Daemon.start({
      config: { headersTimeoutMs: HEADERS_MS, requestTimeoutMs: REQUEST_MS },
    });
  });
  afterAll(async () => {
    await d.stop();
    rmSync(d.home, { recursive: true, force: true });
  });

  interface Slow {
    kind: 'handshake' | 'headers' | 'body';
    opened: number;
    closedAfterMs: Promise<number>;
    stop(): void;
  }

  /** A socket that dribbles one byte every 300 ms and never completes what it started. */
  function slow(kind: Slow['kind']): Promise<Slow> {
    const { hostname, port } = new URL(d.url);
    const opened = Date.now();
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const s: NetSocket | TLSSocket =
        kind === 'handshake'
          ? netConnect({ host: hostname, port: Number(port) })
          : connect({ host: hostname, port: Number(port), ca: d.ca, servername: 'localhost' });
      const closedAfterMs = new Promise<number>((res) =>
        s.once('close', () => {
          clearInterval(timer);
          res(Date.now() - opened);
        }),
      );
      s.on('error', () => {
        /* the broker resets it: that is the point */
      });
      s.once(kind === 'handshake' ? 'connect' : 'secureConnect', () => {
        if (kind === 'headers') {
          s.write('POST /v1/services HTTP/1.1\r\nHost: localhost\r\n');
          timer = setInterval(() => s.write('X'), 300); // a header that never ends
        } else if (kind === 'body') {
          s.write(
            'POST /v1/services HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n' +
              'Content-Length: 100000\r\n\r\n{',
          );
          timer = setInterval(() => s.write(' '), 300); // a body that never ends
        }
        resolve({ kind, opened, closedAfterMs, stop: () => s.destroy() });
      });
      s.once('close', () => reject(new Error(`${kind} socket closed before it was set up`)));
    });
  }

  it('500 slow sockets are closed on time; health and registration succeed meanwhile', async () => {
    const kinds: Slow['kind'][] = ['handshake', 'headers', 'body'];
    const sockets: Slow[] = [];
    for (let i = 0; i < 500; i += 50) {
      sockets.push(
        ...(await Promise.all(Array.from({ length: 50 }, (_, j) => slow(kinds[(i + j) % 3]!)))),
      );
    }
    try {
      // While all 500 hang on, a legitimate client gets its answers promptly.
      const t0 = Date.now();
      const health = await d.api('GET', '/v1/health');
      expect(health.status).toBe(200);
      const reg = await d.api('POST', '/v1/services', { body: { name: 'net3', tunnel: 'none' } });
      expect(reg.status, reg.text).toBe(201);
      expect(Date.now() - t0).toBeLessThan(HEADERS_MS);

      const closed = await Promise.all(sockets.map((s) => s.closedAfterMs));
      // Each is cut at its timeout plus node's 1 s check interval, with slack for a loaded CI.
      const limit = { handshake: HEADERS_MS, headers: HEADERS_MS, body: REQUEST_MS };
      const late = sockets.filter((s, i) => closed[i]! > limit[s.kind] + 1000 + 3000);
      const byKind = Object.fromEntries(
        kinds.map((k) => [k, Math.max(...closed.filter((_, i) => sockets[i]!.kind === k))]),
      );
      console.log(`[NET-3] slowest close per kind (ms): ${JSON.stringify(byKind)}`);
      expect(late.length, `closed late: ${JSON.stringify(byKind)}`).toBe(0);
      // …and none was closed before its timeout: the broker is not just dropping everything.
      for (const k of kinds) {
        const earliest = Math.min(...closed.filter((_, i) => sockets[i]!.kind === k));
        expect(earliest, k).toBeGreaterThanOrEqual(limit[k] - 100);
      }
    } finally {
      for (const s of sockets) s.stop();
    }
    expect((await d.api('GET', '/v1/health')).status).toBe(200);
  }, 30_000);
});

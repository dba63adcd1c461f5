/**
 * The HTTPS front of `broker run --mode https` with real apps behind it (issue 11, SES-4): what
 * the app sees (never the bearer key or the gate's cookie; forwarding headers the front set,
 * whatever the client sent), the edges real apps hit (a 40 KB Cookie header, an upload slower
 * than any total request timeout, an upgrade the app refuses followed by a request that must not
 * skip the gate, an app on ::1 only).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient, localhostLookup } from '../../src/client/broker-client.js';
import { registerService } from '../../src/server-sdk/service.js';
import { join } from 'node:path';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

/** A Node app that answers with what it received; header limits like Tornado's (64 KiB). */
const HEADERS_APP = `import { createServer } from 'node:http';
const server = createServer({ maxHeaderSize: 65536 }, (req, res) => {
  if (req.url === '/upload') {
    let n = 0;
    req.on('data', (c) => (n += c.length));
    return req.on('end', () => res.end(JSON.stringify({ n })));
  }
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ url: req.url, headers: req.headers }));
});
const [where] = process.argv.slice(1);
if (/^\\d+$/.test(where)) server.listen(Number(where), '::1');
else server.listen(where);`;

/** A Python app that ignores Upgrade (answers 200, keeps the connection) and logs each path. */
const PLAIN_APP = `import sys, socketserver, http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        print("GET " + self.path, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"plain")
    def log_message(self, *a): pass
    def address_string(self): return "unix"
class S(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
S(sys.argv[1], H).serve_forever()`;

describe('broker run --mode https: the front', () => {
  let d: Daemon;
  let owner: string;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await d.stop();
  });

  /** `broker run NAME --mode https ARGS -- COMMAND`, ready; its port, a key and its stdout. */
  async function front(name: string, args: string[], command: string[]) {
    const p = spawn(
      process.execPath,
      [BIN, 'run', name, '--mode', 'https', ...args, '--', ...command],
      {
        env: d.env(),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    procs.push(p);
    let out = '';
    let err = '';
    p.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/${name}`)).body.service?.status === 'ready',
      20_000,
      `${name} ready (${err})`,
    );
    const k = (await d.api('POST', `/v1/services/${owner}/${name}/keys`, { body: {} })).body;
    return {
      p,
      host: k.service.hostname as string,
      port: k.service.port as number,
      key: k.key as string,
      out: () => out,
    };
  }

  function get(f: { host: string; port: number }, path: string, headers: Record<string, string>) {
    return new Promise<{ status: number; headers: Record<string, unknown>; body: string }>(
      (resolve, reject) => {
        const req = httpsRequest(
          `https://${f.host}:${f.port}${path}`,
          { ca: d.ca, agent: false, headers, maxHeaderSize: 65536, lookup: localhostLookup },
          (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () =>
              resolve({ status: res.statusCode ?? 0, headers: res.headers, body }),
            );
          },
        );
        req.on('error', reject);
        req.end();
      },
    );
  }

  let hdr: { host: string; port: number; key: string };
  beforeAll(async () => {
    hdr = await front(
      'hdrs',
      [],
      [process.execPath, '--input-type=module', '-e', HEADERS_APP, '{app_socket}'],
    );
  });

  it('fail/SES-4: the app never gets the bearer key; client-sent forwarding headers are replaced, also with underscores', async () => {
    const r = await get(hdr, '/h', {
      Authorization: `Bearer ${hdr.key}`,
      'X-Forwarded-For': '6.6.6.6',
      'X-Forwarded-User': 'admin',
      X_Forwarded_User: 'admin',
      'X-Forwarded-Host': 'evil.example',
      Forwarded: 'for=6.6.6.6',
      'X-Real-IP': '6.6.6.6',
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body).headers as Record<string, string>;
    expect(seen.authorization).toBeUndefined();
    expect(JSON.stringify(seen)).not.toContain(hdr.key);
    expect(seen['x-forwarded-for']).toBe('127.0.0.1'); // the front's peer, not the client's claim
    expect(seen['x-forwarded-proto']).toBe('https');
    expect(seen['x-forwarded-host']).toBe(`${hdr.host}:${hdr.port}`);
    expect(seen['x-forwarded-user']).toBe(owner); // the principal the gate let in
    expect(seen.x_forwarded_user).toBeUndefined();
    expect(seen.forwarded).toBeUndefined();
    expect(seen['x-real-ip']).toBeUndefined();
    // The session's host name never leaves the browser as a Referer (SES-1).
    expect(r.headers['referrer-policy']).toBe('no-referrer');
  });

  it("fail/SES-4: the gate's session cookie (and any broker gate cookie) is not passed on; the app's own cookies are", async () => {
    const once = (await d.api('POST', `/v1/services/${owner}/hdrs/keys`, { body: { once: true } }))
      .body.key as string;
    // A browser login: the key, then a ticket on the session's own host, then the cookie there.
    const login = await get(hdr, `/h?broker_key=${once}`, {});
    expect(login.status).toBe(303);
    const ticketUrl = new URL(String(login.headers.location));
    const at = { host: ticketUrl.hostname, port: hdr.port };
    const redeemed = await get(at, `${ticketUrl.pathname}${ticketUrl.search}`, {});
    expect(redeemed.status).toBe(303);
    const session = String((redeemed.headers['set-cookie'] as string[])[0]).split(';')[0]!;
    const r = await get(at, '/h', {
      Cookie: `app=1; ${session}; __Host-broker-other=zz; theme=dark`,
    });
    expect(r.status).toBe(200);
    const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
    expect(seen.headers.cookie).toBe('app=1; theme=dark');
    expect(seen.url).toBe('/h');
  });

  it('ok/a 40 KB Cookie header (browsers send every localhost cookie to every port) passes', async () => {
    const big = 'c'.repeat(40 * 1024);
    const r = await get(hdr, '/h', {
      Authorization: `Bearer ${hdr.key}`,
      Cookie: `big=${big}`,
    });
    expect(r.status).toBe(200);
    expect((JSON.parse(r.body).headers.cookie as string).length).toBe(big.length + 4);
  });

  it('ok/no total request timeout: an upload slower than the idle timeout in total still passes; an idle one is cut', async () => {
    const slow = await front(
      'slowup',
      ['--idle-timeout', '2s'],
      [process.execPath, '--input-type=module', '-e', HEADERS_APP, '{app_socket}'],
    );
    // 6 s of upload, a chunk every 400 ms: three times the idle timeout, never idle.
    const uploaded = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(
        `https://${slow.host}:${slow.port}/upload`,
        {
          ca: d.ca,
          lookup: localhostLookup,
          agent: false,
          method: 'POST',
          headers: { Authorization: `Bearer ${slow.key}`, 'Transfer-Encoding': 'chunked' },
        },
        (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve(`${res.statusCode} ${body}`));
        },
      );
      req.on('error', reject);
      let i = 0;
      const t = setInterval(() => {
        req.write(Buffer.alloc(1000));
        if (++i === 15) {
          clearInterval(t);
          req.end();
        }
      }, 400);
    });
    expect(uploaded).toBe('200 {"n":15000}');
    // The same upload that stops sending: the front closes it after the idle timeout.
    const t0 = Date.now();
    const cut = await new Promise<string>((resolve) => {
      const req = httpsRequest(
        `https://${slow.host}:${slow.port}/upload`,
        {
          ca: d.ca,
          lookup: localhostLookup,
          agent: false,
          method: 'POST',
          headers: { Authorization: `Bearer ${slow.key}`, 'Transfer-Encoding': 'chunked' },
        },
        (res) => resolve(`response ${res.statusCode}`),
      );
      req.on('error', (e) => resolve(`closed ${(e as NodeJS.ErrnoException).code}`));
      req.write(Buffer.alloc(1000));
    });
    expect(cut).toMatch(/^closed/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1500);
    expect(Date.now() - t0).toBeLessThan(8000);
  });

  it('ok/the front has no total request time limit (Node: 300 s), idle and header timeouts, 64 KiB headers', async () => {
    const svc = await registerService({
      broker: new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} }),
      name: 'limits',
      mode: 'https',
      tunnel: 'none',
    });
    const { FRONT_LIMITS, httpsFront } = await import('../../src/cli/run/https-front.js');
    const server = httpsFront(
      svc,
      { path: '/nonexistent' },
      {
        guard: null,
        appAuth: null,
        forwardUser: false,
      },
    );
    expect(server.requestTimeout).toBe(0);
    expect(server.timeout).toBe(FRONT_LIMITS.idleTimeoutMs);
    expect(server.headersTimeout).toBe(FRONT_LIMITS.headersTimeoutMs);
    expect(server.maxHeaderSize).toBe(64 * 1024);
    server.close();
    await svc.close();
  });

  it('fail/an upgrade the app refuses: its answer comes back and the connection closes; a second request on it never reaches the app', async () => {
    const plain = await front('plain', [], ['python3', '-c', PLAIN_APP, '{app_socket}']);
    const s = tlsConnect({
      host: '127.0.0.1',
      port: plain.port,
      ca: d.ca,
      servername: plain.host,
    });
    s.on('error', () => {});
    await new Promise((r) => s.once('secureConnect', r));
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(
      `GET /ws?broker_key=${plain.key} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${plain.key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    );
    await until(() => got.endsWith('plain'), 5000, "the app's answer");
    expect(got).toMatch(/^HTTP\/1\.1 200 /);
    expect(got).toMatch(/\r\nConnection: close\r\n/i);
    // The same connection, no key: must not be a raw pipe to the app.
    s.write('GET /secret HTTP/1.1\r\nHost: localhost\r\n\r\n');
    await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    await new Promise((r) => setTimeout(r, 300));
    expect(plain.out()).toContain('GET /ws\n'); // the key in the URL removed, as for requests
    expect(plain.out()).not.toContain('/secret');
    expect(s.destroyed || s.readableEnded).toBe(true);
    s.destroy();
  });

  it('ok/an app that listens on ::1 only is reached', async () => {
    const v6 = await front(
      'v6',
      [],
      [process.execPath, '--input-type=module', '-e', HEADERS_APP, '{app_port}'],
    );
    const r = await get(v6, '/six', { Authorization: `Bearer ${v6.key}` });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body).url).toBe('/six');
    // Open exposure: no X-Forwarded-User, any local user could have sent one.
    expect(JSON.parse(r.body).headers['x-forwarded-user']).toBeUndefined();
  });

  it('ok/a WebSocket (101) is not subject to the idle timeout: quiet for longer, it still carries', async () => {
    const ws = await front(
      'wsidle',
      ['--idle-timeout', '1s'],
      [process.execPath, join(ROOT, 'test', 'fixtures', 'ws-app.mjs'), '{app_port}'],
    );
    const s = tlsConnect({ host: '127.0.0.1', port: ws.port, ca: d.ca, servername: ws.host });
    s.on('error', () => {});
    await new Promise((r) => s.once('secureConnect', r));
    let got = '';
    s.on('data', (c: Buffer) => (got += c.toString()));
    s.write(
      `GET /ws HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${ws.key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
    );
    await until(() => got.includes('\r\n\r\n'), 5000, 'the 101');
    expect(got).toMatch(/^HTTP\/1\.1 101 /);
    await new Promise((r) => setTimeout(r, 2500));
    s.write('ping');
    await until(() => got.endsWith('ws-echo:ping'), 3000, 'the echo after a quiet while');
    s.destroy();
  });
});

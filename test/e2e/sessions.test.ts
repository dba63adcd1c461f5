/**
 * SES-1 as the attacker: a `--once` key reused on every gate, a session or connection kept after
 * its key was revoked or its principal disabled, one service's session cookie carried to another
 * service or to another user's page on localhost; and LOC-5 for `broker tunnel --inject-key`,
 * whose local port another user on the host tries. Real daemon, real curl, a real Python gate,
 * a real second Unix user.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpsServer, request } from 'node:https';
import { connect as netConnect, createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient, localhostLookup } from '../../src/client/broker-client.js';
import { registerService, type BrokerService } from '../../src/server-sdk/service.js';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import { loginWith } from '../helpers/login.js';
import { announceSkip, killAs, nodeAs, spawnNodeAs, unixUser, lineFrom } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const tmp = mkdtempSync(join(tmpdir(), 'broker-sessions-'));
const procs: ChildProcess[] = [];
const closers: (() => unknown)[] = [];
let d: Daemon;
let caFile: string;
let owner: string;

afterAll(async () => {
  for (const p of procs) killAs(p);
  await Promise.all(closers.map((c) => Promise.resolve(c()).catch(() => undefined)));
  await d?.stop();
});

beforeAll(async () => {
  d = await Daemon.start();
  caFile = join(tmp, 'ca.pem');
  writeFileSync(caFile, d.ca);
  owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
});

function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv, input?: string) {
  return new Promise<{ code: number; out: string; err: string }>((resolve) => {
    const c = execFile(cmd, args, { env, timeout: 15_000 }, (e, out, err) =>
      resolve({ code: e ? Number((e as { code?: number }).code ?? 1) : 0, out, err }),
    );
    c.stdin?.end(input ?? '');
  });
}

const curl = (args: string[]) => run('curl', ['-sS', '--cacert', caFile, ...args]);

async function mint(ref: string, body: Record<string, unknown> = {}, token = d.adminToken) {
  const r = await d.api('POST', `/v1/services/${ref}/keys`, { token, body });
  expect(r.status, r.text).toBe(201);
  return r.body as { key: string; keyId: string };
}

/** An HTTPS service behind the SDK gate (default options), recording what reached the app. */
async function httpsService(name: string, token = d.adminToken) {
  const broker = new BrokerClient({ url: d.url, ca: d.ca, token, env: {} });
  const svc = await registerService({ broker, name, mode: 'https', tunnel: 'none' });
  const gate = svc.httpGate();
  const seen: { url: string; cookie: string }[] = [];
  const server = createHttpsServer(svc.tlsOptions(), async (req, res) => {
    const cookie = String(req.headers.cookie ?? '');
    if (!(await gate.handle(req, res))) return;
    seen.push({ url: req.url ?? '', cookie });
    res.end(`hello ${(req as { brokerPrincipal?: string }).brokerPrincipal}`);
  });
  server.on('upgrade', (req, socket, head) =>
    gate.upgrade(req, socket, head, (_r, s) =>
      s.write(
        'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
      ),
    ),
  );
  await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
  await svc.ready();
  closers.push(
    () => server.close(),
    () => svc.close(),
  );
  return { svc, server, seen, base: `https://${svc.service.hostname}:${svc.port}` };
}

/** A TCP echo behind the SDK gate; `onReach` counts connections that got through. */
async function tcpService(name: string, onReach: () => void = () => {}) {
  const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
  const svc = await registerService({ broker, name, tunnel: 'none' });
  const server = createNetServer(
    svc.gate((s) => {
      onReach();
      s.pipe(s);
    }),
  );
  await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
  await svc.ready();
  closers.push(
    () => server.close(),
    () => svc.close(),
  );
  return svc;
}

/** Present a key on a TCP gate: the first line back (OK / DENIED) and the socket. */
function present(port: number, key: string) {
  return new Promise<{ line: string; socket: import('node:net').Socket }>((resolve) => {
    const s = netConnect({ host: '127.0.0.1', port });
    let got = '';
    s.on('data', (b) => {
      got += b.toString();
      if (got.includes('\n')) resolve({ line: got.split('\n')[0]!, socket: s });
    });
    s.on('error', () => resolve({ line: got || 'error', socket: s }));
    s.once('close', () => resolve({ line: got.split('\n')[0] || 'closed', socket: s }));
    s.write(`${key}\n`);
  });
}

function status(url: string, headers: Record<string, string> = {}) {
  return new Promise<number>((resolve, reject) =>
    request(url, { ca: d.ca, lookup: localhostLookup, headers, agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    })
      .on('error', reject)
      .end(),
  );
}

function closed(s: { once(e: 'close', f: () => void): unknown }) {
  return new Promise<void>((r) => s.once('close', () => r()));
}

describe('SES-1: a one-time key is used exactly once, on every gate', () => {
  let https: Awaited<ReturnType<typeof httpsService>>;
  let tcp: BrokerService;

  beforeAll(async () => {
    https = await httpsService('once-web');
    tcp = await tcpService('once-tcp');
  });

  it('fail/SES-1 TCP gate (server SDK): the second presentation is DENIED', async () => {
    const k = await mint(`${owner}/once-tcp`, { once: true });
    const first = await present(tcp.port, k.key);
    expect(first.line).toBe('OK');
    first.socket.destroy();
    expect((await present(tcp.port, k.key)).line).toBe('DENIED');
  });

  it('fail/SES-1 HTTPS bearer: the same one-time key twice within the gate cache → 200 then 401', async () => {
    const k = await mint(`${owner}/once-web`, { once: true });
    const auth = { Authorization: `Bearer ${k.key}` };
    expect(await status(`${https.base}/a`, auth)).toBe(200);
    expect(await status(`${https.base}/a`, auth)).toBe(401);
  });

  it('fail/SES-1 login URL: the same one-time URL twice → one session, then 401; nor as a bearer afterwards', async () => {
    const k = await mint(`${owner}/once-web`, { once: true });
    const url = `${https.base}/lab?broker_key=${k.key}`;
    const login = await loginWith(url, caFile);
    expect(await status(`${login.origin}/lab`, { Cookie: login.cookie })).toBe(200);
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', url])).out).toBe('401');
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', login.ticketUrl])).out).toBe(
      '401',
    );
    expect(await status(`${https.base}/a`, { Authorization: `Bearer ${k.key}` })).toBe(401);
  });

  it('fail/SES-1 a multi-use key as a login URL is still checked with the broker every time (a revoked one never logs in from the cache)', async () => {
    const k = await mint(`${owner}/once-web`);
    expect(await status(`${https.base}/a`, { Authorization: `Bearer ${k.key}` })).toBe(200);
    await d.api('DELETE', `/v1/keys/${k.keyId}`);
    const url = `${https.base}/?broker_key=${k.key}`;
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', url])).out).toBe('401');
  });

  it('fail/SES-1 server SDK verify, broker verify and the Python gate: once each', async () => {
    const ref = `${owner}/once-tcp`;
    const sdk = await mint(ref, { once: true });
    expect((await tcp.verify(sdk.key)).valid).toBe(true);
    expect((await tcp.verify(sdk.key)).valid).toBe(false);
    const cli = await mint(ref, { once: true });
    const env = { ...d.env(), BROKER_TOKEN: tcp.serviceToken };
    expect((await run(process.execPath, [BIN, 'verify', ref], env, `${cli.key}\n`)).code).toBe(0);
    expect((await run(process.execPath, [BIN, 'verify', ref], env, `${cli.key}\n`)).code).toBe(1);
    // The Python gate: gate two connections with the same one-time key.
    const py = spawn(
      'python3',
      [
        '-c',
        `import socket, sys, os
sys.path.insert(0, ${JSON.stringify(join(ROOT, 'clients', 'python'))})
from broker_client import BrokerClient, gate_socket
c = BrokerClient(url=os.environ['BROKER_URL'], token=os.environ['BROKER_TOKEN'], ca=os.environ['BROKER_CA'])
srv = socket.create_server(('127.0.0.1', 0))
print(srv.getsockname()[1], flush=True)
for _ in range(2):
    s, _a = srv.accept()
    r = gate_socket(s, c)
    print('ok' if r else 'denied', flush=True)
    if r: s.close()`,
      ],
      {
        env: {
          ...process.env,
          BROKER_URL: d.url,
          BROKER_TOKEN: tcp.serviceToken,
          BROKER_CA: caFile,
        },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    procs.push(py);
    const port = Number(await lineFrom(py, (l) => /^\d+$/.test(l)));
    const pk = await mint(ref, { once: true });
    const results: string[] = [];
    py.stdout!.on('data', (b: Buffer) => results.push(...b.toString().trim().split('\n')));
    (await present(port, pk.key)).socket.destroy();
    (await present(port, pk.key)).socket.destroy();
    await until(() => results.includes('denied'), 5000, 'the second verdict');
    expect(results.filter((r) => r === 'ok' || r === 'denied')).toEqual(['ok', 'denied']);
  });
});

describe('SES-1: sessions and connections end with the key that opened them', () => {
  it('fail/SES-1 revoke a key, disable a principal: the session cookie, the WebSocket and the TCP connection they opened end within the 5 s re-check', async () => {
    const web = await httpsService('live-web');
    const tcp = await tcpService('live-tcp');
    const bob = await d.addUser('bob-live', 'admin'); // an admin may load any service's key
    // A session (login URL), an upgraded connection and a TCP connection from key K1 …
    const k1 = await mint(`${owner}/live-web`);
    const login = await loginWith(`${web.base}/?broker_key=${k1.key}`, caFile);
    const cookie = login.cookie;
    expect(await status(`${login.origin}/x`, { Cookie: cookie })).toBe(200);
    const ws = await new Promise<import('node:net').Socket>((resolve, reject) =>
      request(`${web.base}/ws`, {
        ca: d.ca,
        lookup: localhostLookup,
        agent: false,
        headers: { Connection: 'Upgrade', Upgrade: 'websocket', Authorization: `Bearer ${k1.key}` },
      })
        .on('upgrade', (_res, socket) => resolve(socket as import('node:net').Socket))
        .on('error', reject)
        .end(),
    );
    const tk1 = await mint(`${owner}/live-tcp`);
    const conn1 = await present(tcp.port, tk1.key);
    expect(conn1.line).toBe('OK');
    // … and from bob's key K2 (bob will be disabled).
    const k2 = await mint(`${owner}/live-web`, {}, bob);
    const login2 = await loginWith(`${web.base}/?broker_key=${k2.key}`, caFile);
    const cookie2 = login2.cookie;
    expect(await status(`${login2.origin}/x`, { Cookie: cookie2 })).toBe(200);
    const t0 = Date.now();
    await d.api('DELETE', `/v1/keys/${k1.keyId}`);
    await d.api('DELETE', `/v1/keys/${tk1.keyId}`);
    await d.api('PATCH', '/v1/principals/bob-live', { body: { disabled: true } });
    await Promise.all([closed(ws), closed(conn1.socket)]);
    expect(Date.now() - t0).toBeLessThan(6500);
    expect(await status(`${login.origin}/x`, { Cookie: cookie })).toBe(401);
    expect(await status(`${login2.origin}/x`, { Cookie: cookie2 })).toBe(401);
  }, 20_000);
});

describe.skipIf(announceSkip('SES-1 cookie isolation and LOC-5 --inject-key (another Unix user)'))(
  "SES-1 / LOC-5: another service and another user's page never get the session; --inject-key serves only its owner",
  () => {
    it("fail/SES-1 curl's cookie jar keeps service A's session to A: service B and mallory's page on *.localhost never receive it, and B refuses its value", async () => {
      const a = await httpsService('jar-a');
      const b = await httpsService('jar-b');
      // mallory's own HTTPS page, with a certificate the broker gave her for her own service.
      await d.addUser('mallory');
      const mtoken = (await d.api('POST', '/v1/principals/mallory/tokens', { body: {} })).body
        .token as string;
      const mreg = await d.api('POST', '/v1/services', {
        token: mtoken,
        body: { name: 'page', mode: 'https', tunnel: 'none' },
      });
      const mallory = unixUser('bt-mallory');
      const page = spawnNodeAs(
        mallory,
        `
        import https from 'node:https';
        https.createServer({ cert: process.env.CERT, key: process.env.KEY }, (req, res) => {
          console.log('COOKIE ' + JSON.stringify(req.headers.cookie ?? ''));
          res.end('mallory');
        }).listen(0, '127.0.0.1', function () { console.log('PORT ' + this.address().port); });`,
        { env: { CERT: mreg.body.tls.cert, KEY: mreg.body.tls.key } },
      );
      procs.push(page);
      const mport = Number((await lineFrom(page, (l) => l.startsWith('PORT '))).slice(5));
      const jar = join(tmp, 'jar.txt');
      const k = await mint(`${owner}/jar-a`);
      // curl follows the login as a browser does: to a host of the session's own, then the page.
      const landed = await curl([
        '-L',
        '-c',
        jar,
        '-b',
        jar,
        '-w',
        '%{url_effective}',
        '-o',
        '/dev/null',
        `${a.base}/in?broker_key=${k.key}`,
      ]);
      const origin = new URL(landed.out).origin;
      expect(origin).toMatch(/^https:\/\/s[0-9a-f]{32}\.jar-a\./);
      expect(readFileSync(jar, 'utf8')).toContain('__Host-broker_session');
      expect((await curl(['-c', jar, '-b', jar, `${origin}/in`])).out).toBe(`hello ${owner}`);
      // Not on the service's own name: the cookie is for the session's host alone.
      expect(
        (await curl(['-b', jar, '-o', '/dev/null', '-w', '%{http_code}', `${a.base}/`])).out,
      ).toBe('401');
      // B, in the same jar: no cookie sent, so 401; B's app never saw a cookie.
      expect(
        (await curl(['-b', jar, '-o', '/dev/null', '-w', '%{http_code}', `${b.base}/`])).out,
      ).toBe('401');
      // mallory's page on *.localhost (a valid broker certificate, for her own name).
      const seen = lineFrom(page, (l) => l.startsWith('COOKIE '));
      const mp = await curl(['-b', jar, `https://${mreg.body.service.hostname}:${mport}/`]);
      expect(mp.out).toBe('mallory');
      expect(await seen).toBe('COOKIE ""');
      // And on plain localhost her certificate is refused: the request never happens.
      expect((await curl(['-b', jar, `https://localhost:${mport}/`])).code).not.toBe(0);
      // A's session value presented to B is just unknown there.
      const value = /__Host-broker_session\t(\S+)/.exec(readFileSync(jar, 'utf8'))![1]!;
      expect(await status(`${b.base}/`, { Cookie: `__Host-broker_session=${value}` })).toBe(401);
      expect(b.seen).toEqual([]);
      killAs(page);
    });

    it("fail/LOC-5 --inject-key: mallory connecting to the owner's local port (127.0.0.1 or ::1) gets DENIED and reaches nothing; the owner gets through", async () => {
      let reached = 0;
      await tcpService('inject', () => reached++);
      const t = spawn(process.execPath, [BIN, 'tunnel', 'inject', '--inject-key', '--json'], {
        env: d.env(),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      procs.push(t);
      let out = '';
      let err = '';
      t.stdout!.on('data', (b: Buffer) => (out += b.toString()));
      t.stderr!.on('data', (b: Buffer) => (err += b.toString()));
      await until(() => out.trim().endsWith('}'), 15_000, 'broker tunnel --json');
      const port = JSON.parse(out).localPort as number;
      const mallory = unixUser('bt-mallory');
      // The tunnel holds the port on both loopback addresses; both attribute the connection.
      for (const host of ['127.0.0.1', '::1']) {
        const m = await nodeAs(
          mallory,
          `import net from 'node:net';
           const s = net.connect(${port}, '${host}', () => s.write('ping\\n'));
           let got = ''; s.on('data', (b) => (got += b)); s.on('error', () => {});
           s.on('close', () => console.log(JSON.stringify(got)));`,
        );
        expect(JSON.parse(m.stdout)).toBe('DENIED\n');
      }
      expect(reached).toBe(0);
      await until(() => err.includes(`uid ${mallory.uid}`), 3000, 'the refusal on stderr');
      // The owner's own processes: the key is injected, the echo answers.
      for (const host of ['127.0.0.1', '::1']) {
        const mine = await new Promise<string>((resolve) => {
          const s = netConnect({ host, port }, () => s.write('mine\n'));
          s.on('data', (b) => {
            if (b.toString().includes('mine')) {
              resolve(b.toString());
              s.destroy();
            }
          });
        });
        expect(mine).toBe('mine\n');
      }
      expect(reached).toBe(2);
      killAs(t, 'SIGTERM');
      const wide = await run(
        process.execPath,
        [BIN, 'tunnel', 'inject', '--inject-key', '--local-host', '0.0.0.0'],
        d.env(),
      );
      expect(wide.code).toBe(2);
      expect(wide.err).toMatch(/only listens on loopback/);
    });
  },
);

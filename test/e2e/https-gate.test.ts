/**
 * HTTPS services end to end (issue 3): a real https server using the SDK (local key + CSR,
 * broker-signed certificate, httpGate), reached with curl and openssl: bearer key, one-time login
 * URL → cookie → redirect without the key, WebSocket upgrade checked, renewal while a keep-alive
 * connection stays up, TLS 1.1 refused, `broker open`.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { Agent, createServer, request, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient, localhostLookup } from '../../src/client/broker-client.js';
import { registerService, type BrokerService } from '../../src/server-sdk/service.js';
import { Daemon } from '../helpers/daemon.js';
import { loginWith } from '../helpers/login.js';

const tmp = mkdtempSync(join(tmpdir(), 'broker-https-'));

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const c = execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) =>
      resolve({
        code: err ? Number((err as { code?: number }).code ?? 1) : 0,
        out: stdout + stderr,
      }),
    );
    c.stdin?.end(); // openssl s_client waits on stdin otherwise
  });
}

function fingerprintOf(port: number, ca: string, servername: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca, servername }, () => {
      resolve(s.getPeerCertificate().fingerprint256);
      s.end();
    });
    s.on('error', reject);
  });
}

describe('HTTPS service behind the SDK gate', () => {
  let d: Daemon;
  let svc: BrokerService;
  let server: Server;
  let caFile: string;
  let base: string;
  const seenUrls: string[] = [];

  const mintKey = async (once = false) =>
    (
      await d.api('POST', `/v1/services/${svc.service.owner}/${svc.service.name}/keys`, {
        body: once ? { once: true } : {},
      })
    ).body.key as string;

  beforeAll(async () => {
    d = await Daemon.start();
    caFile = join(tmp, 'ca.pem');
    writeFileSync(caFile, d.ca);
    svc = await registerService({
      broker: new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} }),
      name: 'notebook',
      mode: 'https',
      tunnel: 'none',
    });
    const gate = svc.httpGate({ cacheMs: 0 });
    server = createServer(svc.tlsOptions(), async (req, res) => {
      if (!(await gate.handle(req, res))) return;
      seenUrls.push(req.url ?? '');
      res.end(`hello ${(req as { brokerPrincipal?: string }).brokerPrincipal} at ${req.url}`);
    });
    server.on('upgrade', (req, socket, head) =>
      gate.upgrade(req, socket, head, (_req, s) =>
        s.end(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n',
        ),
      ),
    );
    svc.watch(server);
    await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
    await svc.ready();
    // The service's own name: curl resolves *.localhost to loopback (RFC 6761), and the
    // certificate names nothing else (SES-3).
    base = `https://${svc.service.hostname}:${svc.port}`;
  });

  afterAll(async () => {
    server?.close();
    await svc?.close();
    await d?.stop();
  });

  it('ok/the private key never left the server: registration used a CSR', async () => {
    expect(svc.tls?.key.keyPem).toMatch(/PRIVATE KEY/);
    const events = (await d.api('GET', '/v1/audit?limit=100')).body.events as {
      action: string;
      details: { csr?: boolean };
    }[];
    expect(events.find((e) => e.action === 'cert.issue')?.details.csr).toBe(true);
  });

  it('ok/curl with the broker CA and a bearer key → 200; fail/ no key → 401; fail/ no broker CA → TLS error', async () => {
    const key = await mintKey();
    const ok = await run('curl', [
      '-sS',
      '--cacert',
      caFile,
      '-H',
      `Authorization: Bearer ${key}`,
      `${base}/x`,
    ]);
    expect(ok.out).toMatch(/^hello \w+ at \/x$/);
    const nokey = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--cacert',
      caFile,
      `${base}/x`,
    ]);
    expect(nokey.out).toBe('401');
    const wrong = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--cacert',
      caFile,
      '-H',
      'Authorization: Bearer bkk_' + 'z'.repeat(43),
      `${base}/x`,
    ]);
    expect(wrong.out).toBe('401');
    expect((await run('curl', ['-sS', `${base}/x`])).code).not.toBe(0);
  });

  it('ok/one-time login URL → a ticket on a host of its own → HttpOnly/Secure/SameSite=Strict cookie there; the cookie works there only; the URL and the ticket work once', async () => {
    const key = await mintKey(true);
    // The response headers only, of a GET with `extra` curl arguments.
    const headersOf = (url: string, extra: string[] = []) =>
      run('curl', ['-sS', '-D', '-', '-o', '/dev/null', '--cacert', caFile, ...extra, url]);
    const login = await loginWith(`${base}/lab/tree?x=1&broker_key=${key}`, caFile);
    // SES-1: the session lives on s<128 random bits>.<the service's name>, reached by a ticket.
    const host = svc.service.hostname.replaceAll('.', '\\.');
    expect(login.ticketUrl).toMatch(
      new RegExp(
        `^https://s[0-9a-f]{32}\\.${host}:${svc.port}/lab/tree\\?x=1&broker_ticket=[\\w-]{43}$`,
      ),
    );
    expect(login.ticketUrl).not.toContain('broker_key');
    expect(login.page).toBe('/lab/tree?x=1');
    expect(login.attributes).toMatch(/HttpOnly/);
    expect(login.attributes).toMatch(/Secure/);
    expect(login.attributes).toMatch(/SameSite=Strict/);
    expect(login.attributes).toMatch(/Path=\//);
    const at = (origin: string) =>
      run('curl', [
        '-sS',
        '--cacert',
        caFile,
        '-H',
        `Cookie: ${login.cookie}`,
        `${origin}/lab/tree?x=1`,
      ]);
    expect((await at(login.origin)).out).toMatch(/^hello \w+ at \/lab\/tree\?x=1$/);
    // The same cookie on the service's own name (or any other host) is worth nothing.
    expect((await at(base)).out).toMatch(/unauthenticated/);
    // The key and the ticket were one use each.
    const status = async (url: string) =>
      (await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', caFile, url]))
        .out;
    expect(await status(`${base}/?broker_key=${key}`)).toBe('401');
    expect(await status(login.ticketUrl)).toBe('401');
    // A percent-encoded parameter name is the same parameter: exchanged and stripped, not passed
    // on to the app (with the cookie, the request would otherwise reach it, key and all).
    const encoded = await headersOf(`${login.origin}/lab?broker%5F%6Bey=${await mintKey(true)}`, [
      '-H',
      `Cookie: ${login.cookie}`,
    ]);
    expect(encoded.out).toMatch(/^HTTP\/1\.1 303/);
    expect(encoded.out).toMatch(/^Location: https:\/\/s[0-9a-f]{32}\.[^/]+\/lab\?broker_ticket=/m);
    // The app never saw a URL with a key or a ticket in it.
    expect(seenUrls.some((u) => /broker_(key|ticket)/.test(decodeURIComponent(u)))).toBe(false);
  });

  it('fail/a WebSocket upgrade without a key is refused; ok/ with one it goes through', async () => {
    const upgrade = (headers: Record<string, string>) =>
      new Promise<number>((resolve, reject) => {
        const req = request(`${base}/ws`, {
          ca: d.ca,
          lookup: localhostLookup,
          headers: { Connection: 'Upgrade', Upgrade: 'websocket', ...headers },
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve(res.statusCode ?? 0);
        });
        req.on('response', (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', reject);
        req.end();
      });
    expect(await upgrade({})).toBe(401);
    expect(await upgrade({ Authorization: `Bearer ${await mintKey()}` })).toBe(101);
  });

  it('ok/renewal swaps the certificate while a keep-alive connection stays up', async () => {
    const key = await mintKey();
    const agent = new Agent({ ca: d.ca, keepAlive: true, maxSockets: 1 });
    const get = () =>
      new Promise<{ status: number; socket: unknown }>((resolve, reject) => {
        const req = request(
          `${base}/k`,
          { agent, lookup: localhostLookup, headers: { Authorization: `Bearer ${key}` } },
          (res) => {
            res.resume();
            res.on('end', () => resolve({ status: res.statusCode ?? 0, socket: req.socket }));
          },
        );
        req.on('error', reject);
        req.end();
      });
    const first = await get();
    const before = await fingerprintOf(svc.port, d.ca, svc.service.hostname);
    await svc.renewNow();
    const second = await get();
    expect(second.status).toBe(200);
    expect(second.socket).toBe(first.socket); // the same TLS connection survived
    expect(await fingerprintOf(svc.port, d.ca, svc.service.hostname)).not.toBe(before); // new connections get the new cert
    agent.destroy();
  });

  it("fail/NET-2: service A's certificate presented on service B's port is refused by the SDK agent", async () => {
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    const other = await d.api('POST', '/v1/services', {
      body: { name: 'impostor', mode: 'https', tunnel: 'none' },
    });
    // An impostor presents its own (valid, broker-issued) certificate on a port of its choosing.
    const fake = createServer({ cert: other.body.tls.cert, key: other.body.tls.key }, (_q, r) =>
      r.end('impostor'),
    );
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const port = (fake.address() as { port: number }).port;
    const get = (agent: Agent) =>
      new Promise<string>((resolve, reject) =>
        request(`https://127.0.0.1:${port}/`, { agent }, (res) => {
          let b = '';
          res.on('data', (c) => (b += c));
          res.on('end', () => resolve(b));
        })
          .on('error', reject)
          .end(),
      );
    const owner = svc.service.owner;
    await expect(get(broker.httpsAgent({ service: { owner, name: 'notebook' } }))).rejects.toThrow(
      /not for the service|does not match certificate/,
    );
    await expect(get(broker.httpsAgent({ service: { owner, name: 'impostor' } }))).resolves.toBe(
      'impostor',
    );
    // And the real notebook's certificate passes the same check.
    const ok = await new Promise<number>((resolve, reject) =>
      request(
        `${base}/`,
        { agent: broker.httpsAgent({ service: { owner, name: 'notebook' } }) },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      )
        .on('error', reject)
        .end(),
    );
    expect(ok).toBe(401); // reached the right server (which then wants a key)
    fake.close();
    broker.close();
  });

  it('fail/NET-2: a foreign-CA certificate with the right SAN is rejected by curl and the SDK agent', async () => {
    const gen = await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      `/CN=${svc.service.owner}\\/notebook`,
      '-addext',
      `subjectAltName=DNS:${svc.service.hostname},DNS:localhost,IP:127.0.0.1`,
      '-days',
      '1',
      '-keyout',
      join(tmp, 'foreign-key.pem'),
      '-out',
      join(tmp, 'foreign-cert.pem'),
    ]);
    expect(gen.code, gen.out).toBe(0);
    const { readFileSync } = await import('node:fs');
    const fake = createServer(
      {
        cert: readFileSync(join(tmp, 'foreign-cert.pem')),
        key: readFileSync(join(tmp, 'foreign-key.pem')),
      },
      (_q, r) => r.end('fake'),
    );
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    const port = (fake.address() as { port: number }).port;
    expect(
      (await run('curl', ['-sS', '--cacert', caFile, `https://${svc.service.hostname}:${port}/`]))
        .code,
    ).not.toBe(0);
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    const agent = broker.httpsAgent({ service: svc.service });
    await expect(
      new Promise((resolve, reject) =>
        request(`https://127.0.0.1:${port}/`, { agent }, resolve).on('error', reject).end(),
      ),
    ).rejects.toThrow(/self-signed|unable to verify|certificate/i);
    fake.close();
    broker.close();
  });

  it('fail/the service refuses TLS 1.1; ok/ TLS 1.2 verifies against the broker CA', async () => {
    expect(
      (
        await run('openssl', [
          's_client',
          '-connect',
          `127.0.0.1:${svc.port}`,
          '-tls1_1',
          '-CAfile',
          caFile,
        ])
      ).code,
    ).not.toBe(0);
    const ok = await run('openssl', [
      's_client',
      '-connect',
      `127.0.0.1:${svc.port}`,
      '-tls1_2',
      '-CAfile',
      caFile,
      '-verify_return_error',
      '-brief',
    ]);
    expect(ok.code, ok.out).toBe(0);
  });

  it('ok/broker open prints a one-time login URL that logs in', async () => {
    const r = await d.cli(['open', 'notebook', '--json'], {
      env: { BROKER_URL: d.url, BROKER_CA: caFile, BROKER_TOKEN: d.adminToken },
    });
    expect(r.code, r.stderr).toBe(0);
    const { url } = JSON.parse(r.stdout);
    expect(url).toMatch(
      new RegExp(
        `^https://${svc.service.hostname.replaceAll('.', '\\.')}:${svc.port}/\\?broker_key=bkk_`,
      ),
    );
    const hdrs = await run('curl', ['-sS', '-D', '-', '-o', '/dev/null', '--cacert', caFile, url]);
    expect(hdrs.out).toMatch(/^HTTP\/1\.1 303/);
    const tcp = await d.api('POST', '/v1/services', {
      body: { name: 'plain-tcp', tunnel: 'none' },
    });
    expect(tcp.status).toBe(201);
    const bad = await d.cli(['open', 'plain-tcp'], {
      env: { BROKER_URL: d.url, BROKER_CA: caFile, BROKER_TOKEN: d.adminToken },
    });
    expect(bad.code).toBe(2);
  });
});

describe('mTLS: client certificates from the broker CA', () => {
  let d: Daemon;
  let svc: BrokerService;
  let server: Server;
  let caFile: string;
  let base: string;
  const dir = mkdtempSync(join(tmpdir(), 'broker-mtls-'));

  beforeAll(async () => {
    d = await Daemon.start();
    caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, d.ca);
    svc = await registerService({
      broker: new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} }),
      name: 'secure',
      mode: 'https',
      tunnel: 'none',
      requireClientCert: true,
    });
    const gate = svc.httpGate({ cacheMs: 0 });
    server = createServer(svc.tlsOptions(), async (req, res) => {
      if (!(await gate.handle(req, res))) return;
      res.end(`hello ${(req as { brokerPrincipal?: string }).brokerPrincipal}`);
    });
    await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
    base = `https://${svc.service.hostname}:${svc.port}/`;
  });
  afterAll(async () => {
    server?.close();
    await svc?.close();
    await d?.stop();
  });

  const curl = (certDir: string | null) =>
    run('curl', [
      '-sS',
      '--cacert',
      caFile,
      ...(certDir ? ['--cert', join(certDir, 'cert.pem'), '--key', join(certDir, 'key.pem')] : []),
      base,
    ]);

  it("ok/the owner's broker-issued client certificate gets in without a key", async () => {
    const mine = join(dir, 'owner');
    const r = await d.cli(['cert', '--out-dir', mine, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(join(mine, 'key.pem')).mode & 0o777).toBe(0o600);
    const out = await curl(mine);
    expect(out.out).toBe(`hello ${svc.service.owner}`);
  });

  it("fail/another principal's certificate: the TLS handshake works, the gate refuses (401)", async () => {
    await d.addUser('mallory');
    const theirs = join(dir, 'mallory');
    const r = await d.cli(['cert', '--principal', 'mallory', '--out-dir', theirs]);
    expect(r.code, r.stderr).toBe(0);
    const out = await run('curl', [
      '-sS',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code}',
      '--cacert',
      caFile,
      '--cert',
      join(theirs, 'cert.pem'),
      '--key',
      join(theirs, 'key.pem'),
      base,
    ]);
    expect(out.out).toBe('401');
  });

  it('fail/a certificate from a foreign CA, or none at all, does not complete the handshake', async () => {
    const foreign = join(dir, 'foreign');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(foreign);
    const gen = await run('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      `/CN=${svc.service.owner}`,
      '-days',
      '1',
      '-keyout',
      join(foreign, 'key.pem'),
      '-out',
      join(foreign, 'cert.pem'),
    ]);
    expect(gen.code, gen.out).toBe(0);
    expect((await curl(foreign)).code).not.toBe(0);
    expect((await curl(null)).code).not.toBe(0);
  });
});

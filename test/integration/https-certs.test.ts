/**
 * Service certificates from the broker CA (issue 3, SECURITY.md COMP-3, NET-2), checked with
 * stock openssl and curl: policy-chosen names and lifetime, CSR signing that keeps the private
 * key on the server, renewal with the service token.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) =>
      resolve({
        code: err ? Number((err as { code?: number }).code ?? 1) : 0,
        out: stdout + stderr,
      }),
    ),
  );
}

const tmp = mkdtempSync(join(tmpdir(), 'broker-certs-'));

async function csr(
  name: string,
  extra: string[] = [],
  keyAlg = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256'],
): Promise<string> {
  const r = await run('openssl', [
    'req',
    '-new',
    ...keyAlg,
    '-nodes',
    '-keyout',
    join(tmp, `${name}.key`),
    '-out',
    join(tmp, `${name}.csr`),
    '-subj',
    '/CN=evil',
    ...extra,
  ]);
  expect(r.code, r.out).toBe(0);
  return readFileSync(join(tmp, `${name}.csr`), 'utf8');
}

async function x509Text(pem: string): Promise<string> {
  const f = join(tmp, `c-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(f, pem);
  return (await run('openssl', ['x509', '-in', f, '-noout', '-text'])).out;
}

describe('https service certificates', () => {
  let d: Daemon;
  let caFile: string;
  let owner: string;
  const servers: Server[] = [];

  beforeAll(async () => {
    d = await Daemon.start();
    caFile = join(tmp, 'ca.pem');
    writeFileSync(caFile, d.ca);
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    for (const s of servers) s.close();
    await d.stop();
  });

  it('ok/register --mode https --out-dir: cert, key (0600) and CA; openssl verifies the policy', async () => {
    const dir = join(tmp, 'out');
    const r = await d.cli([
      'register',
      'web',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      dir,
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(join(dir, 'key.pem')).mode & 0o777).toBe(0o600);
    expect(
      (await run('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, 'cert.pem')])).out,
    ).toMatch(/cert\.pem: OK/);
    const text = await x509Text(readFileSync(join(dir, 'cert.pem'), 'utf8'));
    expect(text).toMatch(/CA:FALSE/);
    expect(text).toMatch(/TLS Web Server Authentication/);
    // SES-3: the service's own name and nothing else — no localhost, no address.
    const san = /X509v3 Subject Alternative Name:.*\n\s*(.+)/.exec(text)![1]!.trim();
    // …and the hosts of its browser logins under it (s<random>.web.OWNER.localhost).
    expect(san).toBe(`DNS:web.${owner}.localhost, DNS:*.web.${owner}.localhost`);
    expect(text).toMatch(new RegExp(`Subject: CN ?= ?${owner}/web`));
    const serial = /Serial Number:\s*\n?\s*([0-9a-f:]+)/i.exec(text)![1]!.replace(/:/g, '');
    expect(serial.length * 4).toBeGreaterThanOrEqual(64);
    const notBefore = Date.parse(/Not Before: (.+)/.exec(text)![1]!);
    const notAfter = Date.parse(/Not After : (.+)/.exec(text)![1]!);
    expect(notAfter - notBefore).toBeLessThanOrEqual(24 * 3600e3 + 120e3);
    const svc = (await d.api('GET', `/v1/services/${owner}/web`)).body.service;
    expect(svc.cert.fingerprint).toMatch(/^sha256:[0-9a-f]{64}$/);
  });

  it('ok/COMP-3: a CSR asking for *.example.org, CA:TRUE and another name gets only policy', async () => {
    const pem = await csr('evil', [
      '-addext',
      'subjectAltName=DNS:*.example.org,DNS:other.example.org',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
    ]);
    const r = await d.api('POST', '/v1/services', {
      body: { name: 'web2', mode: 'https', tunnel: 'none', csr: pem },
    });
    expect(r.status, r.text).toBe(201);
    expect(r.body.tls.key).toBeUndefined(); // the private key never left the "server"
    const text = await x509Text(r.body.tls.cert);
    expect(text).toMatch(/CA:FALSE/);
    expect(text).not.toMatch(/example\.org/);
    expect(text).not.toMatch(/CN ?= ?evil/);
    // The certificate matches the CSR's key.
    const pub = (f: string, args: string[]) =>
      run('openssl', [...args, '-in', f, '-noout', '-pubkey']);
    const certFile = join(tmp, 'web2.pem');
    writeFileSync(certFile, r.body.tls.cert);
    expect((await pub(certFile, ['x509'])).out).toBe(
      (await pub(join(tmp, 'evil.csr'), ['req'])).out,
    );
  });

  it('fail/COMP-3: garbage, a tampered CSR and an RSA CSR → 400, nothing registered', async () => {
    const good = await csr('tamper');
    const tampered = good.replace(
      /([A-Za-z0-9+/]{10})([A-Za-z0-9+/])/,
      (_m, a: string, b: string) => a + (b === 'A' ? 'B' : 'A'),
    );
    const rsa = await csr('rsa', [], ['-newkey', 'rsa:2048']);
    for (const [label, body] of [
      ['garbage', 'not a csr'],
      ['tampered', tampered],
      ['rsa', rsa],
    ] as const) {
      const r = await d.api('POST', '/v1/services', {
        body: { name: `bad-${label}`, mode: 'https', tunnel: 'none', csr: body },
      });
      expect(r.status, label).toBe(400);
      expect(r.body.error.code).toBe('validation_failed');
      expect((await d.api('GET', `/v1/services/${owner}/bad-${label}`)).status).toBe(404);
    }
    const tcp = await d.api('POST', '/v1/services', {
      body: { name: 'tcp-csr', tunnel: 'none', csr: good },
    });
    expect(tcp.status).toBe(400);
  });

  it('ok/a real https server with the issued certificate: curl with the broker CA works, without it fails (NET-2)', async () => {
    const reg = await d.api('POST', '/v1/services', {
      body: { name: 'web3', mode: 'https', tunnel: 'none' },
    });
    const { tls, service } = reg.body;
    const srv = createServer({ cert: tls.cert, key: tls.key, minVersion: 'TLSv1.2' }, (_req, res) =>
      res.end('hello over tls'),
    );
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(service.port, '127.0.0.1', r));
    const url = `https://${service.hostname}:${service.port}/`;
    const ok = await run('curl', ['-sS', '--cacert', caFile, url]);
    expect(ok.out).toBe('hello over tls');
    expect((await run('curl', ['-sS', url])).code).not.toBe(0);
    // Not for localhost either: another user's page on localhost cannot pass for it (SES-3).
    expect(
      (await run('curl', ['-sS', '--cacert', caFile, `https://localhost:${service.port}/`])).code,
    ).not.toBe(0);
    // Service A's certificate is not valid for a name the broker did not put in it.
    expect(
      (
        await run('curl', [
          '-sS',
          '--cacert',
          caFile,
          '--resolve',
          `web.example.org:${service.port}:127.0.0.1`,
          `https://web.example.org:${service.port}/`,
        ])
      ).code,
    ).not.toBe(0);
  });

  it('ok/renewal with the service token: a new certificate, fingerprint recorded; fail/ user token or tcp service', async () => {
    const reg = await d.api('POST', '/v1/services', {
      body: { name: 'web4', mode: 'https', tunnel: 'none' },
    });
    const token = reg.body.serviceToken;
    const before = reg.body.service.cert.fingerprint;
    const pem = await csr('renew');
    const r = await d.api('POST', `/v1/services/${owner}/web4/cert`, { token, body: { csr: pem } });
    expect(r.status, r.text).toBe(200);
    expect(r.body.tls.key).toBeUndefined();
    expect(r.body.service.cert.fingerprint).not.toBe(before);
    expect((await d.api('GET', `/v1/services/${owner}/web4`)).body.service.cert.fingerprint).toBe(
      r.body.service.cert.fingerprint,
    );
    expect((await d.api('POST', `/v1/services/${owner}/web4/cert`, { body: {} })).status).toBe(403);
    const tcp = await d.api('POST', '/v1/services', { body: { name: 'plain', tunnel: 'none' } });
    expect(
      (
        await d.api('POST', `/v1/services/${owner}/plain/cert`, {
          token: tcp.body.serviceToken,
          body: {},
        })
      ).status,
    ).toBe(400);
    // The audit trail has each issuance.
    const events = (await d.api('GET', '/v1/audit?limit=500')).body.events as {
      action: string;
      target: string;
    }[];
    expect(
      events.filter((e) => e.action === 'cert.issue' && e.target === `${owner}/web4`),
    ).toHaveLength(2);
  });
});

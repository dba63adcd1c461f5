/**
 * NET-1: the API speaks TLS 1.2/1.3 only (checked with stock openssl and curl), no plaintext.
 * NET-2: clients trust only the broker CA.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { Daemon } from '../helpers/daemon.js';

function run(cmd: string, args: string[], input = ''): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    const c = execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) =>
      resolve({
        code: err ? Number((err as { code?: number }).code ?? 1) : 0,
        out: stdout + stderr,
      }),
    );
    // A client that exits before reading (openssl refusing TLS 1.1) closes its stdin: EPIPE is
    // expected then, and its exit status is what the test checks.
    c.stdin!.on('error', () => undefined);
    c.stdin!.end(input);
  });
}

describe('TLS on the API', () => {
  let d: Daemon;
  let hostPort: string;
  let caFile: string;
  const tmp = mkdtempSync(join(tmpdir(), 'broker-tls-'));

  beforeAll(async () => {
    d = await Daemon.start();
    hostPort = new URL(d.url).host;
    caFile = join(tmp, 'ca.pem');
    writeFileSync(caFile, d.ca);
  });
  afterAll(async () => {
    await d.stop();
  });

  for (const [flag, ok] of [
    ['-tls1_1', false],
    ['-tls1', false],
    ['-tls1_2', true],
    ['-tls1_3', true],
  ] as const) {
    it(`${ok ? 'ok' : 'fail'}/openssl s_client ${flag} (NET-1)`, async () => {
      const r = await run('openssl', [
        's_client',
        '-connect',
        hostPort,
        flag,
        '-CAfile',
        caFile,
        '-verify_return_error',
        '-brief',
      ]);
      if (ok) {
        expect(r.code, r.out).toBe(0);
        expect(r.out).toMatch(/Verification: OK/);
      } else {
        expect(r.code).not.toBe(0);
      }
    });
  }

  it('fail/plain HTTP on the API port gets no API answer (NET-1)', async () => {
    const { port } = new URL(d.url);
    const status = await new Promise<number | string>((resolve) => {
      const req = httpRequest(
        { host: '127.0.0.1', port, path: '/v1/health', timeout: 3000 },
        (res) => resolve(res.statusCode ?? 0),
      );
      req.on('error', (e) => resolve((e as NodeJS.ErrnoException).code ?? 'error'));
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.end();
    });
    expect(status).not.toBe(200);
  });

  it('ok/curl --cacert with the broker CA; fail/curl without it (NET-2)', async () => {
    const ok = await run('curl', ['-sS', '--cacert', caFile, `${d.url}/v1/health`]);
    expect(ok.code, ok.out).toBe(0);
    expect(JSON.parse(ok.out)).toMatchObject({ status: 'ok' });
    const bad = await run('curl', ['-sS', '--cacert', '/dev/null', `${d.url}/v1/health`]);
    expect(bad.code).not.toBe(0);
  });

  it('fail/the SDK refuses a broker whose certificate is not from the pinned CA (NET-2)', async () => {
    const other = await Daemon.start();
    try {
      const client = new BrokerClient({
        url: other.url,
        ca: d.ca,
        token: other.adminToken,
        env: {},
      });
      await expect(client.health()).rejects.toMatchObject({ code: 'unreachable' });
      const good = new BrokerClient({
        url: other.url,
        ca: other.ca,
        token: other.adminToken,
        env: {},
      });
      await expect(good.health()).resolves.toMatchObject({ status: 'ok' });
      good.close();
      client.close();
    } finally {
      await other.stop();
    }
  });

  it('ok/openssl verifies the API certificate chain and names', async () => {
    const r = await run(
      'openssl',
      [
        's_client',
        '-connect',
        hostPort,
        '-CAfile',
        caFile,
        '-verify_ip',
        '127.0.0.1',
        '-verify_return_error',
        '-showcerts',
      ],
      '',
    );
    expect(r.code, r.out).toBe(0);
    expect(r.out).toMatch(/Verify return code: 0 \(ok\)/);
  });
});

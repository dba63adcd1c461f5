/**
 * `broker backup` / `broker restore`: a copy taken while the daemon is busy registering is
 * consistent, holds everything acknowledged before it started, and restores into a broker with
 * the same CA, SSH host key, services, keys and tokens.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon, runCli } from '../helpers/daemon.js';

const execFileP = promisify(execFile);

describe('backup and restore', () => {
  let d: Daemon;
  let tmp: string;
  let alice: string;
  const backupFile = () => join(tmp, 'broker-backup.db');
  const before: { name: string; port: number; serviceToken: string }[] = [];
  let key: string;
  let fingerprint: string;
  let caPem: string;
  let server: Server;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'broker-backup-'));
    d = await Daemon.start({ portRange: '23000-23999' });
    alice = await d.addUser('alice');
    for (let i = 0; i < 20; i++) {
      const r = await d.api('POST', '/v1/services', {
        token: alice,
        body: { name: `pre${i}`, tunnel: 'none' },
      });
      expect(r.status, r.text).toBe(201);
      before.push({
        name: `pre${i}`,
        port: r.body.service.port,
        serviceToken: r.body.serviceToken,
      });
    }
    // Key minting needs a ready service, and ready means its port is really listened on.
    server = createServer((c) => c.destroy());
    await new Promise<void>((res) => server.listen(before[0]!.port, '127.0.0.1', res));
    const ready = await d.api('POST', '/v1/services/alice/pre0/ready', {
      token: before[0]!.serviceToken,
    });
    expect(ready.status, ready.text).toBe(200);
    const k = await d.api('POST', '/v1/services/alice/pre0/keys', { token: alice, body: {} });
    expect(k.status, k.text).toBe(201);
    key = k.body.key;
    fingerprint = (await d.api('GET', '/v1/health', { token: null })).body.gateway.fingerprint;
    caPem = readFileSync(join(d.dataDir, 'ca.pem'), 'utf8');
  });

  afterAll(async () => {
    server?.close();
    await d?.stop();
    if (!process.env.KEEP_TEST_STATE) {
      rmSync(tmp, { recursive: true, force: true });
      rmSync(d.home, { recursive: true, force: true });
    }
  });

  it('ok/a backup taken during 300 concurrent registrations is consistent and complete', async () => {
    let stop = false;
    let acknowledgedDuring = 0;
    const storm = Promise.all(
      Array.from({ length: 10 }, async (_, w) => {
        for (let i = 0; !stop && i < 30; i++) {
          const r = await d.api('POST', '/v1/services', {
            token: alice,
            body: { name: `storm-${w}-${i}`, tunnel: 'none' },
          });
          if (r.status === 201) acknowledgedDuring++;
        }
      }),
    );
    await new Promise((r) => setTimeout(r, 50)); // the storm is under way
    const out = await d.cli(['backup', backupFile(), '--json']);
    stop = true;
    await storm;
    expect(out.code, out.stderr).toBe(0);
    const summary = JSON.parse(out.stdout);
    console.log(
      `[backup] ${summary.bytes} bytes, ${summary.services} services (${acknowledgedDuring} registered during the storm)`,
    );
    expect(statSync(backupFile()).mode & 0o777).toBe(0o600);
    // An outside tool agrees the file is sound and holds everything acknowledged before it.
    const { stdout: integrity } = await execFileP('sqlite3', [
      backupFile(),
      'PRAGMA integrity_check;',
    ]);
    expect(integrity.trim()).toBe('ok');
    const { stdout: names } = await execFileP('sqlite3', [
      backupFile(),
      "SELECT name || ':' || port FROM services WHERE name LIKE 'pre%';",
    ]);
    expect(new Set(names.trim().split('\n'))).toEqual(
      new Set(before.map((b) => `${b.name}:${b.port}`)),
    );
    expect(summary.services).toBeGreaterThanOrEqual(before.length);
    // No plaintext secret in it: only hashes, like the live database.
    const raw = readFileSync(backupFile()).toString('latin1');
    for (const s of [alice, key, d.adminToken, ...before.map((b) => b.serviceToken)]) {
      expect(raw.includes(s)).toBe(false);
    }
  });

  it('fail/an existing file is not overwritten without --force; a missing state dir is named', async () => {
    const again = await d.cli(['backup', backupFile()]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/^broker: backup: .*exists.*--force/);
    const none = await d.cli(['backup', join(tmp, 'x.db'), '--data', join(tmp, 'nope')]);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/^broker: backup: .*does not exist/);
    expect(existsSync(join(tmp, 'x.db'))).toBe(false);
  });

  it('fail/restore refuses while a broker runs on the state dir, and over a database without --force', async () => {
    const running = await d.cli(['restore', backupFile(), '--data', d.dataDir]);
    expect(running.code).toBe(1);
    expect(running.stderr).toMatch(/already running.*stop it first/);
    const junk = join(tmp, 'junk.db');
    writeFileSync(junk, 'not a database at all', { mode: 0o600 });
    const bad = await d.cli(['restore', junk, '--data', join(tmp, 'fresh')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^broker: backup: .*not a broker backup/);
  });

  it('ok/a restored broker has the same CA, host key, services, keys and tokens', async () => {
    const target = join(tmp, 'restored');
    const r = await runCli(['restore', backupFile(), '--data', target, '--json'], d.env());
    expect(r.code, r.stderr).toBe(0);
    expect(statSync(target).mode & 0o777).toBe(0o700);
    const second = await runCli(['restore', backupFile(), '--data', target], d.env());
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/already holds a broker database; pass --force/);

    const restored = await Daemon.start({ dataDir: target, portRange: '23000-23999' });
    try {
      expect(readFileSync(join(target, 'ca.pem'), 'utf8')).toBe(caPem);
      const h = await restored.api('GET', '/v1/health', { token: null });
      expect(h.body.gateway.fingerprint).toBe(fingerprint);
      // alice's token, her services with their ports, and the client key all carry over.
      for (const b of before) {
        const s = await restored.api('GET', `/v1/services/alice/${b.name}`, { token: alice });
        expect(s.status, s.text).toBe(200);
        expect(s.body.port ?? s.body.service?.port).toBe(b.port);
      }
      const v = await restored.api('POST', '/v1/verify', {
        token: before[0]!.serviceToken,
        body: { key },
      });
      expect(v.status, v.text).toBe(200);
      expect(v.body.valid).toBe(true);
      // A fresh admin token was issued; the old broker's admin token was revoked with it.
      expect(restored.adminToken).not.toBe(d.adminToken);
      const old = await restored.api('GET', '/v1/services', { token: d.adminToken });
      expect(old.status).toBe(401);
    } finally {
      await restored.stop();
    }
  });
});

/**
 * The state directory on a shared node: created private, refused when loose (FS-1, FS-2), one
 * daemon per directory (DUR-7), unknown config keys refused (CFG-1).
 */
import { execFile } from 'node:child_process';
import {
  renameSync,
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';

function serve(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN, 'serve', '--listen', '127.0.0.1:0', '--ssh-listen', '127.0.0.1:0', ...args],
      { env: { PATH: process.env.PATH, HOME: tmpdir(), ...env }, timeout: 15_000 },
      (err, stdout, stderr) =>
        resolve({
          code: err ? Number((err as { code?: number }).code ?? 1) : 0,
          out: stdout + stderr,
        }),
    );
  });
}

function modes(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir).map((f) => [f, (statSync(join(dir, f)).mode & 0o777).toString(8)]),
  );
}

describe('FS-1: files are created private', () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await Daemon.start();
  });
  afterAll(async () => {
    await d.stop();
  });

  it('state dir 0700 and every file 0600 after first start', () => {
    expect((statSync(d.dataDir).mode & 0o777).toString(8)).toBe('700');
    const m = modes(d.dataDir);
    for (const f of ['broker.db', 'ca-key.pem', 'credentials.json']) expect(m[f], f).toBe('600');
    for (const [f, mode] of Object.entries(m)) {
      if (f === 'daemon.sock') continue;
      expect(mode, f).toBe('600');
    }
  });

  it('still 0600 after the first writes (WAL and shm included)', async () => {
    const r = await d.api('POST', '/v1/principals', { body: { name: 'fs1user' } });
    expect(r.status).toBe(201);
    const m = modes(d.dataDir);
    expect(m['broker.db-wal']).toBe('600');
    expect(m['broker.db-shm']).toBe('600');
    for (const [f, mode] of Object.entries(m)) if (f !== 'daemon.sock') expect(mode, f).toBe('600');
  });

  it('DUR-7: a second daemon on the same state dir refuses to start', async () => {
    const r = await serve(['--data', d.dataDir]);
    expect(r.code).not.toBe(0);
    expect(r.out).toContain('another broker is already running');
  });
});

describe('FS-2: refuse loose, foreign or symlinked state', () => {
  /** Each case prepares a state dir from a started-and-stopped one, then expects a refusal. */
  const cases: { name: string; prepare: (dir: string, base: string) => string; message: RegExp }[] =
    [
      {
        name: 'fail/state dir 0755',
        prepare: (dir) => (chmodSync(dir, 0o755), dir),
        message: /accessible by group\/other \(mode 0755\)/,
      },
      {
        name: 'fail/state dir 0770',
        prepare: (dir) => (chmodSync(dir, 0o770), dir),
        message: /chmod 700/,
      },
      {
        name: 'fail/CA key 0644',
        prepare: (dir) => (chmodSync(join(dir, 'ca-key.pem'), 0o644), dir),
        message: /ca-key\.pem is accessible/,
      },
      {
        name: 'fail/credentials 0640',
        prepare: (dir) => (chmodSync(join(dir, 'credentials.json'), 0o640), dir),
        message: /credentials\.json .*chmod 600/,
      },
      {
        name: 'fail/database 0644',
        prepare: (dir) => (chmodSync(join(dir, 'broker.db'), 0o644), dir),
        message: /broker\.db is accessible/,
      },
      {
        name: 'fail/state dir is a symlink',
        prepare: (dir, base) => {
          const link = join(base, 'link');
          symlinkSync(dir, link);
          return link;
        },
        message: /symbolic link/,
      },
      {
        name: 'fail/secret file is a symlink',
        prepare: (dir, base) => {
          const elsewhere = join(base, 'elsewhere.pem');
          writeFileSync(elsewhere, 'x', { mode: 0o600 });
          renameSync(join(dir, 'ca-key.pem'), join(base, 'real-ca-key.pem'));
          symlinkSync(elsewhere, join(dir, 'ca-key.pem'));
          return dir;
        },
        message: /ca-key\.pem is a symbolic link/,
      },
      {
        name: 'fail/state dir owned by another uid',
        prepare: (dir) => (chownSync(dir, 65534, 65534), dir),
        message: /owned by uid 65534/,
      },
    ];

  for (const c of cases) {
    it(c.name, async (ctx) => {
      if (c.name.includes('another uid') && process.getuid?.() !== 0) {
        ctx.skip();
        return;
      }
      const base = mkdtempSync(join(tmpdir(), 'broker-fs2-'));
      const d = await Daemon.start({ home: base });
      await d.stop();
      const target = c.prepare(d.dataDir, base);
      const r = await serve(['--data', target]);
      expect(r.code).not.toBe(0);
      expect(r.out).toMatch(c.message);
      expect(r.out).toMatch(/^broker: state_dir: refusing to start/m);
    });
  }

  it('ok/a fresh state dir under a new parent is created 0700', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-fs2-'));
    mkdirSync(join(base, 'parent'), { mode: 0o755 });
    const d = await Daemon.start({ home: base, dataDir: join(base, 'parent', 'state') });
    await d.stop();
    expect((statSync(d.dataDir).mode & 0o777).toString(8)).toBe('700');
  });
});

describe('CFG-1: configuration is strict', () => {
  it('fail/unknown config key → refuse to start, naming the key', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
    const file = join(base, 'config.json');
    writeFileSync(file, JSON.stringify({ listen: '127.0.0.1:0', authDisabled: true }));
    const r = await serve(['--data', join(base, 'state'), '--config', file]);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/broker: config: invalid configuration.*authDisabled/);
  });

  it('fail/bad port range → refuse to start', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-cfg-'));
    const r = await serve(['--data', join(base, 'state'), '--port-range', '900-100']);
    expect(r.code).toBe(2);
    expect(r.out).toMatch(/portRange/);
  });
});

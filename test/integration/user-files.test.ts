/**
 * FS-5: files the CLI writes on a user's behalf cannot be redirected by another user.
 *
 * bt-mallory controls a directory the victim is told to use (a "shared project directory"): she
 * plants `key.pem -> <the victim's .bashrc>` and friends, then waits. `register --out-dir`,
 * `cert --out-dir`, `ca --out`, `backup` and `restore` must refuse such a directory with one
 * line on stderr and a non-zero exit, and never touch the victim's files. The victim is root
 * (who could write anywhere) or bt-alice (whose own files are the target).
 */
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';
import { announceSkip, runAs, unixUser, userTmp, type UnixUser } from '../helpers/users.js';

const skip = announceSkip('FS-5 attacker tests (test/integration/user-files.test.ts)');

/** The one-line refusal of DESIGN §8 for an unsafe path, naming it. */
function expectRefused(r: { code: number; stderr: string }, path: string): void {
  expect(r.code, r.stderr).toBe(2);
  expect(r.stderr).toMatch(/^broker: insecure_path: [^\n]+\n$/);
  expect(r.stderr).toContain(path);
}

describe.skipIf(skip)('FS-5: files written for a user cannot be redirected', () => {
  let d: Daemon;
  let mallory: UnixUser;
  let alice: UnixUser;
  let owner: string;
  /** The victim's own files (root's, in a private directory). */
  let victim: string;
  const cleanup: string[] = [];

  /** A file of the victim's with known content; returns its path. */
  function victimFile(name: string, dir = victim): string {
    const p = join(dir, name);
    writeFileSync(p, `# ${name} of the victim\n`, { mode: 0o644 });
    return p;
  }

  function expectUntouched(path: string): void {
    expect(readFileSync(path, 'utf8')).toBe(`# ${path.split('/').pop()} of the victim\n`);
  }

  /** As bt-mallory, for real: a world-writable directory (not sticky) with planted links. */
  async function mallorysDir(links: Record<string, string>, mode = '777'): Promise<string> {
    const dir = join(tmpdir(), `broker-fs5-shared-${Math.random().toString(36).slice(2)}`);
    cleanup.push(dir);
    const mk = await runAs(mallory, 'mkdir', ['-m', mode, dir]);
    expect(mk.code, mk.stderr).toBe(0);
    for (const [name, target] of Object.entries(links)) {
      const ln = await runAs(mallory, 'ln', ['-s', target, join(dir, name)]);
      expect(ln.code, ln.stderr).toBe(0);
    }
    return dir;
  }

  async function noService(name: string): Promise<void> {
    const r = await d.api<any>('GET', `/v1/services/${owner}/${name}`);
    expect(r.status, `${name} must not have been registered`).toBe(404);
  }

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    alice = unixUser('bt-alice');
    d = await Daemon.start();
    owner = (await d.api<any>('GET', '/v1/whoami')).body.principal.name;
    victim = mkdtempSync(join(tmpdir(), 'broker-fs5-victim-'));
    cleanup.push(victim);
  });
  afterAll(async () => {
    await d?.stop();
    for (const p of cleanup) rmSync(p, { recursive: true, force: true });
  });

  it('fail/register --out-dir in a world-writable directory of bt-mallory with planted links', async () => {
    const key = victimFile('bashrc');
    const cert = victimFile('profile');
    const ca = victimFile('authorized_keys');
    const dir = await mallorysDir({ 'key.pem': key, 'cert.pem': cert, 'ca.pem': ca });
    const r = await d.cli([
      'register',
      'fs5-web',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      dir,
    ]);
    expectRefused(r, dir);
    for (const f of [key, cert, ca]) expectUntouched(f);
    expect(readlinkSync(join(dir, 'key.pem'))).toBe(key);
    await noService('fs5-web'); // refused before anything was registered
  });

  it("fail/register --out-dir in root's own directory that bt-mallory's group can write", async () => {
    const key = victimFile('bashrc-g');
    const dir = mkdtempSync(join(tmpdir(), 'broker-fs5-group-'));
    cleanup.push(dir);
    chownSync(dir, 0, mallory.gid);
    chmodSync(dir, 0o775);
    const ln = await runAs(mallory, 'ln', ['-s', key, join(dir, 'key.pem')]);
    expect(ln.code, ln.stderr).toBe(0);
    const r = await d.cli([
      'register',
      'fs5-grp',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      dir,
    ]);
    expectRefused(r, dir);
    expect(r.stderr).toMatch(/group/);
    expectUntouched(key);
    await noService('fs5-grp');
  });

  it("fail/register --out-dir of root's own below bt-mallory's directory (an unsafe ancestor)", async () => {
    // Root's 0700 directory is fine in itself, but bt-mallory owns its parent: she can rename it
    // away and put her own directory, with links, in its place between the check and the write.
    const top = await mallorysDir({}, '755');
    const sub = join(top, 'tls');
    mkdirSync(sub, { mode: 0o700 });
    const r = await d.cli([
      'register',
      'fs5-anc',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      sub,
    ]);
    expectRefused(r, top);
    expect(r.stderr).toContain(`${top} is owned by uid ${mallory.uid}`);
    expect(execFileSync('ls', ['-A', sub], { encoding: 'utf8' })).toBe('');
    await noService('fs5-anc');
  });

  it("fail/bt-alice is the victim: mallory's link to alice's own file is not followed", async () => {
    const aliceToken = await d.addUser('bt-alice');
    const home = userTmp(alice, 'broker-fs5-alice-');
    cleanup.push(home);
    const caFile = join(home, 'ca.pem');
    writeFileSync(caFile, d.ca, { mode: 0o644 });
    const bashrc = join(home, '.bashrc');
    writeFileSync(bashrc, '# .bashrc of the victim\n', { mode: 0o644 });
    chownSync(bashrc, alice.uid, alice.gid);
    const dir = await mallorysDir({ 'key.pem': bashrc, 'cert.pem': bashrc, 'ca.pem': bashrc });
    const env = { BROKER_URL: d.url, BROKER_TOKEN: aliceToken, BROKER_CA: caFile };
    const args = ['register', 'fs5-alice', '--mode', 'https', '--tunnel', 'none'];
    const r = await runAs(alice, process.execPath, [BIN, ...args, '--out-dir', dir], { env });
    expectRefused(r, dir);
    expect(readFileSync(bashrc, 'utf8')).toBe('# .bashrc of the victim\n');

    // ok/the same command into a fresh directory of her own (under sticky /tmp) works.
    const mine = join(home, 'nb-tls');
    const ok = await runAs(alice, process.execPath, [BIN, ...args, '--out-dir', mine], { env });
    expect(ok.code, ok.stderr).toBe(0);
    expect(statSync(mine).uid).toBe(alice.uid);
    expect(statSync(mine).mode & 0o777).toBe(0o700);
    expect(statSync(join(mine, 'key.pem')).uid).toBe(alice.uid);
    expect(statSync(join(mine, 'key.pem')).mode & 0o777).toBe(0o600);
  });

  it('fail/cert --out-dir in a directory bt-mallory can write', async () => {
    const key = victimFile('bashrc-c');
    const dir = await mallorysDir({ 'key.pem': key, 'cert.pem': key });
    const r = await d.cli(['cert', '--out-dir', dir]);
    expectRefused(r, dir);
    expectUntouched(key);
  });

  it('fail/ca --out into a directory bt-mallory can write', async () => {
    const target = victimFile('bash_profile');
    const dir = await mallorysDir({ 'ca.pem': target });
    const r = await d.cli(['ca', '--out', join(dir, 'ca.pem')]);
    expectRefused(r, dir);
    expectUntouched(target);
    expect(lstatSync(join(dir, 'ca.pem')).isSymbolicLink()).toBe(true);
  });

  it('fail/backup into a directory bt-mallory can write (she could swap the file the CA key goes into)', async () => {
    const dir = await mallorysDir({});
    const r = await d.cli(['backup', '--data', d.dataDir, join(dir, 'broker.db')]);
    expectRefused(r, dir);
    expect(execFileSync('ls', ['-A', dir], { encoding: 'utf8' })).toBe('');
  });

  it("fail/restore into a state directory whose parent is bt-mallory's", async () => {
    const safe = mkdtempSync(join(tmpdir(), 'broker-fs5-bak-'));
    cleanup.push(safe);
    const b = await d.cli(['backup', '--data', d.dataDir, join(safe, 'b.db')]);
    expect(b.code, b.stderr).toBe(0);
    const dir = await mallorysDir({});
    const r = await d.cli(['restore', join(safe, 'b.db'), '--data', join(dir, 'state')]);
    expectRefused(r, dir);
    expect(execFileSync('ls', ['-A', dir], { encoding: 'utf8' })).toBe('');
  });

  it('fail/a symlinked --out-dir is refused, even one pointing at a safe directory', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-fs5-link-'));
    cleanup.push(base);
    const real = join(base, 'real');
    mkdirSync(real, { mode: 0o700 });
    symlinkSync(real, join(base, 'link'));
    const r = await d.cli([
      'register',
      'fs5-link',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      join(base, 'link'),
    ]);
    expectRefused(r, join(base, 'link'));
    expect(r.stderr).toMatch(/symbolic link/);
    expect(execFileSync('ls', ['-A', real], { encoding: 'utf8' })).toBe('');
  });

  it('ok/a fresh nested --out-dir is created 0700, key 0600, cert and CA 0644', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-fs5-fresh-'));
    cleanup.push(base);
    const dir = join(base, 'a', 'tls');
    const r = await d.cli([
      'register',
      'fs5-ok',
      '--mode',
      'https',
      '--tunnel',
      'none',
      '--out-dir',
      dir,
      '--format',
      'env',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const mode = (p: string) => statSync(p).mode & 0o777;
    expect(mode(join(base, 'a'))).toBe(0o700);
    expect(mode(dir)).toBe(0o700);
    expect(mode(join(dir, 'key.pem'))).toBe(0o600);
    expect(mode(join(dir, 'cert.pem'))).toBe(0o644);
    expect(mode(join(dir, 'ca.pem'))).toBe(0o644);
    expect(r.stdout).toContain(`BROKER_KEY_FILE=${join(dir, 'key.pem')}`);
    expect(readFileSync(join(dir, 'ca.pem'), 'utf8')).toBe(d.ca);
  });

  it('ok/ca --out into a safe directory replaces a link there instead of following it', async () => {
    const base = mkdtempSync(join(tmpdir(), 'broker-fs5-ca-'));
    cleanup.push(base);
    const target = victimFile('elsewhere');
    symlinkSync(target, join(base, 'ca.pem'));
    const r = await d.cli(['ca', '--out', join(base, 'ca.pem')]);
    expect(r.code, r.stderr).toBe(0);
    expect(lstatSync(join(base, 'ca.pem')).isFile()).toBe(true);
    expect(readFileSync(join(base, 'ca.pem'), 'utf8')).toBe(d.ca);
    expectUntouched(target);
  });
});

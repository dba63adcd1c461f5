/**
 * Real second and third Unix users for the tests where another user on the node is the threat
 * (issue 11). `useradd` creates them once per machine (reused when they exist); `runuser -u NAME`
 * runs a real process with that UID. The tests run as root in CI; elsewhere the suites that need
 * users skip and print why (never silently).
 *
 * The users: `bt-alice` (an owner), `bt-mallory` (the attacker), `bt-carol` (a third user).
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface UnixUser {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/** Why users cannot be switched here, or null when they can. */
export const noUsersReason: string | null =
  process.getuid?.() !== 0
    ? 'tests with other Unix users need root (useradd, runuser); run them as root, as CI does'
    : !existsSync('/usr/sbin/useradd') || !existsSync('/usr/sbin/runuser')
      ? 'useradd/runuser are missing (Debian: passwd, util-linux)'
      : null;

/** Print the reason once per test file when the multi-user tests are skipped. */
export function announceSkip(what: string): boolean {
  if (noUsersReason) console.warn(`SKIPPED ${what}: ${noUsersReason}`);
  return noUsersReason !== null;
}

function lookup(name: string): UnixUser | null {
  try {
    const line = execFileSync('getent', ['passwd', name], { encoding: 'utf8' }).trim();
    const f = line.split(':');
    return { name, uid: Number(f[2]), gid: Number(f[3]), home: f[5]! };
  } catch {
    return null;
  }
}

/** The user `name`, created with a home directory and its own group on first use. */
export function unixUser(name: 'bt-alice' | 'bt-mallory' | 'bt-carol' | (string & {})): UnixUser {
  const found = lookup(name);
  if (found) return found;
  try {
    execFileSync('useradd', ['-m', '-U', '-s', '/bin/bash', name], { stdio: 'pipe' });
  } catch (err) {
    // Another test file may have created it at the same moment.
    if (!lookup(name)) throw err;
  }
  return lookup(name)!;
}

/** A fresh 0700 directory owned by `user` (under the system temp dir). */
export function userTmp(user: UnixUser, prefix = 'broker-user-'): string {
  const dir = mkdtempSync(join(tmpdir(), `${prefix}${user.name}-`));
  chownSync(dir, user.uid, user.gid);
  return dir;
}

/**
 * Spawn `cmd args` as `user`, with exactly `env` (plus HOME and PATH) as its environment.
 * runuser resets HOME and USER for the target; `env -i` makes the environment explicit.
 */
export function spawnAs(
  user: UnixUser,
  cmd: string,
  args: string[],
  opts: { env?: Record<string, string | undefined>; cwd?: string } & Pick<
    SpawnOptions,
    'stdio'
  > = {},
): ChildProcess {
  const env: Record<string, string> = {
    HOME: user.home,
    PATH: '/usr/local/bin:/usr/bin:/bin',
    USER: user.name,
    LOGNAME: user.name,
  };
  for (const [k, v] of Object.entries(opts.env ?? {})) if (v !== undefined) env[k] = v;
  const assignments = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  // Its own process group: runuser waits for the command in a child, so killing runuser alone
  // would leave the command running (see killAs).
  return spawn('runuser', ['-u', user.name, '--', 'env', '-i', ...assignments, cmd, ...args], {
    cwd: opts.cwd ?? '/',
    stdio: opts.stdio ?? ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
}

/** Kill a process started by spawnAs and everything in its process group. */
export function killAs(p: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (p.pid === undefined || p.exitCode !== null || p.signalCode !== null) return;
  try {
    process.kill(-p.pid, signal);
  } catch {
    p.kill(signal); // not a group leader (spawned without spawnAs)
  }
}

/** Run `cmd args` as `user` to completion: exit code, stdout, stderr. */
export function runAs(
  user: UnixUser,
  cmd: string,
  args: string[],
  opts: {
    env?: Record<string, string | undefined>;
    input?: string;
    timeoutMs?: number;
    cwd?: string;
  } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawnAs(user, cmd, args, opts);
    let stdout = '';
    let stderr = '';
    p.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    p.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => killAs(p), opts.timeoutMs ?? 30_000);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    p.stdin!.on('error', () => undefined);
    p.stdin!.end(opts.input ?? '');
  });
}

/**
 * A small Node program run as `user`: `source` is an ES module body (top-level await allowed)
 * that may print JSON on stdout. Used for attacker processes (bind a port, connect, listen).
 */
export function nodeAs(
  user: UnixUser,
  source: string,
  opts: { env?: Record<string, string | undefined>; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return runAs(user, process.execPath, ['--input-type=module', '-e', source], opts);
}

/** `nodeAs`, but left running: the caller reads its output and kills it. */
export function spawnNodeAs(
  user: UnixUser,
  source: string,
  opts: { env?: Record<string, string | undefined> } = {},
): ChildProcess {
  return spawnAs(user, process.execPath, ['--input-type=module', '-e', source], opts);
}

/** Wait for a line on a child's stdout that satisfies `test`; resolves with it. */
export function lineFrom(
  p: ChildProcess,
  test: (line: string) => boolean,
  ms = 15_000,
): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    const timer = setTimeout(
      () => reject(new Error(`no matching line in ${ms} ms; stdout: ${buf}\nstderr: ${err}`)),
      ms,
    );
    p.stderr?.on('data', (c: Buffer) => (err += c.toString()));
    p.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      for (const line of buf.split('\n'))
        if (test(line)) {
          clearTimeout(timer);
          resolve(line);
          return;
        }
    });
    p.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before a matching line; stdout: ${buf}\nstderr: ${err}`));
    });
  });
}

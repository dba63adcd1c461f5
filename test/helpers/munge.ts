/**
 * Real MUNGE for the identity tests (issue 12; COMPONENTS.md "MUNGE"): the system munged (the
 * one every node of a cluster runs; started here when it is not) and private munged instances
 * with their own socket — to stop, restart or freeze one without touching the others, or to
 * play a node of another cluster (its own key). Everything runs as the `munge` user, as on a
 * cluster. Without root or the munge package the suites skip and print why.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SYSTEM_SOCKET = '/run/munge/munge.socket.2';

function works(socket: string): boolean {
  const enc = spawnSync('munge', ['-n', '-S', socket], { encoding: 'utf8', timeout: 5000 });
  if (enc.status !== 0) return false;
  const dec = spawnSync('unmunge', ['-S', socket], {
    input: enc.stdout,
    encoding: 'utf8',
    timeout: 5000,
  });
  return dec.status === 0;
}

function startSystemMunged(): void {
  execFileSync('install', ['-d', '-o', 'munge', '-g', 'munge', '-m', '0755', '/run/munge']);
  spawnSync('runuser', ['-u', 'munge', '--', '/usr/sbin/munged'], { timeout: 10_000 });
}

/** Why MUNGE cannot be used here, or null when the system munged answers (started if need be). */
export const noMungeReason: string | null = (() => {
  if (process.getuid?.() !== 0) return 'MUNGE tests need root (to run munged as munge, and users)';
  if (!existsSync('/usr/sbin/munged') || !existsSync('/usr/bin/unmunge'))
    return 'munge is not installed (Debian: apt-get install -y munge; .ci/run does this)';
  if (!existsSync('/etc/munge/munge.key')) return 'no /etc/munge/munge.key';
  if (!works(SYSTEM_SOCKET)) startSystemMunged();
  if (!works(SYSTEM_SOCKET)) return `munged does not answer on ${SYSTEM_SOCKET} after starting it`;
  return null;
})();

export function announceMungeSkip(what: string): boolean {
  if (noMungeReason) console.warn(`SKIPPED ${what}: ${noMungeReason}`);
  return noMungeReason !== null;
}

/** A munged of its own: its socket, key (the cluster's unless `foreignKey`), pid and log. */
export class PrivateMunged {
  readonly dir: string;
  readonly socket: string;
  private readonly key: string;

  constructor(opts: { foreignKey?: boolean } = {}) {
    this.dir = mkdtempSync(join(tmpdir(), 'broker-munged-'));
    chmodSync(this.dir, 0o755);
    chownSync(this.dir, uidOf('munge'), gidOf('munge'));
    this.socket = join(this.dir, 'sock');
    this.key = opts.foreignKey ? join(this.dir, 'key') : '/etc/munge/munge.key';
    if (opts.foreignKey) {
      execFileSync('dd', ['if=/dev/urandom', `of=${this.key}`, 'bs=128', 'count=1'], {
        stdio: 'ignore',
      });
      chownSync(this.key, uidOf('munge'), gidOf('munge'));
      chmodSync(this.key, 0o600);
    }
  }

  /** Start (or restart after stop): a fresh process, so an empty replay cache. */
  start(): this {
    const r = spawnSync(
      'runuser',
      [
        '-u',
        'munge',
        '--',
        '/usr/sbin/munged',
        `--socket=${this.socket}`,
        `--key-file=${this.key}`,
        `--pid-file=${join(this.dir, 'pid')}`,
        `--log-file=${join(this.dir, 'log')}`,
        `--seed-file=${join(this.dir, 'seed')}`,
      ],
      { encoding: 'utf8', timeout: 10_000 },
    );
    if (r.status !== 0) throw new Error(`munged failed to start: ${r.stderr}`);
    return this;
  }

  get pid(): number {
    return Number(readFileSync(join(this.dir, 'pid'), 'utf8').trim());
  }

  /** `munged --stop`: it removes its socket on the way out. */
  stop(): void {
    spawnSync(
      'runuser',
      ['-u', 'munge', '--', '/usr/sbin/munged', '--stop', `--socket=${this.socket}`],
      {
        timeout: 10_000,
      },
    );
  }

  /** Freeze it (SIGSTOP): connections are accepted by the kernel, nothing answers. */
  freeze(): void {
    process.kill(this.pid, 'SIGSTOP');
  }

  thaw(): void {
    process.kill(this.pid, 'SIGCONT');
  }

  /** A credential from this munged, as root (or as `user` via runuser), `munge -n ARGS`. */
  credential(args: string[] = [], user?: string): string {
    return mungeCredential([...args, '-S', this.socket], user);
  }

  cleanup(): void {
    try {
      this.thaw();
    } catch {
      /* not running */
    }
    this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** `munge -n ARGS` as root, or as `user`; the credential. */
export function mungeCredential(args: string[] = [], user?: string): string {
  const cmd = user ? 'runuser' : 'munge';
  const argv = user ? ['-u', user, '--', 'munge', '-n', ...args] : ['-n', ...args];
  return execFileSync(cmd, argv, { encoding: 'utf8', timeout: 10_000 }).trim();
}

function uidOf(name: string): number {
  return Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
}

function gidOf(name: string): number {
  return Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
}

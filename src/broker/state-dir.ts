/**
 * The state directory and the secret files in it (SECURITY.md FS-1, FS-2, DUR-7).
 *
 * Files are created with their final mode (process umask 077 plus an explicit mode on open) and
 * never chmod'ed afterwards. The broker refuses to start on a state dir or secret file that is a
 * symlink, owned by another uid, or reachable by group/other.
 */
import {
  unlinkSync,
  existsSync,
  closeSync,
  constants,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { checkSafeDirectory } from '../host/safe-files.js';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';

export class StateDirError extends Error {
  override name = 'StateDirError';
}

const uid = () => (typeof process.getuid === 'function' ? process.getuid() : -1);

function describeMode(mode: number): string {
  return (mode & 0o777).toString(8).padStart(4, '0');
}

/** Check one existing path; `dir` selects directory rules. Missing paths pass. */
export function checkPrivate(path: string, kind: 'dir' | 'file'): void {
  let st;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (st.isSymbolicLink()) {
    throw new StateDirError(
      `refusing to start: ${path} is a symbolic link; point --data at the real directory`,
    );
  }
  if (kind === 'dir' && !st.isDirectory())
    throw new StateDirError(`refusing to start: ${path} is not a directory`);
  if (kind === 'file' && !st.isFile())
    throw new StateDirError(`refusing to start: ${path} is not a regular file`);
  if (uid() !== -1 && st.uid !== uid()) {
    throw new StateDirError(
      `refusing to start: ${path} is owned by uid ${st.uid}, not by this user (uid ${uid()})`,
    );
  }
  if ((st.mode & 0o077) !== 0) {
    const want = kind === 'dir' ? '700' : '600';
    throw new StateDirError(
      `refusing to start: ${path} is accessible by group/other (mode ${describeMode(st.mode)}); run: chmod ${want} ${path}`,
    );
  }
}

/** The files of a state directory. Names are fixed; nothing user-supplied becomes a path. */
export const STATE_FILES = {
  db: 'broker.db',
  caKey: 'ca-key.pem',
  caCert: 'ca.pem',
  apiKey: 'api-key.pem',
  apiCert: 'api-cert.pem',
  hostKey: 'ssh-host-ed25519',
  credentials: 'credentials.json',
  lock: 'daemon.sock',
} as const;

/** Secret files (and the database with its WAL and shm) that must be 0600. */
export const SECRET_FILES = ['db', 'caKey', 'apiKey', 'hostKey', 'credentials'] as const;

export class StateDir {
  private constructor(readonly path: string) {}

  /** Create (0700) or check the directory and every secret file in it. */
  static open(path: string): StateDir {
    process.umask(0o077);
    checkPrivate(path, 'dir');
    mkdirSync(path, { recursive: true, mode: 0o700 });
    checkPrivate(path, 'dir');
    // The directories above it too (FS-5): a state dir in a directory another user can write
    // could be renamed away and replaced between two starts.
    try {
      checkSafeDirectory(dirname(path));
    } catch (err) {
      throw new StateDirError((err as Error).message);
    }
    const dir = new StateDir(path);
    for (const f of SECRET_FILES) checkPrivate(dir.file(f), 'file');
    checkPrivate(dir.file('db') + '-wal', 'file');
    checkPrivate(dir.file('db') + '-shm', 'file');
    return dir;
  }

  /** Check an existing state directory without creating anything (tools that read it). */
  static check(path: string): StateDir {
    if (!existsSync(path)) {
      throw new StateDirError(`${path} does not exist; pass --data DIR of the broker`);
    }
    checkPrivate(path, 'dir');
    const dir = new StateDir(path);
    for (const f of SECRET_FILES) checkPrivate(dir.file(f), 'file');
    return dir;
  }

  file(name: keyof typeof STATE_FILES): string {
    return join(this.path, STATE_FILES[name]);
  }

  /** Write a file atomically with mode 0600 (temp file created 0600, fsync, rename). */
  writePrivate(name: keyof typeof STATE_FILES, content: string): void {
    const target = this.file(name);
    const tmp = join(this.path, `.${STATE_FILES[name]}.${randomBytes(6).toString('hex')}.tmp`);
    const fd = openSync(
      tmp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      writeSync(fd, content);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
  }

  /**
   * Take the single-daemon lock: a Unix socket in the state dir. A live daemon answers on it; a
   * stale socket left by `kill -9` refuses connections and is replaced. (DUR-7)
   */
  async lock(): Promise<Server> {
    const path = this.file('lock');
    const listen = () =>
      new Promise<Server>((resolvePromise, reject) => {
        const server = createServer((s) => s.end());
        server.once('error', reject);
        server.listen(path, () => {
          server.off('error', reject);
          server.unref();
          resolvePromise(server);
        });
      });
    try {
      return await listen();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
    const alive = await new Promise<boolean>((res) => {
      const c = createConnection(path);
      c.once('connect', () => {
        c.destroy();
        res(true);
      });
      c.once('error', () => res(false));
    });
    if (alive) {
      throw new StateDirError(
        `refusing to start: another broker is already running on ${this.path}`,
      );
    }
    unlinkSync(path);
    return listen();
  }
}

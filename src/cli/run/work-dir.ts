/**
 * The private working directory of one `broker run` (SECURITY.md LOC-3, FS-1, FS-5): the app's
 * Unix socket, the isolation relay's socket and the 0600 credential files live here. It is made
 * with mkdtemp (0700, a fresh unpredictable name) and checked before use: a directory, not a
 * symlink, owned by us, mode exactly 0700 — so no other user can reach a socket in it, or swap it.
 */
import { lstatSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { BrokerError } from '../../protocol/errors.js';

/** sun_path is 108 bytes on Linux, with the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export interface WorkDir {
  /** The directory (0700, ours). */
  path: string;
  /** Where the app (or the isolation relay) listens: `{app_socket}`. */
  socket: string;
  /** Remove the directory and everything in it. */
  remove(): void;
}

/** Throws unless `dir` is a real directory of ours with mode 0700. */
export function assertPrivateDir(dir: string): void {
  const st = lstatSync(dir);
  const uid = process.getuid?.();
  const problem = !st.isDirectory()
    ? 'is not a directory (or is a symlink)'
    : uid !== undefined && st.uid !== uid
      ? `is owned by UID ${st.uid}, not by you (UID ${uid})`
      : (st.mode & 0o777) !== 0o700
        ? `has mode ${(st.mode & 0o777).toString(8)}, not 700`
        : null;
  if (problem)
    throw new BrokerError(
      'forbidden',
      `the working directory ${dir} ${problem}; another user could reach the app there — set TMPDIR to a directory of your own`,
    );
}

/**
 * Candidate parents, best first: $XDG_RUNTIME_DIR (per-user, 0700, a tmpfs) when it is a real
 * directory of ours, then $TMPDIR (or the system default), then /tmp when the others would make
 * the socket path longer than a Unix socket path may be.
 */
function parents(env: NodeJS.ProcessEnv): string[] {
  const out: string[] = [];
  const xdg = env.XDG_RUNTIME_DIR;
  if (xdg && isAbsolute(xdg)) {
    try {
      assertPrivateDir(xdg);
      out.push(xdg);
    } catch {
      /* not usable: fall through to TMPDIR */
    }
  }
  out.push(env.TMPDIR && isAbsolute(env.TMPDIR) ? env.TMPDIR : tmpdir(), '/tmp');
  return out;
}

/** Make and check the working directory. */
export function makeWorkDir(env: NodeJS.ProcessEnv): WorkDir {
  for (const parent of parents(env)) {
    // mkdtemp's name is 22+ bytes; the socket name adds 9.
    if (Buffer.byteLength(join(parent, 'broker-run-XXXXXX', 'app.sock')) > MAX_SOCKET_PATH_BYTES)
      continue;
    const path = mkdtempSync(join(parent, 'broker-run-'));
    try {
      assertPrivateDir(path);
    } catch (err) {
      rmSync(path, { recursive: true, force: true });
      throw err;
    }
    return {
      path,
      socket: join(path, 'app.sock'),
      remove: () => rmSync(path, { recursive: true, force: true }),
    };
  }
  throw new BrokerError(
    'validation_failed',
    `no temporary directory gives a Unix socket path under ${MAX_SOCKET_PATH_BYTES} bytes; set TMPDIR to a short path`,
  );
}

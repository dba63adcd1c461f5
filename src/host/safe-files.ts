/**
 * Files written and read on a user's behalf, safe from the other users of the node (SECURITY.md
 * FS-5). The model is OpenSSH's: `safe_path()` (misc.c) trusts a path only when the file's
 * directory and every ancestor up to `/` are owned by the user or root and writable by nobody
 * else, because whoever can write a directory can swap what is in it — plant `key.pem ->
 * ~/.bashrc`, or rename a directory away and put their own in its place between a check and a
 * write. `sshkey_perm_ok()` (authfile.c) refuses a private key others can read. Here:
 *
 * - {@link checkSafeDirectory}: the `safe_path()` walk over a directory and its ancestors;
 * - {@link ensurePrivateDirectory}: an output directory, created 0700 or checked, never a link;
 * - {@link writeFileSafely}: a new file in a checked directory, created with its final mode
 *   (`O_CREAT|O_EXCL|O_NOFOLLOW`), fsync'ed and renamed over the target — `rename(2)` replaces a
 *   symbolic link itself, never the file it points to;
 * - {@link readPrivateFile}: a secret file (credentials) only if only its owner can read it.
 *
 * A world-writable directory with the sticky bit (`/tmp`) is allowed as an ancestor: there only
 * a file's owner may rename or remove it, so the child on the path, which must be the caller's
 * or root's, cannot be swapped. For the same reason {@link writeFileSafely} may write straight
 * into one (`broker ca --out /tmp/ca.pem`): the renamed file is the caller's. Every refusal is a {@link BrokerError} `insecure_path` whose
 * message names the offending path and the fix. On a platform without Unix user ids
 * (`process.getuid` missing) the ownership rules cannot apply and the checks are skipped.
 */
import {
  closeSync,
  constants,
  fstatSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join, resolve } from 'node:path';
import { BrokerError } from '../protocol/errors.js';

const S_ISVTX = 0o1000;

/** The caller's uid, or undefined where there are none (Windows). */
function callerUid(): number | undefined {
  return typeof process.getuid === 'function' ? process.getuid() : undefined;
}

function octal(mode: number): string {
  return (mode & 0o7777).toString(8).padStart(4, '0');
}

function insecure(message: string): BrokerError {
  return new BrokerError('insecure_path', message);
}

/** `group`, `other` or `group and other`, for the write (0o022) or read/write (0o077) bits. */
function who(mode: number, bits: number): string {
  const g = (mode & bits & 0o070) !== 0;
  const o = (mode & bits & 0o007) !== 0;
  return g && o ? 'group and other' : g ? 'group' : 'other';
}

/** lstat, or null when nothing is there. */
function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/**
 * Check one directory of the walk. `child` is the component below it on the path (already
 * checked: the caller's or root's), or null for the directory the walk started from.
 */
function checkComponent(
  path: string,
  st: Stats,
  uid: number,
  child: string | null,
  stickyLeafOk: boolean,
): void {
  if (st.isSymbolicLink()) {
    // realpath() resolved every link; this one was planted after it, by someone who can write
    // the parent (which the walk refuses too), but say what was found.
    throw insecure(`${path} was replaced by a symbolic link while being checked`);
  }
  if (!st.isDirectory()) throw insecure(`${path} is not a directory`);
  if (st.uid !== uid && st.uid !== 0) {
    throw insecure(
      `${path} is owned by uid ${st.uid}, not by you (uid ${uid}) or root: its owner can ` +
        `replace what is in it; use a directory of your own`,
    );
  }
  if ((st.mode & 0o022) === 0) return;
  if ((st.mode & S_ISVTX) !== 0 && (child !== null || stickyLeafOk)) return;
  // A sticky directory is shared on purpose (/tmp): never advise a chmod of it.
  const fix =
    (st.mode & S_ISVTX) !== 0
      ? `use a directory of your own in it (mkdir -m 700 ${join(path, 'DIR')})`
      : st.uid === uid
        ? `run: chmod go-w ${path}`
        : 'use a directory only you can write';
  throw insecure(
    `${path} is writable by ${who(st.mode, 0o022)} (mode ${octal(st.mode)}): anyone who can ` +
      `write it can replace what is in it; ${fix}`,
  );
}

/** realpath + the walk; `stickyLeafOk` lets the start itself be a sticky shared directory. */
function safeDirectory(dir: string, stickyLeafOk: boolean): string {
  let real: string;
  try {
    real = realpathSync(resolve(dir));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR')
      throw new BrokerError('validation_failed', `directory ${dir} does not exist`);
    throw err;
  }
  const uid = callerUid();
  if (uid === undefined) return real;
  let child: string | null = null;
  for (let p = real; ; p = dirname(p)) {
    checkComponent(p, lstatSync(p), uid, child, stickyLeafOk);
    if (p === dirname(p)) break;
    child = p;
  }
  return real;
}

/**
 * OpenSSH's `safe_path()` for a directory: `dir` (symbolic links in it resolved) and every
 * ancestor up to `/` must be directories owned by the caller or root and not writable by group
 * or other — except a sticky directory such as `/tmp` *above* `dir`, whose child on the path is
 * then the caller's or root's (checked by the same walk). `dir` itself may not be a shared
 * directory, sticky or not.
 *
 * @param dir an existing directory (relative paths resolve against the working directory).
 * @returns the real path of `dir`, the one that was checked: write there, not through `dir`.
 * @throws BrokerError `insecure_path` naming the first unsafe directory and the fix;
 *   `validation_failed` when `dir` does not exist.
 */
export function checkSafeDirectory(dir: string): string {
  return safeDirectory(dir, false);
}

/**
 * An output directory (`--out-dir`): created with mode 0700 when missing — each missing level
 * by one `mkdir` with its final mode once its parent passed {@link checkSafeDirectory}, never
 * chmod'ed after — else checked like {@link checkSafeDirectory}. A symbolic link is refused
 * (point at the real directory).
 *
 * @returns the real path of the directory.
 * @throws BrokerError `insecure_path` for a link, a non-directory, or an unsafe directory or
 *   ancestor, naming it.
 */
export function ensurePrivateDirectory(dir: string): string {
  const missing: string[] = [];
  let p = resolve(dir);
  let st = lstatOrNull(p);
  while (st === null) {
    missing.unshift(basename(p));
    p = dirname(p);
    st = lstatOrNull(p);
  }
  if (st.isSymbolicLink())
    throw insecure(`${p} is a symbolic link: give the real directory (${realpathOr(p)}) instead`);
  if (!st.isDirectory()) throw insecure(`${p} exists and is not a directory`);
  let real = checkSafeDirectory(p);
  for (const name of missing) {
    real = join(real, name);
    try {
      mkdirSync(real, { mode: 0o700 });
    } catch (err) {
      // Only the caller or root can write the parent: if someone made it meanwhile, the final
      // check decides.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      if (lstatSync(real).isSymbolicLink()) throw insecure(`${real} is a symbolic link`);
    }
  }
  return checkSafeDirectory(real);
}

function realpathOr(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return 'it does not resolve';
  }
}

/**
 * Write `content` to `path` so that no other user can redirect or read it: the directory must
 * pass {@link checkSafeDirectory} (or be a sticky shared directory such as `/tmp` under a safe
 * path: there the new file is the caller's and nobody else may replace it); a temporary file is
 * created next to the target with `O_CREAT|O_EXCL|O_NOFOLLOW` and `mode` (so the file never
 * exists with looser permissions), written, fsync'ed, then renamed over `path`. An existing
 * `path` that is a symbolic link is replaced, not followed.
 *
 * @param mode the file's permissions, e.g. `0o600` for a key, `0o644` for a certificate (the
 *   umask may narrow them, never widen them).
 * @returns the real path written.
 * @throws BrokerError `insecure_path` when the directory or an ancestor is unsafe, `path` is a
 *   directory, or another user's file holds the name in a sticky directory;
 *   `validation_failed` when the directory does not exist.
 */
export function writeFileSafely(path: string, content: string | Uint8Array, mode: number): string {
  const abs = resolve(path);
  const dir = safeDirectory(dirname(abs), true);
  const target = join(dir, basename(abs));
  if (lstatOrNull(target)?.isDirectory()) throw insecure(`${target} is a directory`);
  const tmp = join(dir, `.${basename(abs)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(
    tmp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    mode,
  );
  try {
    try {
      const buf = typeof content === 'string' ? Buffer.from(content, 'utf8') : content;
      for (let off = 0; off < buf.length;) off += writeSync(fd, buf, off, buf.length - off);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
  } catch (err) {
    rmSync(tmp, { force: true });
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EPERM' || code === 'EACCES') {
      // The sticky bit at work: the name belongs to another user's file.
      throw insecure(
        `${target} exists and belongs to another user (uid ${lstatOrNull(target)?.uid}); ` +
          `write to a directory of your own`,
      );
    }
    throw err;
  }
  fsyncDirectory(dir);
  return target;
}

/** Make a rename durable (best effort: some file systems refuse fsync on a directory). */
function fsyncDirectory(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    fsyncSync(fd);
  } catch {
    /* durability only; the file is written */
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Read a file that holds a secret (a credentials file with a token), the way ssh treats a
 * private key (`sshkey_perm_ok`): it must be owned by the caller or root and give group and
 * other no access at all (mode 0600 or stricter). The checks apply to the opened file itself
 * (`fstat`), so a symbolic link is judged by what it points to and cannot be swapped between
 * check and read.
 *
 * @returns the content (UTF-8), or null when the file does not exist or cannot be opened.
 * @throws BrokerError `insecure_path` naming the file and the fix (`chmod 600 <path>`).
 */
export function readPrivateFile(path: string): string | null {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch {
    return null;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw insecure(`${path} is not a regular file`);
    const uid = callerUid();
    if (uid !== undefined) {
      if (st.uid !== uid && st.uid !== 0) {
        throw insecure(
          `${path} holds a token and is owned by uid ${st.uid}, not by you (uid ${uid}): ` +
            `another user's file could point you at their broker; run the command as its ` +
            `owner, or replace it with a copy of your own (mode 0600)`,
        );
      }
      if ((st.mode & 0o077) !== 0) {
        throw insecure(
          `${path} holds a token and is accessible by ${who(st.mode, 0o077)} ` +
            `(mode ${octal(st.mode)}); run: chmod 600 ${path}`,
        );
      }
    }
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}

/**
 * Read a file that is public but must not be someone else's choice — the site client config
 * (`/etc/broker/client.json`) or a CA certificate it names, which decide which broker a user
 * trusts. Like OpenSSH's check of `~/.ssh/config` and `known_hosts`, plus the `safe_path()` walk:
 * the file must be owned by the caller or root and writable by nobody else, and its directory
 * and every ancestor must pass {@link checkSafeDirectory} (a sticky directory such as /tmp is
 * fine, the file in it being the caller's or root's). Checks apply to the opened file (`fstat`).
 *
 * @returns the content (UTF-8), or null when the file does not exist.
 * @throws BrokerError `insecure_path` naming the file or directory and the fix.
 */
export function readTrustedFile(path: string): string | null {
  const abs = resolve(path);
  let fd: number;
  try {
    fd = openSync(abs, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return null;
    throw insecure(`cannot read ${abs}: ${(err as Error).message}`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw insecure(`${abs} is not a regular file`);
    const uid = callerUid();
    if (uid !== undefined) {
      if (st.uid !== uid && st.uid !== 0)
        throw insecure(
          `${abs} is owned by uid ${st.uid}, not by you (uid ${uid}) or root: its owner could ` +
            `point you at a broker of their choosing; use a file of your own or the site's`,
        );
      if ((st.mode & 0o022) !== 0)
        throw insecure(
          `${abs} is writable by ${who(st.mode, 0o022)} (mode ${octal(st.mode)}): anyone who ` +
            `can write it chooses which broker you trust; ` +
            (st.uid === uid ? `run: chmod go-w ${abs}` : 'ask its owner to run chmod go-w'),
        );
      safeDirectory(dirname(realpathSync(abs)), true);
    }
    return readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
}

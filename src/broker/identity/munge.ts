/**
 * MUNGE credentials, decoded by the site's own MUNGE (https://dun.github.io/munge/). munged
 * checks the credential's MAC with the cluster's `munge.key`, its time to live and its own replay
 * cache; the UID and GID in it are the caller's, as the kernel told the encoding munged.
 *
 * Two ways to ask munged, the first preferred:
 * - **libmunge, in a helper process**: a small `python3 -I -S` program calls `munge_decode()` of
 *   `libmunge.so.2` through ctypes (stdlib) for one credential at a time, over pipes — about
 *   0.1 ms a decode, no process per login. Up to `maxConcurrent` helpers; one whose munged does
 *   not answer within the deadline is killed and replaced. (No npm binding for libmunge exists.)
 * - **`unmunge`**, spawned per credential with it on stdin (no shell; `-N -k
 *   STATUS,UID,GID,ENCODE_TIME,TTL`), when the helper cannot run (no python3, no libmunge) —
 *   the same answers, a process each (≈ 2 ms and a fork of the daemon).
 * Either way the decode never blocks the event loop: a slow or stopped munged costs a waiting
 * promise, not a stalled broker (ID-1). Status codes are munge.h `munge_err_t` (unmunge exits
 * with them).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { BrokerError } from '../../protocol/errors.js';

/** What a credential says about its encoder. */
export interface MungeCredential {
  uid: number;
  gid: number;
  /** When it was encoded, and how long it lives (epoch seconds; seconds). */
  encodeTime: number;
  ttl: number;
}

/** MUNGE error codes (munge.h) the broker tells apart. */
const EMUNGE_SOCKET = 6;
const EMUNGE_TIMEOUT = 7;
const EMUNGE_CRED_EXPIRED = 15;
const EMUNGE_CRED_REWOUND = 16;
const EMUNGE_CRED_REPLAYED = 17;
const EMUNGE_CRED_UNAUTHORIZED = 18;

/** Why a credential was refused, as `details.reason` of the 401 (docs/errors.md). */
export type MungeRefusal = 'munge_invalid' | 'munge_expired' | 'munge_replayed';

export function refused(reason: MungeRefusal, message: string): BrokerError {
  return new BrokerError('unauthenticated', message, { details: { reason } });
}

export interface MungeDecoderOptions {
  /** libmunge for the in-process-like helper (default `libmunge.so.2`); null: always unmunge. */
  library?: string | null;
  /** The decoder binary (default `unmunge`, found on PATH), when libmunge cannot be used. */
  unmunge: string;
  /** munged's socket; null: the decoder's default. */
  socket: string | null;
  maxConcurrent: number;
  timeoutMs: number;
}

/** A credential is printable base64 in MUNGE's armour: `MUNGE:…:`. */
const CREDENTIAL_RE = /^MUNGE:[A-Za-z0-9+/=]{16,8192}:$/;

/**
 * The libmunge helper. Arguments: LIBRARY SOCKET (`-`: libmunge's default). Prints `ready` (or
 * `unavailable REASON` and exits); then for each request line `ID CREDENTIAL` answers
 * `ID STATUS UID GID ENCODE_TIME TTL`. munge.h: MUNGE_OPT_TTL 4, MUNGE_OPT_ENCODE_TIME 6,
 * MUNGE_OPT_SOCKET 8; a NULL buf/len discards any payload.
 */
const HELPER = String.raw`
import ctypes, sys
lib, sock = sys.argv[1], sys.argv[2]
try:
    m = ctypes.CDLL(lib)
    m.munge_ctx_create.restype = ctypes.c_void_p
    m.munge_ctx_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
    m.munge_ctx_get.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    U = ctypes.POINTER(ctypes.c_uint)
    m.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, U, U]
    ctx = m.munge_ctx_create()
    if not ctx or (sock != "-" and m.munge_ctx_set(ctx, 8, sock.encode()) != 0):
        raise OSError("cannot make a MUNGE context")
except (OSError, AttributeError) as e:
    print("unavailable", e, flush=True)
    sys.exit(0)
print("ready", flush=True)
for line in sys.stdin:
    ident, _, cred = line.strip().partition(" ")
    uid, gid, t, ttl = ctypes.c_uint(0), ctypes.c_uint(0), ctypes.c_long(0), ctypes.c_int(0)
    err = m.munge_decode(cred.encode("ascii", "replace"), ctx, None, None, ctypes.byref(uid), ctypes.byref(gid))
    if err == 0:
        m.munge_ctx_get(ctx, 6, ctypes.byref(t))
        m.munge_ctx_get(ctx, 4, ctypes.byref(ttl))
    sys.stdout.write("%s %d %d %d %d %d\n" % (ident, err, uid.value, gid.value, t.value, ttl.value))
    sys.stdout.flush()
`;

interface Decoded {
  status: number;
  uid: number;
  gid: number;
  encodeTime: number;
  ttl: number;
}

/** One helper process: one credential at a time. */
class LibmungeWorker {
  readonly ready: Promise<boolean>;
  private readonly child: ChildProcess;
  private pending: ((d: Decoded | null) => void) | null = null;
  private seq = 0;
  dead = false;

  constructor(library: string, socket: string | null) {
    this.child = spawn('python3', ['-I', '-S', '-c', HELPER, library, socket ?? '-'], {
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    this.child.stdin!.on('error', () => this.kill());
    let started = false;
    let buf = '';
    this.ready = new Promise((resolve) => {
      this.child.once('error', () => (this.kill(), resolve(false)));
      this.child.once('exit', () => (this.kill(), resolve(false)));
      this.child.stdout!.on('data', (c: Buffer) => {
        buf += c.toString('latin1');
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          const l = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!started) {
            started = true;
            resolve(l === 'ready');
            if (l !== 'ready') this.kill();
            continue;
          }
          const f = l.split(' ').map(Number);
          if (f[0] !== this.seq || f.length !== 6) continue; // a late answer to a killed request
          const done = this.pending;
          this.pending = null;
          done?.({ status: f[1]!, uid: f[2]!, gid: f[3]!, encodeTime: f[4]!, ttl: f[5]! });
        }
      });
    });
  }

  /** The answer, or null when the helper died meanwhile. */
  decode(credential: string): Promise<Decoded | null> {
    return new Promise((resolve) => {
      if (this.dead) return resolve(null);
      this.pending = resolve;
      this.child.stdin!.write(`${++this.seq} ${credential}\n`);
    });
  }

  kill(): void {
    if (this.dead) return;
    this.dead = true;
    this.child.kill('SIGKILL');
    const done = this.pending;
    this.pending = null;
    done?.(null);
  }
}

export class MungeDecoder {
  private running = 0;
  private readonly queue: (() => void)[] = [];
  private readonly idle: LibmungeWorker[] = [];
  private readonly all = new Set<LibmungeWorker>();
  private closed = false;
  /** null: not known yet; false: libmunge cannot be used here, unmunge is spawned instead. */
  private libmunge: boolean | null;

  constructor(private readonly opts: MungeDecoderOptions) {
    this.libmunge = opts.library === null ? false : null;
    // The first helper starts now, so the first login does not wait for Python.
    if (this.libmunge !== false) {
      const w = this.spawnWorker();
      void w.ready.then((ok) => {
        this.libmunge = ok;
        if (ok && !this.closed) this.idle.push(w);
        else this.retire(w);
      });
    }
  }

  /** Decodes in flight now, and waiting; and how they are made. */
  get load(): { running: number; waiting: number; backend: 'libmunge' | 'unmunge' | 'starting' } {
    return {
      running: this.running,
      waiting: this.queue.length,
      backend: this.libmunge === null ? 'starting' : this.libmunge ? 'libmunge' : 'unmunge',
    };
  }

  /** Stop the helpers (a decode in flight then fails with identity_unavailable). */
  close(): void {
    this.closed = true;
    for (const w of this.all) w.kill();
    this.all.clear();
    this.idle.length = 0;
  }

  /**
   * Decode a credential within `timeoutMs` (queueing included). Throws `unauthenticated`
   * (details.reason munge_invalid, munge_expired, munge_replayed) for a credential MUNGE
   * refuses, and `identity_unavailable` when munged or the decoder cannot answer (not running,
   * missing, too slow).
   */
  async decode(credential: string): Promise<MungeCredential> {
    if (!CREDENTIAL_RE.test(credential))
      throw refused('munge_invalid', 'that is not a MUNGE credential (make one with munge -n)');
    if (this.closed) throw unavailable('the broker is stopping');
    const deadline = Date.now() + this.opts.timeoutMs;
    await this.slot(deadline);
    try {
      if (this.libmunge === null) await this.settled();
      return this.libmunge
        ? await this.viaLibmunge(credential, deadline)
        : await this.viaUnmunge(credential, deadline);
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }

  private settled(): Promise<void> {
    return new Promise((resolve) => {
      const check = () => (this.libmunge === null ? setTimeout(check, 5) : resolve());
      check();
    });
  }

  private spawnWorker(): LibmungeWorker {
    const w = new LibmungeWorker(this.opts.library ?? 'libmunge.so.2', this.opts.socket);
    this.all.add(w);
    return w;
  }

  private retire(w: LibmungeWorker): void {
    w.kill();
    this.all.delete(w);
  }

  private async viaLibmunge(credential: string, deadline: number): Promise<MungeCredential> {
    let w = this.idle.pop();
    if (!w) {
      w = this.spawnWorker();
      if (!(await w.ready)) {
        this.retire(w);
        throw unavailable('the libmunge helper did not start');
      }
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => {
      timer = setTimeout(() => resolve('late'), Math.max(0, deadline - Date.now()));
    });
    const got = await Promise.race([w.decode(credential), late]);
    clearTimeout(timer);
    if (got === 'late' || got === null) {
      // munged did not answer: this helper is stuck in munge_decode(); a fresh one replaces it.
      this.retire(w);
      throw unavailable(`munged did not answer within ${this.opts.timeoutMs} ms`);
    }
    if (this.closed) this.retire(w);
    else this.idle.push(w);
    if (got.status !== 0) throw fromExit(got.status, '');
    return { uid: got.uid, gid: got.gid, encodeTime: got.encodeTime, ttl: got.ttl };
  }

  private slot(deadline: number): Promise<void> {
    if (this.running < this.opts.maxConcurrent) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const go = () => {
        clearTimeout(timer);
        this.running++;
        resolve();
      };
      const timer = setTimeout(
        () => {
          const i = this.queue.indexOf(go);
          if (i >= 0) this.queue.splice(i, 1);
          reject(unavailable(`munged did not answer within ${this.opts.timeoutMs} ms`));
        },
        Math.max(0, deadline - Date.now()),
      );
      this.queue.push(go);
    });
  }

  private viaUnmunge(credential: string, deadline: number): Promise<MungeCredential> {
    const args = ['-N', '-k', 'STATUS,UID,GID,ENCODE_TIME,TTL', '-o', '/dev/null'];
    if (this.opts.socket) args.push('--socket', this.opts.socket);
    return new Promise((resolve, reject) => {
      let child: ReturnType<typeof spawn>;
      try {
        child = spawn(this.opts.unmunge, args, { stdio: ['pipe', 'pipe', 'pipe'] });
      } catch (err) {
        reject(unavailable(`cannot run ${this.opts.unmunge}: ${(err as Error).message}`));
        return;
      }
      let out = '';
      let err = '';
      const timer = setTimeout(
        () => {
          child.kill('SIGKILL');
          reject(unavailable(`munged did not answer within ${this.opts.timeoutMs} ms`));
        },
        Math.max(0, deadline - Date.now()),
      );
      child.stdout!.on('data', (c: Buffer) => (out += c.toString('latin1')));
      child.stderr!.on('data', (c: Buffer) => (err += c.toString('latin1').slice(0, 500)));
      child.stdin!.on('error', () => undefined);
      child.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(
          unavailable(
            e.code === 'ENOENT'
              ? `${this.opts.unmunge} is not installed on the broker host (Debian: apt install munge)`
              : `cannot run ${this.opts.unmunge}: ${e.message}`,
          ),
        );
      });
      child.once('close', (code) => {
        clearTimeout(timer);
        if (code === 0) {
          const f = fields(out);
          if (f.STATUS === 0 && Number.isInteger(f.UID) && Number.isInteger(f.GID))
            return resolve({
              uid: f.UID!,
              gid: f.GID!,
              encodeTime: f.ENCODE_TIME ?? 0,
              ttl: f.TTL ?? 0,
            });
          return reject(refused('munge_invalid', 'MUNGE could not decode the credential'));
        }
        reject(fromExit(code, err));
      });
      child.stdin!.end(credential + '\n');
    });
  }
}

function fields(out: string): Record<string, number | undefined> {
  const f: Record<string, number | undefined> = {};
  for (const line of out.split('\n')) {
    const m = /^([A-Z_]+):\s+(\d+)/.exec(line);
    if (m) f[m[1]!] = Number(m[2]);
  }
  return f;
}

function unavailable(message: string): BrokerError {
  return new BrokerError(
    'identity_unavailable',
    `${message}; log in with a token meanwhile, or ask an admin to start munged`,
  );
}

function fromExit(code: number | null, stderr: string): BrokerError {
  switch (code) {
    case EMUNGE_CRED_EXPIRED:
      return refused('munge_expired', 'the MUNGE credential has expired; make a fresh one');
    case EMUNGE_CRED_REPLAYED:
      return refused('munge_replayed', 'the MUNGE credential was used before');
    case EMUNGE_CRED_REWOUND:
      return refused('munge_invalid', 'the MUNGE credential was encoded in the future');
    case EMUNGE_CRED_UNAUTHORIZED:
      return refused(
        'munge_invalid',
        "the MUNGE credential is restricted to another user than the broker's",
      );
    case EMUNGE_SOCKET:
    case EMUNGE_TIMEOUT:
      return unavailable(
        `munged is not answering${stderr.trim() ? ` (${stderr.trim().split('\n')[0]})` : ''}`,
      );
    default:
      return refused('munge_invalid', 'MUNGE refused the credential (not from this cluster?)');
  }
}

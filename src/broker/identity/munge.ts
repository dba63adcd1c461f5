/**
 * MUNGE credentials, decoded by the site's own MUNGE (https://dun.github.io/munge/): the broker
 * spawns `unmunge` with the credential on stdin — no shell, a short timeout, at most
 * `maxConcurrent` at once — and reads its metadata (`-N -k STATUS,UID,GID,ENCODE_TIME,TTL`:
 * numeric `KEY: value` lines). munged has checked the credential's MAC with the cluster's
 * `munge.key`, its time to live and its own replay cache; the UID and GID in it are the caller's,
 * as the kernel told the encoding munged. The decode never blocks the event loop: a slow or
 * stopped munged costs a waiting promise, not a stalled broker (ID-1).
 *
 * unmunge's exit status is MUNGE's error code (munge.h `munge_err_t`).
 */
import { spawn } from 'node:child_process';
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
  /** The decoder binary (default `unmunge`, found on PATH). */
  unmunge: string;
  /** munged's socket; null: the decoder's default. */
  socket: string | null;
  maxConcurrent: number;
  timeoutMs: number;
}

/** A credential is printable base64 in MUNGE's armour: `MUNGE:…:`. */
const CREDENTIAL_RE = /^MUNGE:[A-Za-z0-9+/=]{16,8192}:$/;

export class MungeDecoder {
  private running = 0;
  private readonly queue: (() => void)[] = [];

  constructor(private readonly opts: MungeDecoderOptions) {}

  /** Decodes in flight now, and waiting. */
  get load(): { running: number; waiting: number } {
    return { running: this.running, waiting: this.queue.length };
  }

  /**
   * Decode a credential. Throws `unauthenticated` (details.reason munge_invalid, munge_expired,
   * munge_replayed) for a credential MUNGE refuses, and `identity_unavailable` when munged or
   * unmunge cannot answer (not running, missing, too slow).
   */
  async decode(credential: string): Promise<MungeCredential> {
    if (!CREDENTIAL_RE.test(credential))
      throw refused('munge_invalid', 'that is not a MUNGE credential (make one with munge -n)');
    await this.slot();
    try {
      return await this.run(credential);
    } finally {
      this.running--;
      this.queue.shift()?.();
    }
  }

  private slot(): Promise<void> {
    if (this.running < this.opts.maxConcurrent) {
      this.running++;
      return Promise.resolve();
    }
    return new Promise((resolve) =>
      this.queue.push(() => {
        this.running++;
        resolve();
      }),
    );
  }

  private run(credential: string): Promise<MungeCredential> {
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
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(unavailable(`munged did not answer within ${this.opts.timeoutMs} ms`));
      }, this.opts.timeoutMs);
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
      return unavailable(`munged is not answering (${stderr.trim().split('\n')[0] ?? ''})`);
    default:
      return refused('munge_invalid', 'MUNGE refused the credential (not from this cluster?)');
  }
}

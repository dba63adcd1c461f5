/** Small helpers shared by commands: exit codes, errors, durations, output formats. */
import { BrokerError, type ErrorCode } from '../protocol/errors.js';
import { BrokerClient } from '../client/broker-client.js';
import type { Io } from './io.js';

export const EXIT = { ok: 0, negative: 1, usage: 2, unreachable: 3 } as const;

const NEGATIVE: ReadonlySet<ErrorCode> = new Set([
  'not_found',
  'service_not_found',
  'key_not_found',
  'principal_not_found',
  'token_not_found',
]);

/** DESIGN §8 exit codes for an error. */
export function exitCodeFor(err: unknown): number {
  if (err instanceof BrokerError) {
    if (err.code === 'unreachable') return EXIT.unreachable;
    if (err.code === 'validation_failed' || err.code === 'bad_request') return EXIT.usage;
    // Like `state_dir`: the set-up must change (a chmod, another directory); retrying won't help.
    if (err.code === 'insecure_path') return EXIT.usage;
    if (NEGATIVE.has(err.code)) return EXIT.negative;
    return EXIT.negative;
  }
  return EXIT.negative;
}

/** One line on stderr: `broker: <code>: <message>`. */
export function printError(io: Io, err: unknown): number {
  if (err instanceof BrokerError) {
    const rid = err.requestId ? ` (request ${err.requestId})` : '';
    const retry = err.retryAfterSeconds ? ` retry in ${err.retryAfterSeconds}s` : '';
    io.stderr.write(`broker: ${err.code}: ${err.message}${retry}${rid}\n`);
  } else {
    io.stderr.write(`broker: internal: ${(err as Error)?.message ?? String(err)}\n`);
  }
  return exitCodeFor(err);
}

export class UsageError extends BrokerError {
  constructor(message: string) {
    super('validation_failed', message);
  }
}

const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `90`, `90s`, `15m`, `12h`, `7d` → seconds. */
export function parseDuration(value: string, what = 'duration'): number {
  const m = /^(\d+)([smhd]?)$/.exec(value.trim());
  if (!m)
    throw new UsageError(
      `${what} must look like 90s, 15m, 12h or 7d (got ${JSON.stringify(value).slice(0, 40)})`,
    );
  return Number(m[1]) * UNITS[m[2] || 's']!;
}

/** POSIX-shell single quoting for `--format env`. */
export function shellQuote(v: string | number): string {
  const s = String(v);
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

export function envLines(vars: Record<string, string | number | undefined>): string {
  return (
    Object.entries(vars)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `export ${k}=${shellQuote(v!)}`)
      .join('\n') + '\n'
  );
}

export type Format = 'text' | 'json' | 'env';

export function formatOf(
  opts: { format?: string; json?: boolean },
  allowed: Format[] = ['text', 'json', 'env'],
): Format {
  if (opts.json) return 'json';
  const f = (opts.format ?? 'text') as Format;
  if (!allowed.includes(f)) throw new UsageError(`--format must be one of ${allowed.join(', ')}`);
  return f;
}

export function printJson(io: Io, value: unknown): void {
  io.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** A client using discovery with this process's environment. */
/**
 * A client with the shared discovery. It logs in on its own when it has no token (issue 12) and
 * says so on a TTY's stderr (scripts see nothing extra), unless `autoLogin: false`.
 */
export function client(
  io: Io,
  token?: string,
  opts: { autoLogin?: boolean; quiet?: boolean } = {},
): BrokerClient {
  return new BrokerClient({
    env: io.env,
    token,
    ...(opts.autoLogin === false ? { autoLogin: false } : {}),
    onLogin: (l) => {
      if (!opts.quiet && io.stderr.isTTY)
        io.stderr.write(
          `broker: logged in as ${l.principal} (${l.method}), token valid until ${l.expiresAt}` +
            (l.cachedIn ? `, cached in ${l.cachedIn}\n` : '\n'),
        );
    },
  });
}

/** Read all of stdin (for keys: never on the command line). */
export async function readStdin(io: Io, maxBytes = 4096): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of io.stdin) {
    const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
    size += b.length;
    if (size > maxBytes)
      throw new UsageError(`stdin is larger than ${maxBytes} bytes; expected one key`);
    chunks.push(b);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Wait `ms`, resolving early on abort. */
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

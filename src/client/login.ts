/**
 * Logging in as the Unix user one already is (issue 12, DESIGN §11): no token to copy. Anywhere
 * the cluster's `munge.key` reaches (login and compute nodes), `munge -n` makes a credential
 * that says who the caller is, signed by munged; the broker decodes it once and answers with a
 * user token. On the broker host, with no munged, the broker asks the kernel who owns the
 * loopback connection instead. Either way the token is cached in the user's own credentials
 * file (0600, written with writeFileSafely) with a marker naming the broker it is for.
 *
 * MUNGE: https://dun.github.io/munge/ — `munge -n` encodes an empty payload; `-u UID` restricts
 * who may decode the credential (the broker's UID, from `GET /v1/health`).
 */
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { BrokerError } from '../protocol/errors.js';
import type { Health, LoginResponse } from '../protocol/types.js';
import { ensurePrivateDirectory, writeFileSafely } from '../host/safe-files.js';
import { readCredentialsFile, sameBroker, type LoginMarker } from './credentials.js';

export type LoginMethod = 'munge' | 'peer';

/**
 * A MUNGE credential from the local munged (`munge -n [-u uid]`, no shell, 5 s), or null when
 * `munge` is not installed here.
 * @throws BrokerError `identity_unavailable` when munge is there but cannot make one (munged not
 *   running: the message says so).
 */
export function mungeCredential(
  opts: { uid?: number | null; env?: NodeJS.ProcessEnv; munge?: string } = {},
): Promise<string | null> {
  const args = ['-n'];
  if (opts.uid !== undefined && opts.uid !== null) args.push('-u', String(opts.uid));
  return new Promise((resolve, reject) => {
    const child = spawn(opts.munge ?? 'munge', args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: opts.env ?? process.env,
      timeout: 5000,
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString('latin1')));
    child.stderr.on('data', (c: Buffer) => (err += c.toString('latin1').slice(0, 500)));
    child.once('error', (e: NodeJS.ErrnoException) =>
      e.code === 'ENOENT'
        ? resolve(null)
        : reject(new BrokerError('identity_unavailable', `cannot run munge: ${e.message}`)),
    );
    child.once('close', (code) => {
      const cred = out.trim();
      if (code === 0 && cred.startsWith('MUNGE:')) return resolve(cred);
      reject(
        new BrokerError(
          'identity_unavailable',
          `munge could not make a credential (${err.trim().split('\n')[0] || `exit ${code}`}); ` +
            'is munged running on this node? Meanwhile use a token (BROKER_TOKEN)',
        ),
      );
    });
  });
}

function isLoopbackUrl(url: string): boolean {
  try {
    const h = new URL(url).hostname.replace(/^\[|\]$/g, '');
    return h === 'localhost' || h === '::1' || /^127\./.test(h);
  } catch {
    return false;
  }
}

/** What {@link loginAsUnixUser} needs of a client: two unauthenticated requests. */
export interface LoginTransport {
  url: string;
  health(): Promise<Health>;
  request<T>(
    method: string,
    path: string,
    body: unknown,
    opts: { auth: false; headers?: Record<string, string> },
  ): Promise<T>;
}

/**
 * Log in as the Unix user this process runs as: with MUNGE when the broker accepts it and
 * `munge` is installed here, else — when the broker is on this host and allows it — by the
 * connection alone.
 * @throws BrokerError `unauthenticated` when there is no way to log in from here (the message
 *   says what to do), `identity_unavailable` when munged is down, and whatever the broker
 *   answers (401 with details.reason, 403 for site policy).
 */
/**
 * The broker must have logged in the user this process runs as: a login that came back for
 * another UID went through someone else's relay (same-host login) and is refused here.
 */
function checkSelf(res: LoginResponse): LoginResponse {
  const uid = process.getuid?.();
  if (uid !== undefined && res.principal.uid !== null && res.principal.uid !== uid)
    throw new BrokerError(
      'unauthenticated',
      `the broker logged this connection in as ${res.principal.name} (uid ${res.principal.uid}), not as you (uid ${uid}): is something relaying your connection? Check the broker URL`,
    );
  return res;
}

export async function loginAsUnixUser(
  t: LoginTransport,
  opts: { method?: LoginMethod; env?: NodeJS.ProcessEnv } = {},
): Promise<LoginResponse> {
  const health = await t.health();
  const id = health.identity ?? { munge: false, peer: false, uid: null };
  const wantMunge = opts.method === 'munge' || (opts.method === undefined && id.munge);
  if (wantMunge) {
    if (!id.munge)
      throw new BrokerError(
        'identity_unavailable',
        `the broker at ${t.url} does not accept MUNGE logins (identity.munge.enabled)`,
      );
    const cred = await mungeCredential({ uid: id.uid, env: opts.env });
    if (cred !== null)
      return checkSelf(
        await t.request<LoginResponse>('POST', '/v1/login', undefined, {
          auth: false,
          headers: { Authorization: `MUNGE ${cred}` },
        }),
      );
    if (opts.method === 'munge')
      throw new BrokerError(
        'identity_unavailable',
        'munge is not installed on this node (Debian: apt install munge)',
      );
  }
  if (id.peer && isLoopbackUrl(t.url))
    return checkSelf(
      await t.request<LoginResponse>('POST', '/v1/login', undefined, { auth: false }),
    );
  throw new BrokerError(
    'unauthenticated',
    id.munge
      ? `no token, and munge is not installed here to log in to ${t.url}; install munge, or set BROKER_TOKEN to a token from your admin`
      : id.peer
        ? `no token, and the broker at ${t.url} is on another host and does not accept MUNGE; run "broker login" on the broker host, or set BROKER_TOKEN`
        : `no token, and the broker at ${t.url} accepts no login; set BROKER_TOKEN to a token from your admin (broker token create)`,
  );
}

/**
 * Keep a login's token in the user's own credentials file (0600, directory 0700, written so no
 * other user can redirect it), with a marker naming the broker it is for. Other fields of the
 * file (a URL, a CA) are kept.
 * @returns the path written.
 * @throws BrokerError `insecure_path` when the file or its directory is unsafe.
 */
export function cacheLogin(path: string, url: string, res: LoginResponse): string {
  const file = readCredentialsFile(path) ?? {};
  const login: LoginMarker = {
    url: new URL(url).origin,
    expiresAt: res.expiresAt,
    tokenId: res.tokenId,
    method: res.method,
  };
  ensurePrivateDirectory(dirname(path));
  return writeFileSafely(
    path,
    JSON.stringify({ ...file, token: res.token, login }, null, 2) + '\n',
    0o600,
  );
}

/**
 * Forget a cached login: drop `token` and `login` from the user's credentials file (the file
 * goes when nothing else is in it). A token written by hand (no login marker) is kept unless
 * `force`.
 * @returns the marker of the token forgotten, or null when there was none.
 */
export function forgetLogin(
  path: string,
  opts: { url?: string; force?: boolean } = {},
): { token: string; login: LoginMarker | null } | null {
  const file = readCredentialsFile(path);
  if (!file || typeof file.token !== 'string') return null;
  const login = (file.login ?? null) as LoginMarker | null;
  if (!login && !opts.force) return null;
  if (login && opts.url && !sameBroker(login.url, opts.url) && !opts.force) return null;
  const { token, login: _drop, ...rest } = file;
  void _drop;
  if (Object.keys(rest).length === 0) rmSync(path, { force: true });
  else writeFileSafely(path, JSON.stringify(rest, null, 2) + '\n', 0o600);
  return { token: token as string, login };
}

/**
 * `broker run --app-auth KIND`: a fresh per-run credential for an app that speaks only TCP but
 * checks a secret of its own (SECURITY.md LOC-3, FS-4). Like JupyterHub (which hands each
 * single-user server its own token in the environment, JUPYTERHUB_API_TOKEN) and Open OnDemand
 * (which writes a per-session password for the app before it starts), broker run makes a 256-bit
 * secret, gives it to the app in its environment and in a 0600 file whose path is in the
 * environment — never in an argument —, and the HTTPS front presents it on every request it
 * forwards. Another local user who connects to the app's port directly does not have it.
 *
 * Kinds:
 * - `jupyter`: `JUPYTER_TOKEN` (and `JUPYTER_TOKEN_FILE`), presented as `Authorization: token …`
 *   (Jupyter Server, JupyterLab, Notebook ≥ 7, Voilà).
 * - `bearer`: `BROKER_APP_TOKEN` / `BROKER_APP_TOKEN_FILE`, presented as `Authorization: Bearer …`.
 * - `header:NAME`: the same variables, presented as `NAME: …` (e.g. `header:X-App-Token`).
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../util.js';

export interface AppAuth {
  kind: string;
  /** Variables for the app's environment. */
  env: Record<string, string>;
  /** The header the front sets upstream: lower-case name, value. */
  upstream: { name: string; value: string };
}

/** A header token (RFC 9110), and none the front must own. */
const HEADER_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$/;
const RESERVED = new Set([
  'host',
  'cookie',
  'content-length',
  'transfer-encoding',
  'connection',
  'upgrade',
  'te',
  'trailer',
  'keep-alive',
  'forwarded',
]);

/** Check `--app-auth` early (before anything is registered). */
export function parseAppAuthKind(kind: string): string {
  if (kind === 'jupyter' || kind === 'bearer') return kind;
  const m = /^header:(.+)$/.exec(kind);
  if (m && HEADER_RE.test(m[1]!)) {
    const name = m[1]!.toLowerCase();
    if (RESERVED.has(name) || name.replace(/_/g, '-').startsWith('x-forwarded-'))
      throw new UsageError(`--app-auth header:${m[1]}: that header belongs to the front`);
    return `header:${name}`;
  }
  throw new UsageError(
    '--app-auth must be jupyter, bearer or header:NAME (e.g. header:X-App-Token)',
  );
}

/** Make the credential, write its 0600 file into the private `workDir`. */
export function makeAppAuth(kind: string, workDir: string): AppAuth {
  const secret = randomBytes(32).toString('base64url'); // 256 bits
  const file = join(workDir, 'app-token');
  writeFileSync(file, secret + '\n', { mode: 0o600, flag: 'wx' });
  if (kind === 'jupyter')
    return {
      kind,
      env: { JUPYTER_TOKEN: secret, JUPYTER_TOKEN_FILE: file },
      upstream: { name: 'authorization', value: `token ${secret}` },
    };
  const env = { BROKER_APP_TOKEN: secret, BROKER_APP_TOKEN_FILE: file };
  if (kind === 'bearer')
    return { kind, env, upstream: { name: 'authorization', value: `Bearer ${secret}` } };
  return { kind, env, upstream: { name: kind.slice('header:'.length), value: secret } };
}

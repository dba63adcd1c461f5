/**
 * Credential discovery (DESIGN §3), shared by the CLI and the SDK. Each of url, token and ca is
 * resolved on its own, first hit wins: explicit option → BROKER_URL / BROKER_TOKEN / BROKER_CA
 * (a path) → $XDG_CONFIG_HOME/broker/credentials.json → the local daemon's
 * <state dir>/credentials.json.
 *
 * A credentials file holds a token, so it is read only when nobody else can read or write it
 * (FS-5, like ssh with a private key): owned by the caller (or root) and mode 0600 or stricter.
 * Otherwise discovery throws `insecure_path` with the `chmod` that fixes it, rather than carry on
 * with a token others may have seen, or a URL and CA someone else chose.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { readPrivateFile } from '../host/safe-files.js';

export interface Credentials {
  url?: string;
  token?: string;
  /** The broker CA certificate, PEM. */
  ca?: string;
  /** Where each field came from, for `broker status` and error messages. */
  sources: { url?: string; token?: string; ca?: string };
}

export interface DiscoverOptions {
  url?: string;
  token?: string;
  /** CA PEM text. */
  ca?: string;
  env?: NodeJS.ProcessEnv;
}

/** `<state dir>` as the daemon computes it. */
export function stateDir(env: NodeJS.ProcessEnv): string {
  if (env.BROKER_DATA) return resolve(env.BROKER_DATA);
  return join(env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'broker');
}

export function userCredentialsPath(env: NodeJS.ProcessEnv): string {
  return join(env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'broker', 'credentials.json');
}

/**
 * A credentials file as an object; null when it is missing, unreadable or not a JSON object.
 * Throws BrokerError `insecure_path` when others can read or write it or it is not the caller's.
 */
function readCredentialsFile(path: string): Record<string, unknown> | null {
  const text = readPrivateFile(path);
  if (text === null) return null;
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Resolve url, token and CA (DESIGN §3), each on its own, first hit wins. A credentials file is
 * opened only while a field is still missing.
 * @throws BrokerError `insecure_path` when a credentials file it opens is readable or writable
 *   by group/other or owned by another user (the message names the file and the fix,
 *   `chmod 600 <path>`).
 */
export function discoverCredentials(opts: DiscoverOptions = {}): Credentials {
  const env = opts.env ?? process.env;
  const out: Credentials = { sources: {} };
  const take = (field: 'url' | 'token' | 'ca', value: unknown, source: string) => {
    if (out[field] === undefined && typeof value === 'string' && value !== '') {
      out[field] = value;
      out.sources[field] = source;
    }
  };
  take('url', opts.url, 'option');
  take('token', opts.token, 'option');
  take('ca', opts.ca, 'option');
  take('url', env.BROKER_URL, 'BROKER_URL');
  take('token', env.BROKER_TOKEN, 'BROKER_TOKEN');
  if (out.ca === undefined && env.BROKER_CA) {
    try {
      take('ca', readFileSync(env.BROKER_CA, 'utf8'), `BROKER_CA (${env.BROKER_CA})`);
    } catch {
      /* an unreadable BROKER_CA falls through; TLS then fails with a clear message */
    }
  }
  for (const path of [userCredentialsPath(env), join(stateDir(env), 'credentials.json')]) {
    if (out.url !== undefined && out.token !== undefined && out.ca !== undefined) break;
    const file = readCredentialsFile(path);
    if (!file) continue;
    take('url', file.url, path);
    take('token', file.token, path);
    take('ca', file.ca, path);
  }
  return out;
}

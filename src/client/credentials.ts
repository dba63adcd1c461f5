/**
 * Credential discovery (DESIGN §3), shared by the CLI and the SDK. Each of url, token and ca is
 * resolved on its own, first hit wins: explicit option → BROKER_URL / BROKER_TOKEN / BROKER_CA
 * (a path) → $XDG_CONFIG_HOME/broker/credentials.json → the local daemon's
 * <state dir>/credentials.json.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';

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

function readJson(path: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(readFileSync(path, 'utf8')) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

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
    const file = readJson(path);
    if (!file) continue;
    take('url', file.url, path);
    take('token', file.token, path);
    take('ca', file.ca, path);
  }
  return out;
}

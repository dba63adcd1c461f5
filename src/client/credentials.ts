/**
 * Credential discovery (DESIGN §3, §11), shared by the CLI and the SDK. Each of url, token and
 * ca is resolved on its own, first hit wins:
 *   explicit option → BROKER_URL / BROKER_TOKEN / BROKER_CA (a path)
 *   → $XDG_CONFIG_HOME/broker/credentials.json (the user's own)
 *   → the local daemon's <state dir>/credentials.json (whoever runs `broker serve`)
 *   → the site client config, /etc/broker/client.json or $BROKER_CLIENT_CONFIG
 *     (`{"urls": ["https://…"], "ca": PATH or PEM}`, written once by an admin, like krb5.conf).
 *
 * `ca` in any of these files may be the PEM itself or a path to it (relative to the file).
 *
 * A token a login cached (`broker login`, or a client that logged in on its own) carries a
 * `login` marker naming the broker URL it is for: it is offered only to that URL, and only until
 * it expires; otherwise the client logs in afresh instead of sending it elsewhere.
 *
 * A credentials file holds a token, so it is read only when nobody else can read or write it
 * (FS-5, like ssh with a private key): owned by the caller (or root) and mode 0600 or stricter.
 * The site config and a CA file are public but decide which broker a user trusts: they are read
 * only when nobody but their owner (the caller or root) can write them or their directories.
 * Otherwise discovery throws `insecure_path` with the fix, rather than carry on with a token
 * others may have seen, or a URL and CA someone else chose.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { BrokerError } from '../protocol/errors.js';
import { readPrivateFile, readTrustedFile } from '../host/safe-files.js';

/** Where a token cached by a login came from, as stored in the credentials file. */
export interface LoginMarker {
  /** The broker URL the token is for; it is never sent to another. */
  url: string;
  /** ISO 8601; past it the token is not offered. */
  expiresAt?: string;
  tokenId?: string;
  method?: string;
}

export interface Credentials {
  /** The broker URL in use (the first of `urls`). */
  url?: string;
  /** Every broker URL known, in order (a site may list several replicas); `url` is the first. */
  urls: string[];
  token?: string;
  /** The broker CA certificate, PEM. */
  ca?: string;
  /** Where each field came from, for `broker status` and error messages. */
  sources: { url?: string; token?: string; ca?: string };
  /**
   * Why the CA a file names could not be used (missing, unsafe): thrown at the first request,
   * so `broker ca --out` can still write the file that is missing.
   */
  caProblem?: BrokerError;
  /** Set when the token was cached by a login (so a fresh login may replace it). */
  login?: LoginMarker;
  /** The user's own credentials file, where a login caches its token. */
  userFile: string;
}

export interface DiscoverOptions {
  url?: string;
  token?: string;
  /** CA PEM text. */
  ca?: string;
  env?: NodeJS.ProcessEnv;
}

/** The site's client config when $BROKER_CLIENT_CONFIG does not name another. */
export const SITE_CONFIG_PATH = '/etc/broker/client.json';

/** `<state dir>` as the daemon computes it. */
export function stateDir(env: NodeJS.ProcessEnv): string {
  if (env.BROKER_DATA) return resolve(env.BROKER_DATA);
  return join(env.XDG_STATE_HOME || join(homedir(), '.local', 'state'), 'broker');
}

export function userCredentialsPath(env: NodeJS.ProcessEnv): string {
  return join(env.XDG_CONFIG_HOME || join(homedir(), '.config'), 'broker', 'credentials.json');
}

export function siteConfigPath(env: NodeJS.ProcessEnv): string {
  return env.BROKER_CLIENT_CONFIG || SITE_CONFIG_PATH;
}

function parseObject(text: string | null, path: string): Record<string, unknown> | null {
  if (text === null) return null;
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v === 'object' && v !== null && !Array.isArray(v))
      return v as Record<string, unknown>;
  } catch {
    /* below */
  }
  throw new BrokerError('validation_failed', `${path} is not a JSON object; fix or remove it`);
}

/**
 * The user's credentials file as an object; null when it is missing or unreadable.
 * @throws BrokerError `insecure_path` when others can read or write it or it is not the caller's;
 *   `validation_failed` when it is not a JSON object.
 */
export function readCredentialsFile(path: string): Record<string, unknown> | null {
  return parseObject(readPrivateFile(path), path);
}

const PEM_RE = /-----BEGIN CERTIFICATE-----/;

/**
 * A file's `ca`: the PEM itself, or a path to it (relative paths from the file's directory),
 * read only when nobody else can swap it (readTrustedFile).
 */
function caFrom(value: string, file: string): { pem: string; source: string } {
  if (PEM_RE.test(value)) return { pem: value, source: file };
  const path = resolve(dirname(file), value);
  const pem = readTrustedFile(path);
  if (pem === null)
    throw new BrokerError(
      'validation_failed',
      `the CA file ${path} named in ${file} does not exist; fix "ca" there (a path or the PEM)`,
    );
  if (!PEM_RE.test(pem))
    throw new BrokerError(
      'validation_failed',
      `${path} (the CA named in ${file}) holds no PEM certificate`,
    );
  return { pem, source: `${path} (named in ${file})` };
}

function stringList(v: unknown): string[] {
  if (typeof v === 'string' && v !== '') return [v];
  if (Array.isArray(v)) return v.filter((u): u is string => typeof u === 'string' && u !== '');
  return [];
}

function loginMarker(v: unknown): LoginMarker | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const m = v as Record<string, unknown>;
  if (typeof m.url !== 'string') return undefined;
  return {
    url: m.url,
    ...(typeof m.expiresAt === 'string' ? { expiresAt: m.expiresAt } : {}),
    ...(typeof m.tokenId === 'string' ? { tokenId: m.tokenId } : {}),
    ...(typeof m.method === 'string' ? { method: m.method } : {}),
  };
}

/** Same broker? Compares origins, so `https://h:8443` and `https://h:8443/` match. */
export function sameBroker(a: string, b: string): boolean {
  try {
    return new URL(a).origin === new URL(b).origin;
  } catch {
    return a === b;
  }
}

/**
 * Resolve url(s), token and CA (DESIGN §3, §11), each on its own, first hit wins. A file is
 * opened only while a field is still missing.
 * @throws BrokerError `insecure_path` when a credentials file it opens is readable or writable
 *   by group/other or owned by another user (the message names the file and the fix,
 *   `chmod 600 <path>`), or the site config or a CA file is writable by others;
 *   `validation_failed` when a file is not JSON. A CA file that is missing or unsafe is not thrown
 *   here but kept as `caProblem` (thrown by the client's first request).
 */
export function discoverCredentials(opts: DiscoverOptions = {}): Credentials {
  const env = opts.env ?? process.env;
  const userFile = userCredentialsPath(env);
  const out: Credentials = { urls: [], sources: {}, userFile };
  const now = Date.now();
  const str = (v: unknown) => (typeof v === 'string' && v !== '' ? v : undefined);

  if (str(opts.url)) [out.url, out.sources.url] = [opts.url, 'option'];
  if (str(opts.token)) [out.token, out.sources.token] = [opts.token, 'option'];
  if (str(opts.ca)) [out.ca, out.sources.ca] = [opts.ca, 'option'];
  if (out.url === undefined && str(env.BROKER_URL))
    [out.url, out.sources.url] = [env.BROKER_URL, 'BROKER_URL'];
  if (out.token === undefined && str(env.BROKER_TOKEN))
    [out.token, out.sources.token] = [env.BROKER_TOKEN, 'BROKER_TOKEN'];
  if (out.ca === undefined && env.BROKER_CA) {
    try {
      [out.ca, out.sources.ca] = [
        readFileSync(env.BROKER_CA, 'utf8'),
        `BROKER_CA (${env.BROKER_CA})`,
      ];
    } catch {
      /* an unreadable BROKER_CA falls through; TLS then fails with a clear message */
    }
  }
  if (out.url !== undefined) out.urls = [out.url];

  // A token a login cached waits until the URL is known: it goes only to the broker it is for.
  const cached: { token: string; login: LoginMarker; source: string }[] = [];
  const files: [string, () => Record<string, unknown> | null, boolean][] = [
    [userFile, () => readCredentialsFile(userFile), true],
    [
      join(stateDir(env), 'credentials.json'),
      () => readCredentialsFile(join(stateDir(env), 'credentials.json')),
      true,
    ],
    [
      siteConfigPath(env),
      () => parseObject(readTrustedFile(siteConfigPath(env)), siteConfigPath(env)),
      false,
    ],
  ];
  for (const [path, read, mayHoldToken] of files) {
    if (out.url !== undefined && out.token !== undefined && out.ca !== undefined) break;
    const file = read();
    if (!file) continue;
    if (out.url === undefined) {
      const urls = [...stringList(file.url), ...stringList(file.urls)];
      if (urls.length) [out.url, out.urls, out.sources.url] = [urls[0], urls, path];
    }
    if (out.ca === undefined && out.caProblem === undefined && str(file.ca)) {
      try {
        const ca = caFrom(file.ca as string, path);
        [out.ca, out.sources.ca] = [ca.pem, ca.source];
      } catch (err) {
        if (!(err instanceof BrokerError)) throw err;
        out.caProblem = err;
        out.sources.ca = path;
      }
    }
    // A site config is world-readable: a token in it would be everyone's, so it is not used.
    if (out.token === undefined && mayHoldToken && str(file.token)) {
      const login = loginMarker(file.login);
      if (login) cached.push({ token: file.token as string, login, source: path });
      else [out.token, out.sources.token] = [file.token as string, path];
    }
  }
  if (out.token === undefined && out.url !== undefined) {
    const hit = cached.find(
      (c) =>
        // Replicas of one broker (the site's `urls`) share one registry: any of them will do.
        out.urls.some((u) => sameBroker(c.login.url, u)) &&
        !(c.login.expiresAt && Date.parse(c.login.expiresAt) <= now + 30_000),
    );
    if (hit) {
      [out.token, out.sources.token] = [hit.token, `${hit.source} (login)`];
      out.login = hit.login;
    }
  }
  return out;
}

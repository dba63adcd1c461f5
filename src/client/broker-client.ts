/**
 * BrokerClient: the typed HTTP API client. It pins the broker CA (never disables verification),
 * keeps secrets out of URLs, and rebuilds API errors as BrokerError with the same `code` and
 * `requestId`, so `err.code === 'service_not_found'` works across the wire.
 */
import { request as httpsRequest, Agent } from 'node:https';
import { lookup as dnsLookup } from 'node:dns';
import { checkServerIdentity } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { BrokerError, isErrorCode } from '../protocol/errors.js';
import { parseServiceRef, serviceHostname, type ServiceRef } from '../protocol/names.js';
import type {
  AuditEvent,
  CreateTokenResponse,
  Health,
  LoadRequest,
  LoadResponse,
  LoginResponse,
  Principal,
  QueryResponse,
  RegisterRequest,
  RegisterResponse,
  Role,
  Service,
  TokenInfo,
  VerifyResponse,
  WhoAmI,
} from '../protocol/types.js';
import { discoverCredentials, type Credentials, type DiscoverOptions } from './credentials.js';
import { cacheLogin, loginAsUnixUser, type LoginMethod } from './login.js';

export interface BrokerClientOptions extends DiscoverOptions {
  /** Per-request timeout. */
  timeoutMs?: number;
  /**
   * Log in as the Unix user this process runs as when there is no token, or the one a login
   * cached has expired or was revoked (MUNGE, or on the broker host the connection itself), and
   * cache the new token in the user's credentials file (issue 12). Once per need: a second
   * refusal is an error, never a loop. Default: on, unless `token` is given.
   */
  autoLogin?: boolean;
  /** Called after a login (automatic or {@link BrokerClient.login}), e.g. to tell a TTY user. */
  onLogin?: (info: {
    principal: string;
    method: string;
    expiresAt: string;
    cachedIn: string | null;
  }) => void;
}

export interface SshKeyInfo {
  fingerprint: string;
  principal: string;
  key: string;
  comment: string | null;
  createdAt: string;
}

export interface KeyInfo {
  keyId: string;
  principal: string;
  createdAt: string;
  expiresAt: string;
  once: boolean;
  lastUsedAt: string | null;
}

/**
 * A `lookup` for node:net / node:https that resolves `localhost` and every `*.localhost` name
 * to the loopback address, as RFC 6761 §6.3 asks and browsers and curl do — glibc does not, and
 * each service's own name is `NAME.OWNER.localhost`. Other names go to the system resolver.
 * @example https.get('https://nb.alice.localhost:20007/', { agent, lookup: localhostLookup })
 */
export const localhostLookup = ((
  hostname: string,
  options: { all?: boolean; family?: number } | number,
  callback: (...args: unknown[]) => void,
) => {
  const o = typeof options === 'number' ? { family: options } : (options ?? {});
  if (hostname !== 'localhost' && !hostname.endsWith('.localhost'))
    return dnsLookup(hostname, o as never, callback as never);
  const v6 = o.family === 6;
  const address = v6 ? '::1' : '127.0.0.1';
  const family = v6 ? 6 : 4;
  if (o.all) callback(null, [{ address, family }]);
  else callback(null, address, family);
}) as unknown as typeof dnsLookup;

/**
 * @example
 * ```ts
 * const broker = new BrokerClient();            // discovers url, token and CA
 * const { key, service } = await broker.load('alice/viz');
 * ```
 */
export class BrokerClient {
  readonly credentials: Credentials;
  private readonly agent: Agent | undefined;
  private readonly timeoutMs: number;
  private who: Promise<WhoAmI> | null = null;
  private readonly env: NodeJS.ProcessEnv;
  private readonly autoLogin: boolean;
  private readonly onLogin: BrokerClientOptions['onLogin'];
  /** The login in flight or done for the current need (shared by concurrent requests). */
  private loggingIn: Promise<void> | null = null;

  /**
   * Discovers url, token and CA (DESIGN §3) for whatever `opts` leaves out.
   * @throws BrokerError `insecure_path` when a credentials file it has to read is readable or
   *   writable by group/other or belongs to another user (FS-5); the message gives the fix.
   */
  constructor(opts: BrokerClientOptions = {}) {
    this.credentials = discoverCredentials(opts);
    this.env = opts.env ?? process.env;
    this.autoLogin = opts.autoLogin ?? opts.token === undefined;
    this.onLogin = opts.onLogin;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.agent = this.credentials.ca
      ? // Within one user's share of the broker's connections (128): a busy gate queues its
        // verifies on these instead of opening more (and getting some refused).
        new Agent({
          ca: this.credentials.ca,
          keepAlive: true,
          maxSockets: 32,
          minVersion: 'TLSv1.2',
        })
      : undefined;
  }

  get url(): string | undefined {
    return this.credentials.url;
  }

  /**
   * An https.Agent for talking to *services* (not the broker): it trusts only the broker CA and,
   * with `service`, checks that the certificate is that service's — its own host name
   * (`NAME.OWNER.localhost`, the `hostname` of the Service; sent as SNI whatever the URL's host)
   * and `CN=owner/name` — so service A's certificate presented on service B's port is refused
   * (NET-2, SES-3). URLs may name the service (`https://nb.alice.localhost:PORT/`): the agent
   * resolves `*.localhost` to loopback itself (glibc does not, see localhostLookup).
   * @example
   * ```ts
   * const svc = await broker.get('alice/nb');
   * const agent = broker.httpsAgent({ service: svc });
   * https.get(`https://127.0.0.1:${svc.port}/`, { agent, headers: { Authorization: `Bearer ${key}` } });
   * ```
   */
  httpsAgent(
    opts: {
      keepAlive?: boolean;
      service?: { owner: string; name: string; hostname?: string; id?: string };
    } = {},
  ): Agent {
    if (!this.credentials.ca)
      throw new BrokerError('unreachable', 'no broker CA: set BROKER_CA or use a credentials file');
    const svc = opts.service;
    const expected = svc ? `${svc.owner}/${svc.name}` : null;
    const hostname = svc ? (svc.hostname ?? serviceHostname({ id: '', ...svc })) : undefined;
    return new Agent({
      ca: this.credentials.ca,
      minVersion: 'TLSv1.2',
      keepAlive: opts.keepAlive ?? false,
      ...(hostname ? { servername: hostname } : {}),
      lookup: localhostLookup,
      checkServerIdentity: (host, cert) => {
        const err = checkServerIdentity(hostname ?? host, cert);
        if (err) return err;
        const cn = cert.subject?.CN;
        if (expected && cn !== expected) {
          return new Error(
            `the certificate is for ${String(cn).slice(0, 80)}, not for the service ${expected}`,
          );
        }
        return undefined;
      },
    });
  }

  /** Release pooled connections. */
  close(): void {
    this.agent?.destroy();
  }

  /**
   * Low-level request; `path` starts with /v1. Public so tools can reach routes without a
   * wrapper. With no token, or a cached login's token the broker refuses, it logs in once (see
   * {@link BrokerClientOptions.autoLogin}) and retries once.
   */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    opts: { auth?: boolean; raw?: boolean; headers?: Record<string, string> } = {},
  ): Promise<T> {
    if (opts.auth === false) return this.send<T>(method, path, body, opts);
    if (!this.credentials.token && this.autoLogin) await this.loginOnce();
    const used = this.credentials.token;
    try {
      return await this.send<T>(method, path, body, opts);
    } catch (err) {
      // A token a login cached may have expired or been revoked: log in again, once. A token
      // given by hand is the user's to replace; it is never swapped silently.
      const relogin =
        err instanceof BrokerError &&
        err.code === 'unauthenticated' &&
        this.autoLogin &&
        (this.credentials.login !== undefined || this.loggedInHere) &&
        !this.retried;
      if (!relogin) throw err;
      this.retried = true;
      if (this.credentials.token === used) this.loggingIn = null;
      await this.loginOnce();
      return this.send<T>(method, path, body, opts);
    }
  }

  private loggedInHere = false;
  private retried = false;

  private loginOnce(): Promise<void> {
    this.loggingIn ??= this.login().then(() => undefined);
    this.loggingIn.catch(() => (this.loggingIn = null));
    return this.loggingIn;
  }

  /**
   * Log in as the Unix user this process runs as (MUNGE, or on the broker host the connection)
   * and use the token from now on; it is cached in the user's credentials file unless
   * `cache: false` (a cache that cannot be written is skipped: the token still serves this
   * client).
   * @throws BrokerError as {@link loginAsUnixUser}.
   */
  async login(
    opts: { method?: LoginMethod; cache?: boolean } = {},
  ): Promise<LoginResponse & { cachedIn: string | null }> {
    const res = await loginAsUnixUser(
      {
        url: this.url ?? '',
        health: () => this.health(),
        request: (m, p, b, o) => this.send(m, p, b, o),
      },
      { ...opts, env: this.env },
    );
    let cachedIn: string | null = null;
    if (opts.cache !== false) {
      try {
        cachedIn = cacheLogin(this.credentials.userFile, this.url!, res);
      } catch {
        cachedIn = null;
      }
    }
    this.credentials.token = res.token;
    this.credentials.sources.token = `login (${res.method})`;
    this.credentials.login = {
      url: this.url!,
      expiresAt: res.expiresAt,
      tokenId: res.tokenId,
      method: res.method,
    };
    this.loggedInHere = true;
    this.who = null;
    this.onLogin?.({
      principal: res.principal.name,
      method: res.method,
      expiresAt: res.expiresAt,
      cachedIn,
    });
    return { ...res, cachedIn };
  }

  /** One request to the broker URLs in order: the next one only when one refuses connections. */
  private async send<T>(
    method: string,
    path: string,
    body: unknown,
    opts: { auth?: boolean; raw?: boolean; headers?: Record<string, string> },
  ): Promise<T> {
    const { url, token, ca } = this.credentials;
    if (!url) {
      throw new BrokerError(
        'unreachable',
        'no broker URL: set BROKER_URL, ask your admin for the site client config (/etc/broker/client.json), or start `broker serve`',
      );
    }
    if ((!ca || !this.agent) && this.credentials.caProblem) throw this.credentials.caProblem;
    if (!ca || !this.agent) {
      throw new BrokerError(
        'unreachable',
        'no broker CA to pin: set BROKER_CA to the CA file (broker ca --out FILE) or use a credentials file',
      );
    }
    if (opts.auth !== false && !token) {
      throw new BrokerError(
        'unauthenticated',
        'no token: run "broker login", set BROKER_TOKEN, or write ~/.config/broker/credentials.json',
      );
    }
    try {
      return await this.sendTo<T>(url, method, path, body, opts);
    } catch (err) {
      // Nothing was sent to a broker that refused the connection: the next replica may answer.
      const urls = this.credentials.urls;
      const next = urls[urls.indexOf(url) + 1];
      const code = ((err as BrokerError).cause as NodeJS.ErrnoException | undefined)?.code;
      if (next === undefined || urls.indexOf(url) < 0 || !FAILOVER_CODES.has(code ?? '')) throw err;
      this.credentials.url = next;
      return this.send<T>(method, path, body, opts);
    }
  }

  private sendTo<T>(
    url: string,
    method: string,
    path: string,
    body: unknown,
    opts: { auth?: boolean; raw?: boolean; headers?: Record<string, string> },
  ): Promise<T> {
    const { token } = this.credentials;
    const target = new URL(path, url);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers: Record<string, string> = { Accept: 'application/json', ...opts.headers };
    if (opts.auth !== false) headers.Authorization = `Bearer ${token}`;
    if (payload !== undefined) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = String(Buffer.byteLength(payload));
    }
    return new Promise<T>((resolve, reject) => {
      const req = httpsRequest(
        target,
        { method, headers, agent: this.agent, timeout: this.timeoutMs },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (err) =>
            reject(
              new BrokerError('unreachable', `connection to ${url} failed: ${err.message}`, {
                cause: err,
              }),
            ),
          );
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) {
              if (opts.raw) return resolve(text as T);
              if (status === 204 || text === '') return resolve(undefined as T);
              try {
                return resolve(JSON.parse(text) as T);
              } catch {
                return reject(
                  new BrokerError(
                    'internal',
                    `the broker answered ${status} with a body that is not JSON`,
                  ),
                );
              }
            }
            reject(errorFromResponse(status, text, res.headers['retry-after']));
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) =>
        reject(transportError(url, err, this.credentials.sources.ca)),
      );
      req.end(payload);
    });
  }

  /**
   * Who the token belongs to, asked once per client: a token's principal or service never
   * changes, so every later caller shares the answer.
   */
  me(): Promise<WhoAmI> {
    this.who ??= this.whoami();
    this.who.catch(() => (this.who = null));
    return this.who;
  }

  /** The caller's own name: the principal, or the owner of the service the token is for. */
  async selfName(): Promise<string> {
    const w = await this.me();
    return w.kind === 'principal' ? w.principal.name : w.service.owner;
  }

  /** Resolve `owner/name` or a bare `name` (the caller's own service). */
  async ref(ref: string): Promise<ServiceRef> {
    const parsed = parseServiceRef(ref, ref.includes('/') ? undefined : await this.selfName());
    if (!parsed)
      throw new BrokerError(
        'validation_failed',
        `not a valid service name: ${JSON.stringify(ref).slice(0, 80)}`,
      );
    return parsed;
  }

  private async servicePath(ref: string, suffix = ''): Promise<string> {
    const { owner, name } = await this.ref(ref);
    return `/v1/services/${owner}/${name}${suffix}`;
  }

  health(): Promise<Health> {
    return this.request('GET', '/v1/health', undefined, { auth: false });
  }

  /** The CA certificate PEM as the broker serves it. */
  caPem(): Promise<string> {
    return this.request('GET', '/v1/ca', undefined, { auth: false, raw: true });
  }

  /**
   * The broker's CA as it serves it, fetched *without* checking the broker's certificate, for
   * `broker ca` when nothing — or another CA — is pinned: compare `fingerprint` (SHA-256, as
   * `openssl x509 -fingerprint -sha256` prints it) with the one your admin published before
   * trusting it. `pinned` says how it compares with the CA discovery found.
   * @throws BrokerError `unreachable` when the broker does not answer.
   */
  async caUnverified(): Promise<{
    pem: string;
    fingerprint: string;
    pinned: 'same' | 'different' | 'none';
    pinnedFingerprint: string | null;
  }> {
    const url = this.url;
    if (!url)
      throw new BrokerError(
        'unreachable',
        'no broker URL: set BROKER_URL, or ask your admin for the site client config (/etc/broker/client.json)',
      );
    const pem = await new Promise<string>((resolve, reject) => {
      const req = httpsRequest(
        new URL('/v1/ca', url),
        { method: 'GET', rejectUnauthorized: false, agent: false, timeout: this.timeoutMs },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            res.statusCode === 200
              ? resolve(Buffer.concat(chunks).toString('utf8'))
              : reject(
                  new BrokerError('unreachable', `${url} answered ${res.statusCode} for /v1/ca`),
                ),
          );
          res.on('error', (err) => reject(transportError(url, err)));
        },
      );
      req.on('timeout', () => req.destroy(new Error(`no answer within ${this.timeoutMs} ms`)));
      req.on('error', (err: NodeJS.ErrnoException) => reject(transportError(url, err)));
      req.end();
    });
    const fp = (p: string) => {
      try {
        return new X509Certificate(p).fingerprint256;
      } catch {
        return null;
      }
    };
    const fingerprint = fp(pem);
    if (!fingerprint) throw new BrokerError('internal', `${url}/v1/ca is not a PEM certificate`);
    const pinnedFingerprint = this.credentials.ca ? fp(this.credentials.ca) : null;
    return {
      pem,
      fingerprint,
      pinned:
        pinnedFingerprint === null
          ? 'none'
          : pinnedFingerprint === fingerprint
            ? 'same'
            : 'different',
      pinnedFingerprint,
    };
  }

  whoami(): Promise<WhoAmI> {
    return this.request('GET', '/v1/whoami');
  }

  /**
   * Register a service; the response holds the service token, shown once.
   * @example
   * ```ts
   * const { service, serviceToken } = await broker.register({ name: 'viz', tunnel: 'none' });
   * ```
   */
  register(req: RegisterRequest): Promise<RegisterResponse> {
    return this.request('POST', '/v1/services', req);
  }

  /** One page of services visible to the caller. */
  query(opts: { match?: string; limit?: number; cursor?: string } = {}): Promise<QueryResponse> {
    const q = new URLSearchParams();
    if (opts.match) q.set('match', opts.match);
    if (opts.limit) q.set('limit', String(opts.limit));
    if (opts.cursor) q.set('cursor', opts.cursor);
    const qs = q.toString();
    return this.request('GET', `/v1/services${qs ? '?' + qs : ''}`);
  }

  /** Every service visible to the caller, following cursors. */
  async queryAll(opts: { match?: string } = {}): Promise<Service[]> {
    const all: Service[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.query({ ...opts, limit: 1000, cursor });
      all.push(...page.services);
      cursor = page.nextCursor;
    } while (cursor);
    return all;
  }

  async get(ref: string): Promise<Service> {
    return (await this.request<{ service: Service }>('GET', await this.servicePath(ref))).service;
  }

  async unregister(ref: string): Promise<void> {
    await this.request('DELETE', await this.servicePath(ref));
  }

  async ready(ref: string): Promise<Service> {
    return (
      await this.request<{ service: Service }>('POST', await this.servicePath(ref, '/ready'), {})
    ).service;
  }

  async heartbeat(ref: string): Promise<Service> {
    return (
      await this.request<{ service: Service }>(
        'POST',
        await this.servicePath(ref, '/heartbeat'),
        {},
      )
    ).service;
  }

  /** Renew an https service's certificate (service token), from a CSR or with a new key. */
  async renewCert(
    ref: string,
    csr?: string,
  ): Promise<{ service: Service; tls: NonNullable<RegisterResponse['tls']> }> {
    return this.request('POST', await this.servicePath(ref, '/cert'), csr ? { csr } : {});
  }

  /** A short-lived client certificate for `principal` from a CSR (mTLS to https services). */
  clientCert(
    principal: string,
    csr: string,
  ): Promise<{ certId: string; cert: string; ca: string; fingerprint: string; notAfter: string }> {
    return this.request('POST', `/v1/principals/${encodeURIComponent(principal)}/client-cert`, {
      csr,
    });
  }

  /** Mint a client key for a service (the key is shown once). */
  async load(ref: string, opts: LoadRequest = {}): Promise<LoadResponse> {
    return this.request('POST', await this.servicePath(ref, '/keys'), opts);
  }

  async listKeys(ref: string): Promise<KeyInfo[]> {
    return (await this.request<{ keys: KeyInfo[] }>('GET', await this.servicePath(ref, '/keys')))
      .keys;
  }

  async revokeKey(keyId: string): Promise<void> {
    await this.request('DELETE', `/v1/keys/${encodeURIComponent(keyId)}`);
  }

  /** Check a client key with the service token of the service it was presented to. */
  verify(key: string): Promise<VerifyResponse> {
    return this.request('POST', '/v1/verify', { key });
  }

  /**
   * Does this client certificate (`sha256:` + hex of its DER) admit its principal to this service
   * (service token)? The answer's `keyId` is the certificate's id (`crt_…`) for `liveKeys`.
   */
  verifyCert(fingerprint: string): Promise<VerifyResponse> {
    return this.request('POST', '/v1/verify/cert', { fingerprint });
  }

  /**
   * Which of these key ids of this service (service token) still hold: for the sessions and
   * connections a server opened with keys (SES-1). At most 1000 ids a call.
   */
  async liveKeys(keyIds: string[]): Promise<string[]> {
    return (await this.request<{ live: string[] }>('POST', '/v1/verify/live', { keyIds })).live;
  }

  async listPrincipals(): Promise<Principal[]> {
    return (await this.request<{ principals: Principal[] }>('GET', '/v1/principals')).principals;
  }

  /** Create a principal; `uid` binds it to that Unix user (its MUNGE or same-host logins). */
  createPrincipal(
    name: string,
    role: Role = 'user',
    uid?: number,
  ): Promise<{ principal: Principal; token: string }> {
    return this.request('POST', '/v1/principals', {
      name,
      role,
      ...(uid === undefined ? {} : { uid }),
    });
  }

  async updatePrincipal(
    name: string,
    patch: { role?: Role; disabled?: boolean; uid?: number | null },
  ): Promise<Principal> {
    return (
      await this.request<{ principal: Principal }>(
        'PATCH',
        `/v1/principals/${encodeURIComponent(name)}`,
        patch,
      )
    ).principal;
  }

  async removePrincipal(name: string): Promise<void> {
    await this.request('DELETE', `/v1/principals/${encodeURIComponent(name)}`);
  }

  async listTokens(principal: string): Promise<TokenInfo[]> {
    return (
      await this.request<{ tokens: TokenInfo[] }>(
        'GET',
        `/v1/principals/${encodeURIComponent(principal)}/tokens`,
      )
    ).tokens;
  }

  createToken(
    principal: string,
    opts: { label?: string; ttlSeconds?: number } = {},
  ): Promise<CreateTokenResponse> {
    return this.request('POST', `/v1/principals/${encodeURIComponent(principal)}/tokens`, opts);
  }

  async revokeToken(tokenId: string): Promise<void> {
    await this.request('DELETE', `/v1/tokens/${encodeURIComponent(tokenId)}`);
  }

  /** Register an SSH public key (`ssh-ed25519 AAAA… comment`) for gateway publickey auth. */
  addSshKey(principal: string, key: string): Promise<{ key: SshKeyInfo }> {
    return this.request('POST', `/v1/principals/${encodeURIComponent(principal)}/ssh-keys`, {
      key,
    });
  }

  async listSshKeys(principal: string): Promise<SshKeyInfo[]> {
    return (
      await this.request<{ keys: SshKeyInfo[] }>(
        'GET',
        `/v1/principals/${encodeURIComponent(principal)}/ssh-keys`,
      )
    ).keys;
  }

  async removeSshKey(principal: string, fingerprint: string): Promise<void> {
    await this.request(
      'DELETE',
      `/v1/principals/${encodeURIComponent(principal)}/ssh-keys/${encodeURIComponent(fingerprint)}`,
    );
  }

  async audit(opts: { since?: string; limit?: number } = {}): Promise<AuditEvent[]> {
    const q = new URLSearchParams();
    if (opts.since) q.set('since', opts.since);
    if (opts.limit) q.set('limit', String(opts.limit));
    const qs = q.toString();
    return (await this.request<{ events: AuditEvent[] }>('GET', `/v1/audit${qs ? '?' + qs : ''}`))
      .events;
  }
}

function errorFromResponse(
  status: number,
  text: string,
  retryAfter: string | undefined,
): BrokerError {
  let body: {
    error?: { code?: unknown; message?: unknown; details?: unknown };
    requestId?: unknown;
  } = {};
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    /* not JSON: fall through */
  }
  const code = isErrorCode(body.error?.code)
    ? body.error.code
    : status >= 500
      ? 'internal'
      : 'bad_request';
  const message = typeof body.error?.message === 'string' ? body.error.message : `HTTP ${status}`;
  const err = new BrokerError(code, message, { details: body.error?.details });
  if (typeof body.requestId === 'string') err.requestId = body.requestId;
  if (retryAfter) err.retryAfterSeconds = Number(retryAfter);
  return err;
}

const TLS_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** Connection errors that happen before anything is sent: safe to try the next broker URL. */
const FAILOVER_CODES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

function transportError(url: string, err: NodeJS.ErrnoException, caSource?: string): BrokerError {
  const code = err.code ?? '';
  let hint = 'is `broker serve` running, and is BROKER_URL right?';
  if (TLS_CODES.has(code))
    hint =
      `the broker's certificate is not signed by the CA pinned by ${caSource ?? 'your credentials'}; ` +
      'if the broker has a new CA, compare "broker ca --fingerprint" with what your admin published, then update that file';
  return new BrokerError('unreachable', `cannot reach ${url} (${code || err.message}): ${hint}`, {
    cause: err,
  });
}

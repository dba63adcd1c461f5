/**
 * The HTTPS gate (DESIGN §7) for express or plain node:http servers: a request passes with
 * `Authorization: Bearer <key>`, or with a session cookie obtained through a one-time login URL
 * `…/?broker_key=<key>`, which is exchanged for a cookie bound to a server-side session and
 * answered with a redirect to the same URL without the key. WebSocket upgrades are checked the
 * same way. The key is removed from `req.url` before anything else sees it, so it never reaches a
 * logged URL.
 *
 * Sessions (SECURITY.md SES-1):
 * - Each login gets a host name of its own, `s<32 hex>.NAME.OWNER.localhost` (the service's
 *   certificate names `*.NAME.OWNER.localhost` too): the login URL's key is exchanged for a
 *   one-time ticket and a redirect there, where the ticket becomes the session cookie. Browsers
 *   keep cookies per host but not per port, and treat `http://*.localhost` as secure, so a cookie
 *   of the service's own name would also go to a plain-HTTP page another local user serves on that
 *   name at another port; nobody can lure a browser to a host name they do not know.
 * - The cookie is `__Host-broker_session` (`HttpOnly; Secure; SameSite=Strict; Path=/`, no
 *   Domain), and a session is only accepted on its own host. A session lives only in the gate
 *   that made it.
 * - A one-time key is never cached: every presentation, as a bearer or a login URL, goes to the
 *   broker, which lets it through once. A login URL is always checked with the broker.
 * - A session, or an upgraded connection, made from a key ends when the key does: revoked,
 *   expired, its principal disabled or no longer allowed. With `live` (or `keyWatch`) the gate
 *   re-checks the keys behind its sessions every `recheckMs` (default 5 s).
 * - A positive verify of a multi-use bearer key is reused for `cacheMs` (default 1 s).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { VerifyResponse } from '../protocol/types.js';
import { KeyWatch, type LiveKeys } from './key-watch.js';

export interface HttpGateOptions {
  verify: (key: string) => Promise<VerifyResponse>;
  /**
   * Which of these key ids still hold (normally the service client's `liveKeys`): sessions and
   * upgraded connections end with their key. Ignored when `keyWatch` is given.
   */
  live?: LiveKeys;
  /** A shared watch (one broker request per interval for every gate of a service). */
  keyWatch?: KeyWatch;
  /** How often the keys behind sessions are re-checked with `live`, in ms (default 5000). */
  recheckMs?: number;
  /** How long a positive verify of a multi-use key is reused, in ms (default 1000). */
  cacheMs?: number;
  /** Longest session, in ms (default 12 h); never longer than its key. */
  sessionTtlMs?: number;
  /** Default `__Host-broker_session`. */
  cookieName?: string;
  /** Sessions held at most; the oldest go first (default 100,000). */
  maxSessions?: number;
  /**
   * The service's own host name (`NAME.OWNER.localhost`): session hosts are made under it.
   * Default: the name the client asked for in TLS (SNI), else its Host header.
   */
  hostname?: string;
  /**
   * mTLS: principals whose broker-issued client certificate (CN = principal) lets them in
   * without a key. The TLS layer (tlsOptions with requireClientCert) has already checked that the
   * certificate chains to the broker CA; `verifyCert` then asks the broker whether it still holds.
   */
  clientCertAllow?: string[];
  /**
   * Ask the broker about a client certificate by its fingerprint (normally the service client's
   * `verifyCert`): required with `clientCertAllow`. A certificate admits only while the broker's
   * record of it lives and its principal is enabled and allowed (SES-2); its id is watched like a
   * key's.
   */
  verifyCert?: (fingerprint: string) => Promise<VerifyResponse>;
}

export interface GatedRequest extends IncomingMessage {
  /** Who the key belongs to, once the gate let the request through. */
  brokerPrincipal?: string;
}

/** Who a request is, and through which key (null for a client certificate). */
export interface GateIdentity {
  principal: string;
  keyId: string | null;
}

type Who = GateIdentity & { expiresAt: number; once: boolean };
type Session = Who & { unwatch: () => void; host: string };

/** A session host: one DNS label of 128 random bits under the service's name. */
const SESSION_HOST = /^s[0-9a-f]{32}\./;
const TICKET_PARAM = 'broker_ticket';
/** How long a login ticket may wait for its redirect, in ms. */
const TICKET_MS = 60_000;

/** The host name a request was made to (no port, lower case, no trailing dot). */
function requestHost(req: IncomingMessage): string {
  const sni = (req.socket as TLSSocket).servername;
  const host = typeof sni === 'string' && sni ? sni : (req.headers.host ?? '');
  return host.replace(/:\d+$/, '').replace(/\.$/, '').toLowerCase();
}

/** The port the client connected to, as it named it (through a tunnel it is not ours). */
function requestPort(req: IncomingMessage): string {
  return /:(\d+)$/.exec(req.headers.host ?? '')?.[1] ?? '';
}

const LOGIN_PARAM = 'broker_key';

/** The session cookie's name: `__Host-` keeps it to the host that set it (RFC 6265bis §4.1.3.2). */
export const SESSION_COOKIE = '__Host-broker_session';

export class HttpGate {
  private readonly cache = new Map<string, { at: number; who: Who }>();
  private readonly sessions = new Map<string, Session>();
  /** Login tickets: ticket → session id, until redeemed on the session's host (or 60 s). */
  private readonly tickets = new Map<string, { sessionId: string; until: number }>();
  private readonly cacheMs: number;
  private readonly sessionTtlMs: number;
  private readonly maxSessions: number;
  private readonly keyWatch: KeyWatch | null;
  readonly cookieName: string;

  constructor(private readonly opts: HttpGateOptions) {
    this.cacheMs = opts.cacheMs ?? 1000;
    this.sessionTtlMs = opts.sessionTtlMs ?? 12 * 3600e3;
    this.maxSessions = opts.maxSessions ?? 100_000;
    this.cookieName = opts.cookieName ?? SESSION_COOKIE;
    this.keyWatch =
      opts.keyWatch ??
      (opts.live ? new KeyWatch({ live: opts.live, intervalMs: opts.recheckMs }) : null);
    if (opts.clientCertAllow && !opts.verifyCert)
      throw new TypeError(
        'clientCertAllow needs verifyCert: a certificate must be checked with the broker, not admitted on its name alone',
      );
  }

  /** Sessions held now. */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Verify a key (or, `cert`, a client certificate's fingerprint); `fresh` skips the cache (login
   * URLs). One-time keys are never cached.
   */
  private async check(key: string, fresh = false, cert = false): Promise<Who | null> {
    const h = cert ? key : createHash('sha256').update(key).digest('hex');
    const now = Date.now();
    const hit = fresh ? undefined : this.cache.get(h);
    if (hit && now - hit.at < this.cacheMs && hit.who.expiresAt > now) return hit.who;
    let r: VerifyResponse;
    try {
      r = await (cert ? this.opts.verifyCert!(key) : this.opts.verify(key));
    } catch {
      return null;
    }
    if (!r.valid) {
      this.cache.delete(h);
      return null;
    }
    const who: Who = {
      principal: r.principal,
      keyId: r.keyId,
      expiresAt: Date.parse(r.expiresAt),
      once: r.once === true,
    };
    if (!who.once && this.cacheMs > 0) {
      if (this.cache.size > 10_000) this.cache.clear();
      this.cache.set(h, { at: now, who });
    }
    return who;
  }

  private session(req: IncomingMessage): Who | null {
    const cookies = req.headers.cookie ?? '';
    const host = requestHost(req);
    for (const part of cookies.split(';')) {
      const eq = part.indexOf('=');
      if (eq < 0 || part.slice(0, eq).trim() !== this.cookieName) continue;
      const v = part.slice(eq + 1).trim();
      const s = this.sessions.get(v);
      if (s && s.expiresAt <= Date.now()) this.endSession(v);
      // Only on its own host: a session cookie carried anywhere else is worth nothing.
      else if (s && s.host === host) return s;
    }
    return null;
  }

  private endSession(id: string): void {
    this.sessions.get(id)?.unwatch();
    this.sessions.delete(id);
  }

  /** A new session for `who` on `host`; it ends with its key (when the gate can re-check keys). */
  private openSession(who: Who, host: string): string {
    const id = randomBytes(32).toString('base64url');
    if (this.sessions.size >= this.maxSessions) this.endSession(this.sessions.keys().next().value!);
    const unwatch =
      who.keyId && this.keyWatch
        ? this.keyWatch.watch(who.keyId, () => this.sessions.delete(id))
        : () => {};
    this.sessions.set(id, {
      ...who,
      expiresAt: Math.min(who.expiresAt, Date.now() + this.sessionTtlMs),
      unwatch,
      host,
    });
    return id;
  }

  /**
   * Who a request is: its client certificate (mTLS), bearer key or session cookie; null when
   * none lets it in.
   */
  async identify(req: IncomingMessage): Promise<GateIdentity | null> {
    const tls = req.socket as TLSSocket;
    if (
      this.opts.clientCertAllow &&
      tls.authorized &&
      typeof tls.getPeerCertificate === 'function'
    ) {
      const peer = tls.getPeerCertificate();
      const cn = peer?.subject?.CN;
      if (typeof cn === 'string' && this.opts.clientCertAllow.includes(cn) && peer.raw) {
        const fingerprint = 'sha256:' + createHash('sha256').update(peer.raw).digest('hex');
        const who = await this.check(fingerprint, false, true);
        if (who && who.principal === cn) return { principal: cn, keyId: who.keyId };
      }
    }
    const auth = req.headers.authorization;
    const who = auth?.startsWith('Bearer ')
      ? await this.check(auth.slice(7).trim())
      : this.session(req);
    return who ? { principal: who.principal, keyId: who.keyId } : null;
  }

  /** The principal behind a request's client certificate, bearer key or session cookie, or null. */
  async principalOf(req: IncomingMessage): Promise<string | null> {
    return (await this.identify(req))?.principal ?? null;
  }

  /** express / connect middleware: `app.use(gate.middleware)`. */
  readonly middleware = (
    req: GatedRequest,
    res: ServerResponse,
    next: (err?: unknown) => void,
  ): void => {
    void this.handle(req, res).then((ok) => ok && next(), next);
  };

  /** For plain node:http: resolves true when the request may go on; otherwise it was answered. */
  async handle(req: GatedRequest, res: ServerResponse): Promise<boolean> {
    // Only a query that can name a parameter (literally, or with any of its letters
    // percent-encoded) is parsed: most requests carry a bearer or a cookie, and URL parsing is a
    // visible part of the per-request cost.
    const q = req.url?.indexOf('?') ?? -1;
    const url =
      q >= 0 &&
      (req.url!.includes(LOGIN_PARAM, q) ||
        req.url!.includes(TICKET_PARAM, q) ||
        req.url!.includes('%', q))
        ? new URL(req.url!, 'https://gate.invalid')
        : undefined;
    const loginKey = url?.searchParams.get(LOGIN_PARAM) ?? null;
    const ticket = url?.searchParams.get(TICKET_PARAM) ?? null;
    if (url && (loginKey !== null || ticket !== null)) {
      url.searchParams.delete(LOGIN_PARAM);
      url.searchParams.delete(TICKET_PARAM);
      const clean = url.pathname + (url.search === '?' ? '' : url.search);
      req.url = clean; // never let a key or ticket reach a logged URL
      if (ticket !== null) return this.redeem(req, res, ticket, clean);
      const who = await this.check(loginKey!, true);
      if (!who) return this.deny(req, res, 'the login link is invalid, expired or already used');
      // A host of its own for this login, reached with a one-time ticket (see the file header).
      const base = (this.opts.hostname ?? requestHost(req)).replace(SESSION_HOST, '');
      const host = `s${randomBytes(16).toString('hex')}.${base}`;
      const t = randomBytes(32).toString('base64url');
      if (this.tickets.size > 10_000) this.tickets.clear();
      this.tickets.set(t, {
        sessionId: this.openSession(who, host),
        until: Date.now() + TICKET_MS,
      });
      const port = requestPort(req);
      const sep = clean.includes('?') ? '&' : '?';
      res.writeHead(303, {
        Location: `https://${host}${port ? `:${port}` : ''}${clean}${sep}${TICKET_PARAM}=${t}`,
        'Cache-Control': 'no-store',
        'Referrer-Policy': 'no-referrer',
      });
      res.end();
      return false;
    }
    const principal = await this.principalOf(req);
    if (!principal)
      return this.deny(
        req,
        res,
        'present a key: Authorization: Bearer <key>, or open the login link (broker open NAME)',
      );
    req.brokerPrincipal = principal;
    return true;
  }

  /** The second step of a login: on the session's own host, the ticket becomes its cookie. */
  private redeem(req: IncomingMessage, res: ServerResponse, ticket: string, clean: string): false {
    const t = this.tickets.get(ticket);
    this.tickets.delete(ticket);
    const s = t && t.until > Date.now() ? this.sessions.get(t.sessionId) : undefined;
    if (!s || s.host !== requestHost(req))
      return this.deny(req, res, 'the login link is invalid, expired or already used');
    res.writeHead(303, {
      Location: clean,
      'Set-Cookie': `${this.cookieName}=${t!.sessionId}; HttpOnly; Secure; SameSite=Strict; Path=/`,
      'Cache-Control': 'no-store',
      'Referrer-Policy': 'no-referrer',
    });
    res.end();
    return false;
  }

  /** 401: JSON for programs, a page for browsers. */
  private deny(req: IncomingMessage, res: ServerResponse, message: string): false {
    const html = /\btext\/html\b/.test(req.headers.accept ?? '');
    const body = html
      ? `<!doctype html><html lang="en"><meta charset="utf-8"><title>Log in</title>` +
        `<h1>This service needs a key</h1><p>${message.replace(/[<>&]/g, '')}.</p>` +
        `<p>Run <code>broker open NAME</code> and open the link it prints.</p></html>\n`
      : JSON.stringify({ error: { code: 'unauthenticated', message } });
    res.writeHead(401, {
      'Content-Type': html ? 'text/html; charset=utf-8' : 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
    });
    res.end(body);
    return false;
  }

  /**
   * Check a WebSocket (or any) upgrade like a request: `server.on('upgrade', (req, socket, head)
   * => gate.upgrade(req, socket, head, (req, socket, head) => wss.handleUpgrade(...)))`. The
   * upgraded connection ends when the key it was opened with stops holding.
   */
  upgrade(
    req: GatedRequest,
    socket: Duplex,
    head: Buffer,
    next: (req: GatedRequest, socket: Duplex, head: Buffer) => void,
  ): void {
    socket.on('error', () => socket.destroy());
    // A key in an upgrade URL authenticates nothing (upgrades carry a bearer or the session
    // cookie) and must not reach the app or its logs.
    if (req.url?.includes('?')) {
      const url = new URL(req.url, 'https://gate.invalid');
      if (url.searchParams.has(LOGIN_PARAM) || url.searchParams.has(TICKET_PARAM)) {
        url.searchParams.delete(LOGIN_PARAM);
        url.searchParams.delete(TICKET_PARAM);
        req.url = url.pathname + (url.search === '?' ? '' : url.search);
      }
    }
    void this.identify(req).then((who) => {
      if (socket.destroyed) return; // the client left during the verify
      if (!who) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      req.brokerPrincipal = who.principal;
      if (who.keyId && this.keyWatch) {
        const stop = this.keyWatch.watch(who.keyId, () => socket.destroy());
        socket.once('close', stop);
      }
      next(req, socket, head);
    });
  }

  /** Stop re-checking keys (the server is closing). */
  close(): void {
    if (!this.opts.keyWatch) this.keyWatch?.close();
  }
}

/** A gate for an HTTPS service; see {@link HttpGate}. */
export function httpGate(opts: HttpGateOptions): HttpGate {
  return new HttpGate(opts);
}

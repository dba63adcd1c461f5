/**
 * The HTTPS gate (DESIGN §7) for express or plain node:http servers: a request passes with
 * `Authorization: Bearer <key>`, or with a session cookie obtained through a one-time login URL
 * `…/?broker_key=<key>`, which is exchanged for an `HttpOnly; Secure; SameSite=Strict` cookie
 * bound to a server-side session and answered with a redirect to the same URL without the key.
 * WebSocket upgrades are checked the same way. The key is removed from `req.url` before anything
 * else sees it, so it never reaches a logged URL.
 *
 * Positive verifies are cached for `cacheMs` (default 5 s): a revoked key keeps working on this
 * server for at most that long. Sessions live `sessionTtlMs` (default 12 h) or until the key that
 * opened them expires, whichever is first.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { VerifyResponse } from '../protocol/types.js';

export interface HttpGateOptions {
  verify: (key: string) => Promise<VerifyResponse>;
  /** How long a positive verify is reused (the revocation delay). */
  cacheMs?: number;
  sessionTtlMs?: number;
  cookieName?: string;
  /**
   * mTLS: principals whose broker-issued client certificate (CN = principal) lets them in
   * without a key. The TLS layer (tlsOptions with requireClientCert) has already checked that the
   * certificate chains to the broker CA.
   */
  clientCertAllow?: string[];
}

export interface GatedRequest extends IncomingMessage {
  /** Who the key belongs to, once the gate let the request through. */
  brokerPrincipal?: string;
}

type Who = { principal: string; expiresAt: number };

const LOGIN_PARAM = 'broker_key';

export class HttpGate {
  private readonly cache = new Map<string, { at: number; who: Who }>();
  private readonly sessions = new Map<string, Who>();
  private readonly cacheMs: number;
  private readonly sessionTtlMs: number;
  readonly cookieName: string;

  constructor(private readonly opts: HttpGateOptions) {
    this.cacheMs = opts.cacheMs ?? 5000;
    this.sessionTtlMs = opts.sessionTtlMs ?? 12 * 3600e3;
    this.cookieName = opts.cookieName ?? 'broker_session';
  }

  private async check(key: string): Promise<Who | null> {
    const h = createHash('sha256').update(key).digest('hex');
    const now = Date.now();
    const hit = this.cache.get(h);
    if (hit && now - hit.at < this.cacheMs && hit.who.expiresAt > now) return hit.who;
    let r: VerifyResponse;
    try {
      r = await this.opts.verify(key);
    } catch {
      return null;
    }
    if (!r.valid) {
      this.cache.delete(h);
      return null;
    }
    const who = { principal: r.principal, expiresAt: Date.parse(r.expiresAt) };
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(h, { at: now, who });
    return who;
  }

  private session(req: IncomingMessage): Who | null {
    const cookies = req.headers.cookie ?? '';
    for (const part of cookies.split(';')) {
      const [k, v] = part.trim().split('=');
      if (k !== this.cookieName || !v) continue;
      const s = this.sessions.get(v);
      if (s && s.expiresAt > Date.now()) return s;
      if (s) this.sessions.delete(v);
    }
    return null;
  }

  /** The principal behind a request's client certificate, bearer key or session cookie, or null. */
  async principalOf(req: IncomingMessage): Promise<string | null> {
    const tls = req.socket as TLSSocket;
    if (
      this.opts.clientCertAllow &&
      tls.authorized &&
      typeof tls.getPeerCertificate === 'function'
    ) {
      const cn = tls.getPeerCertificate()?.subject?.CN;
      if (typeof cn === 'string' && this.opts.clientCertAllow.includes(cn)) return cn;
    }
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer '))
      return (await this.check(auth.slice(7).trim()))?.principal ?? null;
    return this.session(req)?.principal ?? null;
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
    // Only a query that can name the parameter (literally, or with any of its letters
    // percent-encoded) is parsed: most requests carry a bearer or a cookie, and URL parsing is a
    // visible part of the per-request cost.
    const q = req.url?.indexOf('?') ?? -1;
    const url =
      q >= 0 && (req.url!.includes(LOGIN_PARAM, q) || req.url!.includes('%', q))
        ? new URL(req.url!, 'https://gate.invalid')
        : undefined;
    const loginKey = url?.searchParams.get(LOGIN_PARAM) ?? null;
    if (url && loginKey !== null) {
      url.searchParams.delete(LOGIN_PARAM);
      const clean = url.pathname + (url.search === '?' ? '' : url.search);
      req.url = clean; // never let the key reach a logged URL
      const who = await this.check(loginKey);
      if (!who) return this.deny(res, 'the login link is invalid, expired or already used');
      const id = randomBytes(32).toString('base64url');
      this.sessions.set(id, {
        principal: who.principal,
        expiresAt: Math.min(who.expiresAt, Date.now() + this.sessionTtlMs),
      });
      res.writeHead(303, {
        Location: clean,
        'Set-Cookie': `${this.cookieName}=${id}; HttpOnly; Secure; SameSite=Strict; Path=/`,
        'Cache-Control': 'no-store',
      });
      res.end();
      return false;
    }
    const principal = await this.principalOf(req);
    if (!principal)
      return this.deny(
        res,
        'present a key: Authorization: Bearer <key>, or open the login link (broker open NAME)',
      );
    req.brokerPrincipal = principal;
    return true;
  }

  private deny(res: ServerResponse, message: string): false {
    const body = JSON.stringify({ error: { code: 'unauthenticated', message } });
    res.writeHead(401, {
      'Content-Type': 'application/json',
      'Content-Length': Buffer.byteLength(body),
      'Cache-Control': 'no-store',
    });
    res.end(body);
    return false;
  }

  /**
   * Check a WebSocket (or any) upgrade like a request: `server.on('upgrade', (req, socket, head)
   * => gate.upgrade(req, socket, head, (req, socket, head) => wss.handleUpgrade(...)))`.
   */
  upgrade(
    req: GatedRequest,
    socket: Duplex,
    head: Buffer,
    next: (req: GatedRequest, socket: Duplex, head: Buffer) => void,
  ): void {
    socket.on('error', () => socket.destroy());
    void this.principalOf(req).then((principal) => {
      if (socket.destroyed) return; // the client left during the verify
      if (!principal) {
        socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      req.brokerPrincipal = principal;
      next(req, socket, head);
    });
  }
}

/** A gate for an HTTPS service; see {@link HttpGate}. */
export function httpGate(opts: HttpGateOptions): HttpGate {
  return new HttpGate(opts);
}

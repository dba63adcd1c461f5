/**
 * Bearer authentication: a user token names a principal, a service token names one service.
 * Client keys are never API credentials. Lookups go by SHA-256 digest and end in a constant-time
 * comparison; unknown tokens take the same path (KEY-3).
 */
import { BrokerError } from '../protocol/errors.js';
import { secretKind } from '../protocol/tokens.js';
import type { Clock } from './clock.js';
import { digestMatches, hashSecret } from './secrets.js';
import type { PrincipalRow, ServiceRow, Store } from './store/store.js';

export type Identity =
  | { kind: 'principal'; principal: PrincipalRow; tokenId: string }
  | { kind: 'service'; service: ServiceRow };

/** The audit/actor name of an identity. */
export function actorOf(id: Identity): string {
  return id.kind === 'principal'
    ? id.principal.name
    : `${id.service.owner}/${id.service.name}#service`;
}

const BEARER = /^Bearer ([^\s]{1,200})$/;

/** How long verify may reuse a service token's identity (see `authenticateForVerify`). */
export const SERVICE_IDENTITY_CACHE_MS = 2000;
const SERVICE_CACHE_MAX = 4096;

export class Authenticator {
  /** Service identities for the verify hot path, by token digest (hex). */
  private readonly serviceCache = new Map<string, { at: number; id: Identity }>();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

  /**
   * `authenticate` for POST /v1/verify, which every gated connection costs: a service token's
   * identity is reused for up to 2 s. That is safe for verify alone: it uses only the service id,
   * and a removed service's keys are deleted with it, so a stale identity can only answer
   * `valid: false`. Unknown and user tokens are never cached.
   */
  /** A service left the registry: its token must stop working at once, cache or not. */
  forgetServices(): void {
    this.serviceCache.clear();
  }

  authenticateForVerify(secret: string): Identity {
    const now = this.clock.now();
    const digestHex = secretKind(secret) === 'service' ? hashSecret(secret).toString('hex') : null;
    const hit = digestHex ? this.serviceCache.get(digestHex) : undefined;
    if (hit && now - hit.at < SERVICE_IDENTITY_CACHE_MS) return hit.id;
    const id = this.authenticate(secret);
    if (digestHex && id.kind === 'service') {
      if (this.serviceCache.size >= SERVICE_CACHE_MAX) this.serviceCache.clear();
      this.serviceCache.set(digestHex, { at: now, id });
    }
    return id;
  }

  /** Parse an `Authorization` header value into a bearer secret, or throw 401. */
  static bearer(header: string | undefined): string {
    if (!header) throw new BrokerError('unauthenticated', 'missing Authorization: Bearer <token>');
    const m = BEARER.exec(header);
    if (!m)
      throw new BrokerError(
        'unauthenticated',
        'malformed Authorization header; expected Bearer <token>',
      );
    return m[1]!;
  }

  /** Resolve a presented secret to an identity; any failure is the same 401. */
  authenticate(secret: string): Identity {
    const kind = secretKind(secret);
    const digest = hashSecret(secret);
    if (kind === 'service') {
      const service = this.store.findServiceByTokenHash(digest);
      // Compare first, unconditionally: unknown tokens take the same path (KEY-3).
      if (digestMatches(service?.tokenHash, digest) && service) return { kind: 'service', service };
    } else if (kind === 'user') {
      const token = this.store.findTokenByHash(digest);
      const now = this.clock.now();
      if (
        digestMatches(token?.hash, digest) &&
        token &&
        token.revokedAt === null &&
        (token.expiresAt === null || token.expiresAt > now)
      ) {
        const principal = this.store.getPrincipal(token.principal);
        if (principal && !principal.disabled)
          return { kind: 'principal', principal, tokenId: token.id };
      }
    } else {
      digestMatches(null, digest);
      if (kind === 'key')
        throw new BrokerError(
          'unauthenticated',
          'a client key is not an API credential; use a user or service token',
        );
    }
    throw new BrokerError('unauthenticated', 'invalid, expired or revoked token');
  }
}

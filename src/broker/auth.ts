/**
 * Bearer authentication: a user token names a principal, a service token names one service.
 * Client keys are never API credentials. Lookups go by SHA-256 digest and end in a constant-time
 * comparison; unknown tokens take the same path (KEY-3).
 */
import { BrokerError } from '../protocol/errors.js';
import { secretKind } from '../protocol/tokens.js';
import type { ChangeFeed } from './changes.js';
import type { Clock } from './clock.js';
import { digestMatches, hashSecret } from './secrets.js';
import type { PrincipalRow, ServiceRow, Store } from './store/store.js';

export type Identity =
  | {
      kind: 'principal';
      principal: PrincipalRow;
      /** `tok_…` for a user token, `ssh:SHA256:…` for an SSH key, `bootstrap` at first start. */
      tokenId: string;
      /** When the credential behind this identity ends (null: no end); what it mints ends too. */
      tokenExpiresAt: number | null;
    }
  | { kind: 'service'; service: ServiceRow };

/** The user token an identity was authenticated with, if it was one (what it mints records it). */
export function mintingToken(id: Identity): string | null {
  return id.kind === 'principal' && id.tokenId.startsWith('tok_') ? id.tokenId : null;
}

/**
 * Principal rows for hot paths (verify checks the key's principal on every call), by name. The
 * change feed drops an entry the moment its principal changes; the TTL only bounds what another
 * process writing the same store could leave stale.
 */
export class PrincipalCache {
  private readonly rows = new Map<string, { at: number; row: PrincipalRow | null }>();

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    changes?: ChangeFeed,
    private readonly ttlMs = 2000,
  ) {
    changes?.subscribe((c) => {
      if (c.kind === 'principal.changed') this.rows.delete(c.name);
    });
  }

  get(name: string): PrincipalRow | null {
    const now = this.clock.now();
    const hit = this.rows.get(name);
    if (hit && now - hit.at < this.ttlMs) return hit.row;
    const row = this.store.getPrincipal(name);
    if (this.rows.size >= 4096) this.rows.clear();
    this.rows.set(name, { at: now, row });
    return row;
  }
}

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
    changes?: ChangeFeed,
  ) {
    // A removed service, a changed owner or a revoked token: cached service identities may be
    // stale, so none survives (changes are rare; the cache refills in one lookup each).
    changes?.subscribe((c) => {
      if (c.kind !== 'key.revoked') this.serviceCache.clear();
    });
  }

  /**
   * `authenticate` for POST /v1/verify, which every gated connection costs: a service token's
   * identity is reused for up to 2 s, unless the change feed says its service or owner changed
   * (then at once). Unknown and user tokens are never cached.
   */
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
      // Compare first, unconditionally: unknown tokens take the same path (KEY-3). A service
      // token is worth nothing once its owner is disabled or gone (SES-2).
      if (digestMatches(service?.tokenHash, digest) && service && this.ownerActive(service))
        return { kind: 'service', service };
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
          return {
            kind: 'principal',
            principal,
            tokenId: token.id,
            tokenExpiresAt: token.expiresAt,
          };
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

  private ownerActive(s: ServiceRow): boolean {
    const owner = this.store.getPrincipal(s.owner);
    return owner !== null && !owner.disabled;
  }

  /**
   * An identity as it stands now, for state that outlives one request (an SSH connection): null
   * when its credential was revoked or expired, its principal disabled or removed, its SSH key
   * removed, or (a service token) its service removed or owner disabled. Otherwise the identity
   * with the current principal row, so a demotion takes effect (SES-2).
   */
  current(id: Identity): Identity | null {
    const now = this.clock.now();
    if (id.kind === 'service') {
      const service = this.store.getServiceById(id.service.id);
      return service && this.ownerActive(service) ? { kind: 'service', service } : null;
    }
    const principal = this.store.getPrincipal(id.principal.name);
    if (!principal || principal.disabled) return null;
    if (id.tokenExpiresAt !== null && id.tokenExpiresAt <= now) return null;
    if (id.tokenId.startsWith('tok_')) {
      const t = this.store.getToken(id.tokenId);
      if (!t || t.revokedAt !== null || t.principal !== principal.name) return null;
    } else if (id.tokenId.startsWith('ssh:')) {
      if (!this.store.findSshKey(principal.name, id.tokenId.slice(4))) return null;
    }
    return { ...id, principal };
  }
}

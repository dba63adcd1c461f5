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

export class Authenticator {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
  ) {}

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

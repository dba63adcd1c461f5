/**
 * Secrets of DESIGN §3: generation, hashing and constant-time comparison (SECURITY.md KEY-1..3).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { customAlphabet, nanoid } from 'nanoid';
import { SECRET_BODY_LENGTH, TOKEN_PREFIX, type SecretKind } from '../protocol/tokens.js';

/** A new secret: prefix + 43 characters (258 bits) from the CSPRNG. */
export function newSecret(kind: SecretKind): string {
  return TOKEN_PREFIX[kind] + nanoid(SECRET_BODY_LENGTH);
}

const idAlphabet = customAlphabet('0123456789abcdefghijklmnopqrstuvwxyz', 16);

/** A public identifier such as `svc_…`, `key_…`, `tok_…` (not a secret: 82 bits, unguessable enough to not collide). */
export function newId(prefix: 'svc' | 'key' | 'tok' | 'crt'): string {
  return `${prefix}_${idAlphabet()}`;
}

/** SHA-256 digest of a secret: what the store keeps and looks up by. */
export function hashSecret(secret: string): Buffer {
  return createHash('sha256').update(secret, 'utf8').digest();
}

const DUMMY = Buffer.alloc(32);

/**
 * Compare a stored digest with the digest of a presented secret in constant time. An unknown
 * secret (no stored digest) goes through the same comparison against a dummy value.
 */
export function digestMatches(stored: Buffer | null | undefined, presented: Buffer): boolean {
  const ok = timingSafeEqual(stored && stored.length === 32 ? stored : DUMMY, presented);
  return ok && stored != null;
}

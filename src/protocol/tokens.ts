/**
 * Credential formats of DESIGN §3. Every secret is a fixed prefix and 43 characters of nanoid's
 * 64-letter URL-safe alphabet: 43 × 6 = 258 bits from the CSPRNG.
 */
export const TOKEN_PREFIX = {
  user: 'bku_',
  service: 'bks_',
  key: 'bkk_',
} as const;

export type SecretKind = keyof typeof TOKEN_PREFIX;

/** Characters after the prefix. */
export const SECRET_BODY_LENGTH = 43;

const SECRET_RE = /^bk[usk]_[A-Za-z0-9_-]{43}$/;

/** The kind of a well-formed secret, or null for anything else. Format only: it proves nothing. */
export function secretKind(value: string): SecretKind | null {
  if (value.length !== 47 || !SECRET_RE.test(value)) return null;
  switch (value[2]) {
    case 'u':
      return 'user';
    case 's':
      return 'service';
    default:
      return 'key';
  }
}

/** KEY-1: 256-bit secrets with fixed prefixes, no duplicates. KEY-3: constant-time digests. */
import { describe, expect, it, vi } from 'vitest';

vi.mock('node:crypto', async (orig) => {
  const real = await orig<typeof import('node:crypto')>();
  return { ...real, timingSafeEqual: vi.fn(real.timingSafeEqual) };
});

const crypto = await import('node:crypto');
const { newSecret, hashSecret, digestMatches } = await import('../../src/broker/secrets.js');
const { secretKind } = await import('../../src/protocol/tokens.js');
const { Authenticator } = await import('../../src/broker/auth.js');
const { SqliteStore } = await import('../../src/broker/store/sqlite-store.js');
const { ManualClock } = await import('../../src/broker/clock.js');

describe('KEY-1: secrets', () => {
  it('a million client keys: prefix, 43 URL-safe characters, no duplicate', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 1_000_000; i++) {
      const k = newSecret('key');
      if (i < 1000) expect(k).toMatch(/^bkk_[A-Za-z0-9_-]{43}$/);
      seen.add(k);
    }
    expect(seen.size).toBe(1_000_000);
  });

  it('each kind has its own prefix and is recognised by format only', () => {
    expect(secretKind(newSecret('user'))).toBe('user');
    expect(secretKind(newSecret('service'))).toBe('service');
    expect(secretKind(newSecret('key'))).toBe('key');
    expect(secretKind('bkk_short')).toBeNull();
    expect(secretKind('bkx_' + 'a'.repeat(43))).toBeNull();
  });

  it('43 characters of a 64-letter alphabet carry ≥ 256 bits', () => {
    expect(43 * Math.log2(64)).toBeGreaterThanOrEqual(256);
  });
});

describe('KEY-3: constant-time comparison on digests', () => {
  it('digestMatches compares with timingSafeEqual, also for unknown secrets', () => {
    const spy = vi.mocked(crypto.timingSafeEqual);
    spy.mockClear();
    const h = hashSecret('bkk_x');
    expect(digestMatches(h, h)).toBe(true);
    expect(digestMatches(null, h)).toBe(false);
    expect(digestMatches(hashSecret('other'), h)).toBe(false);
    expect(spy).toHaveBeenCalledTimes(3);
  });

  it('authentication of unknown, malformed and valid tokens all pass through timingSafeEqual', () => {
    const store = new SqliteStore(':memory:');
    const clock = new ManualClock();
    const token = newSecret('user');
    store.createPrincipal(
      { name: 'alice', role: 'user', disabled: false, createdAt: clock.now() },
      {
        id: 'tok_0000000000000000',
        hash: hashSecret(token),
        principal: 'alice',
        label: null,
        createdAt: clock.now(),
        expiresAt: null,
        revokedAt: null,
      },
    );
    const auth = new Authenticator(store, clock);
    const spy = vi.mocked(crypto.timingSafeEqual);
    for (const t of [token, newSecret('user'), newSecret('service'), 'garbage']) {
      spy.mockClear();
      try {
        auth.authenticate(t);
      } catch {
        /* 401 expected for all but the first */
      }
      expect(spy, t.slice(0, 4)).toHaveBeenCalledTimes(1);
    }
    expect(auth.authenticate(token)).toMatchObject({ kind: 'principal' });
    store.close();
  });
});

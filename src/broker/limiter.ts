/**
 * Backoff for failed attempts (SECURITY.md BF-1, BF-4). Each key (a service, a source address)
 * may fail `maxFailures` times per window; past that it is blocked for a backoff that doubles
 * with each block (capped), then the window starts over. Blocking refuses only *failures*:
 * callers check validity first, so the right key always works and an attacker cannot lock the
 * owner out. State is an LRU of at most `maxEntries` keys, whatever the input.
 */
import type { Clock } from './clock.js';

export interface LimiterPolicy {
  maxFailures: number;
  windowMs: number;
  baseBlockMs: number;
  maxBlockMs: number;
  maxEntries: number;
}

interface Entry {
  windowStart: number;
  failures: number;
  blockedUntil: number;
  strikes: number;
}

export type FailureVerdict =
  { blocked: false } | { blocked: true; retryAfterMs: number; justBlocked: boolean };

export class FailureLimiter {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly policy: LimiterPolicy,
    private readonly clock: Clock,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  private entry(key: string, now: number): Entry {
    let e = this.entries.get(key);
    if (e)
      this.entries.delete(key); // re-inserted below: most recently used last
    else e = { windowStart: now, failures: 0, blockedUntil: 0, strikes: 0 };
    this.entries.set(key, e);
    if (this.entries.size > this.policy.maxEntries) {
      this.entries.delete(this.entries.keys().next().value!);
    }
    return e;
  }

  /** Is `key` blocked right now (without recording anything)? */
  blocked(key: string): number {
    const e = this.entries.get(key);
    const now = this.clock.now();
    return e && e.blockedUntil > now ? e.blockedUntil - now : 0;
  }

  /** Record a failure for `key`; says whether the caller must now answer 429. */
  fail(key: string): FailureVerdict {
    const now = this.clock.now();
    const e = this.entry(key, now);
    if (e.blockedUntil > now)
      return { blocked: true, retryAfterMs: e.blockedUntil - now, justBlocked: false };
    if (now - e.windowStart >= this.policy.windowMs) {
      e.windowStart = now;
      e.failures = 0;
      // A quiet window forgives one strike.
      if (e.blockedUntil > 0 && now - e.blockedUntil >= this.policy.windowMs)
        e.strikes = Math.max(0, e.strikes - 1);
    }
    e.failures++;
    if (e.failures <= this.policy.maxFailures) return { blocked: false };
    e.strikes++;
    const block = Math.min(this.policy.maxBlockMs, this.policy.baseBlockMs * 2 ** (e.strikes - 1));
    e.blockedUntil = now + block;
    e.windowStart = e.blockedUntil;
    e.failures = 0;
    return { blocked: true, retryAfterMs: block, justBlocked: true };
  }
}

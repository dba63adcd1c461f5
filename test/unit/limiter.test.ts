/** BF-1 backoff policy and BF-4 bounded state, with an injected clock. */
import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../src/broker/clock.js';
import { FailureLimiter } from '../../src/broker/limiter.js';

const policy = {
  maxFailures: 3,
  windowMs: 60_000,
  baseBlockMs: 10_000,
  maxBlockMs: 40_000,
  maxEntries: 1000,
};

describe('FailureLimiter', () => {
  it('allows maxFailures per window, then blocks with a doubling, capped backoff', () => {
    const clock = new ManualClock();
    const l = new FailureLimiter(policy, clock);
    for (let i = 0; i < 3; i++) expect(l.fail('s').blocked).toBe(false);
    expect(l.fail('s')).toEqual({ blocked: true, retryAfterMs: 10_000, justBlocked: true });
    expect(l.fail('s')).toMatchObject({ blocked: true, justBlocked: false });
    clock.advance(10_001);
    for (let i = 0; i < 3; i++) expect(l.fail('s').blocked).toBe(false);
    expect(l.fail('s')).toMatchObject({ blocked: true, retryAfterMs: 20_000 });
    clock.advance(20_001);
    for (let i = 0; i < 3; i++) l.fail('s');
    expect(l.fail('s')).toMatchObject({ retryAfterMs: 40_000 });
    clock.advance(40_001);
    for (let i = 0; i < 3; i++) l.fail('s');
    expect(l.fail('s')).toMatchObject({ retryAfterMs: 40_000 }); // capped
  });

  it('keys are independent; a quiet window forgives a strike', () => {
    const clock = new ManualClock();
    const l = new FailureLimiter(policy, clock);
    for (let i = 0; i < 4; i++) l.fail('a');
    expect(l.blocked('a')).toBeGreaterThan(0);
    expect(l.blocked('b')).toBe(0);
    expect(l.fail('b').blocked).toBe(false);
    clock.advance(10_000 + 60_000 + 60_000);
    for (let i = 0; i < 3; i++) expect(l.fail('a').blocked).toBe(false);
    expect(l.fail('a')).toMatchObject({ retryAfterMs: 10_000 });
  });

  it('BF-4: 200,000 distinct keys never hold more than maxEntries', () => {
    const l = new FailureLimiter(policy, new ManualClock());
    for (let i = 0; i < 200_000; i++) l.fail(`src:${i}`);
    expect(l.size).toBe(1000);
  });
});

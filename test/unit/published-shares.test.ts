/**
 * LOC-5: the published-port pool's bookkeeping — a cap per source across services, a fair pool per
 * service, uncapped sources, eviction and releases that may come twice.
 */
import { describe, expect, it } from 'vitest';
import { PublishedShares } from '../../src/broker/ssh/published-shares.js';

const noop = () => undefined;

describe('PublishedShares', () => {
  it('fail/LOC-5 a source holds at most its cap, all services together', () => {
    const s = new PublishedShares({ perSource: 2, perService: 10 });
    expect(s.admit('svc-a', 'uid:1', noop)).not.toBeNull();
    expect(s.admit('svc-b', 'uid:1', noop)).not.toBeNull();
    expect(s.admit('svc-c', 'uid:1', noop)).toBeNull();
    expect(s.admit('svc-a', 'uid:2', noop)).not.toBeNull();
    expect([s.held('uid:1'), s.held('uid:2'), s.size]).toEqual([2, 1, 3]);
    expect(s.heldFor('svc-c')).toBe(0);
  });

  it('ok/LOC-5 a release frees the slot once, however often it is called', () => {
    const s = new PublishedShares({ perSource: 1, perService: 10 });
    const release = s.admit('svc-a', 'uid:1', noop)!;
    release();
    release();
    expect([s.size, s.held('uid:1'), s.heldFor('svc-a')]).toEqual([0, 0, 0]);
    expect(s.admit('svc-a', 'uid:1', noop)).not.toBeNull();
  });

  it('fail/LOC-5 a full service gives the oldest slot of the heaviest source to a lighter newcomer', () => {
    const s = new PublishedShares({ perSource: 3, perService: 4 });
    const evicted: string[] = [];
    for (let i = 0; i < 3; i++) s.admit('svc', 'uid:1', () => evicted.push(`uid:1#${i}`));
    s.admit('svc', 'uid:2', () => evicted.push('uid:2#0'));
    // Full; uid:3 holds none: uid:1's oldest goes.
    expect(s.admit('svc', 'uid:3', noop)).not.toBeNull();
    expect(evicted).toEqual(['uid:1#0']);
    expect([s.held('uid:1'), s.held('uid:3'), s.heldFor('svc'), s.size]).toEqual([2, 1, 4, 4]);
    // Everyone holds no more than a newcomer from uid:2 would: refused, nobody evicted.
    expect(s.admit('svc', 'uid:2', noop)).toBeNull();
    expect(evicted).toEqual(['uid:1#0']);
  });

  it('ok/LOC-5 uncapped sources (root, the broker) have only the service cap', () => {
    const s = new PublishedShares({ perSource: 1, perService: 3 });
    expect(s.admit('svc', 'uid:0', noop, true)).not.toBeNull();
    expect(s.admit('svc', 'uid:0', noop, true)).not.toBeNull();
    expect(s.admit('svc', 'uid:0', noop, true)).not.toBeNull();
    expect(s.admit('svc', 'uid:0', noop, true)).toBeNull();
    // A capped newcomer still gets in: root holds the most.
    expect(s.admit('svc', 'uid:5', noop)).not.toBeNull();
    expect([s.held('uid:0'), s.held('uid:5')]).toEqual([2, 1]);
  });
});

/**
 * Who may hold connections to the published ports of other users' services (SECURITY.md LOC-5).
 * A published port (`127.0.0.1:PORT` on the broker host) is open to every local user, and the
 * gateway cannot see the key a client presents (the gate behind the tunnel checks it, and waits up
 * to 10 s for it), so every connection from a user other than the service's owner is counted as
 * unauthenticated for its whole life, in a pool of its own — never in the owner's channel share,
 * which her own forwards, tunnels and `broker open` need. Two caps, after nginx's `limit_conn`
 * with a per-client key and HAProxy's per-source connection limits:
 *
 * - per source (a local UID, or a loopback address when the kernel cannot say whose it is): the
 *   connections it holds to all published ports of services it does not own, together;
 * - per service: the connections of all such sources to one service's port; when it is full, a
 *   newcomer from a source holding fewer takes the oldest connection of the source holding the
 *   most ({@link FairShares}), so one user, or a few, cannot keep a third out.
 */
import { FairShares } from '../fair-shares.js';

/** The caps of {@link PublishedShares}, in connections held at once. */
export interface PublishedShareLimits {
  /** Connections one source holds to published ports of services it does not own, together. */
  perSource: number;
  /** Connections to one service's published port from sources other than its owner. */
  perService: number;
}

export class PublishedShares {
  /** One fair pool per service with connections now; dropped when it empties. */
  private readonly pools = new Map<string, FairShares>();
  /** Connections by source, all services together. */
  private readonly bySource = new Map<string, number>();
  private total = 0;

  constructor(private readonly limits: PublishedShareLimits) {}

  /** Connections counted here now, all services and sources together. */
  get size(): number {
    return this.total;
  }

  /** Connections `source` holds now, all services together. */
  held(source: string): number {
    return this.bySource.get(source) ?? 0;
  }

  /** Connections counted for `serviceId` now. */
  heldFor(serviceId: string): number {
    return this.pools.get(serviceId)?.size ?? 0;
  }

  /**
   * Count a new connection from `source` to `serviceId`'s published port. `evict` is called if
   * its slot is later given to a newcomer (the caller drops the connection). Returns the release
   * (call it when the connection closes; calling it twice is harmless), or null when refused: the
   * source is at its own cap, or the service's pool is full and no source holds more there than
   * this one would. `uncapped` sources (root, the broker's own user) have no cap of their own,
   * only the service's.
   */
  admit(
    serviceId: string,
    source: string,
    evict: () => void,
    uncapped = false,
  ): (() => void) | null {
    if (!uncapped && this.held(source) >= this.limits.perSource) return null;
    let pool = this.pools.get(serviceId);
    if (!pool) {
      pool = new FairShares({ max: this.limits.perService, perSource: this.limits.perSource });
      this.pools.set(serviceId, pool);
    }
    const thePool = pool;
    let fromPool: (() => void) | null = null;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      fromPool?.();
      this.total--;
      const n = this.held(source) - 1;
      if (n > 0) this.bySource.set(source, n);
      else this.bySource.delete(source);
      if (thePool.size === 0 && this.pools.get(serviceId) === thePool) this.pools.delete(serviceId);
    };
    fromPool = pool.admit(
      source,
      () => {
        release();
        evict();
      },
      uncapped,
    );
    if (!fromPool) {
      if (pool.size === 0) this.pools.delete(serviceId);
      return null;
    }
    this.total++;
    this.bySource.set(source, this.held(source) + 1);
    return release;
  }
}

/**
 * Connection slots shared fairly between sources (SECURITY.md LOC-5, SSH-3, NET-3): the SSH
 * gateway's pre-authentication slots and the API's connections. A source is a local Unix user (a
 * loopback connection attributed by the kernel's socket table) or a remote address. The anchors
 * are OpenSSH's `MaxStartups` (a global cap) and `PerSourceMaxStartups` (a cap per source): one
 * user holding connections can fill at most its own share, and when the global cap is reached a
 * newcomer from a source holding fewer slots takes the oldest slot of the source holding the most.
 * So no single source can lock the others out.
 */

/**
 * Sources with no cap of their own, only the overall one, as the shares name them (`uid:N`): root
 * and the user the broker runs as (tools and tests on the broker host).
 */
export function uncappedSources(): ReadonlySet<string> {
  return new Set([0, process.getuid?.() ?? 0].map((uid) => `uid:${uid}`));
}

export interface ShareLimits {
  /** Connections at once, all sources together. */
  max: number;
  /** Connections at once from one source (unless admitted as `unlimited`). */
  perSource: number;
}

interface Slot {
  source: string;
  evict: () => void;
  released: boolean;
}

export class FairShares {
  /** Slots by source, oldest first. */
  private readonly bySource = new Map<string, Slot[]>();
  private total = 0;

  constructor(private readonly limits: ShareLimits) {}

  /** Unauthenticated connections now. */
  get size(): number {
    return this.total;
  }

  /** Slots `source` holds now. */
  held(source: string): number {
    return this.bySource.get(source)?.length ?? 0;
  }

  /**
   * Take a slot for a new connection from `source`. `evict` is called if the slot is later given
   * to someone else (the caller drops the connection). Returns the release function (call it when
   * the connection authenticates or closes; calling it twice is harmless), or null when refused:
   * the source is at its own cap, or every source holds no more than this one would.
   * `unlimited` sources (root, the broker's own user) have no cap of their own, only the global one.
   */
  admit(source: string, evict: () => void, unlimited = false): (() => void) | null {
    const mine = this.held(source);
    if (!unlimited && mine >= this.limits.perSource) return null;
    if (this.total >= this.limits.max) {
      let victim: Slot[] | undefined;
      for (const slots of this.bySource.values())
        if (!victim || slots.length > victim.length) victim = slots;
      // Only a source holding more than this one would after admission gives a slot up.
      if (!victim || victim.length <= mine + 1) return null;
      const oldest = victim[0]!;
      this.drop(oldest);
      oldest.evict();
    }
    const slot: Slot = { source, evict, released: false };
    let slots = this.bySource.get(source);
    if (!slots) this.bySource.set(source, (slots = []));
    slots.push(slot);
    this.total++;
    return () => this.drop(slot);
  }

  private drop(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    this.total--;
    const slots = this.bySource.get(slot.source)!;
    slots.splice(slots.indexOf(slot), 1);
    if (slots.length === 0) this.bySource.delete(slot.source);
  }
}

/**
 * The audit trail: an append-only table. Events are buffered and written in one transaction every
 * `flushMs` (off the verify hot path); identical events inside one window (same action, target,
 * actor, source, outcome) are counted instead of written one line each, so 10,000 failed verifies
 * become a handful of rows. Secrets are never passed in: callers give ids and names only.
 */
import type { AuditRow, Store } from './store/store.js';
import type { Clock } from './clock.js';
import { printable } from '../protocol/text.js';

export type AuditInput = Omit<AuditRow, 'at' | 'count'> & { count?: number };

export class AuditLog {
  private pending = new Map<string, AuditRow>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly onError: (err: unknown) => void,
    private readonly flushMs = 200,
    private readonly maxPending = 1000,
  ) {}

  /**
   * Queue an event. Events with the same `dedupeKey` (default: everything but the time) inside
   * one flush window become one row with a count. Hot paths pass a cheap key of their own.
   */
  record(e: AuditInput, dedupeKey?: string): void {
    const k =
      dedupeKey ??
      `${e.action}\0${e.target}\0${e.actor}\0${e.source}\0${e.outcome}\0${e.details ? JSON.stringify(e.details) : ''}`;
    const existing = this.pending.get(k);
    if (existing) {
      existing.count += e.count ?? 1;
      return;
    }
    this.pending.set(k, { ...clean(e), at: this.clock.now(), count: e.count ?? 1 });
    if (this.pending.size >= this.maxPending) this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), this.flushMs);
      this.timer.unref();
    }
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.pending.size === 0) return;
    const rows = [...this.pending.values()];
    this.pending = new Map();
    try {
      this.store.appendAudit(rows);
    } catch (err) {
      this.onError(err);
    }
  }
}

/**
 * Every string an event carries is escaped and bounded before it is stored (LOG-2): actors can be
 * attacker-chosen (an SSH user name), and `broker audit` prints them to a terminal.
 */
function clean(e: AuditInput): AuditInput {
  const text = (v: string | null) => (v === null ? null : printable(v, 200));
  return {
    ...e,
    actor: text(e.actor),
    target: text(e.target),
    source: text(e.source),
    details: e.details ? (cleanValue(e.details, 0) as Record<string, unknown>) : e.details,
  };
}

function cleanValue(v: unknown, depth: number): unknown {
  if (typeof v === 'string') return printable(v, 200);
  if (typeof v !== 'object' || v === null || depth > 3) return v;
  if (Array.isArray(v)) return v.slice(0, 20).map((x) => cleanValue(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v).slice(0, 20))
    out[printable(k, 40)] = cleanValue(x, depth + 1);
  return out;
}

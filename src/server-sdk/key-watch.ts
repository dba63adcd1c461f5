/**
 * The keys behind a server's open sessions and connections, re-checked with the broker (SECURITY.md
 * SES-1, SES-2): a session cookie, a WebSocket or a gated TCP connection opened with a key ends
 * when that key is revoked or expires, or its principal is disabled, removed or loses access.
 * Every `intervalMs` (default 5 s) one `POST /v1/verify/live` asks about all watched keys at once;
 * the dead ones' callbacks run. While the broker cannot be reached, nothing is ended (a broker
 * restart must not log everyone out); the next answer decides.
 */

/** Ask the broker which of these key ids still hold (normally `client.liveKeys`). */
export type LiveKeys = (keyIds: string[]) => Promise<string[]>;

export interface KeyWatchOptions {
  live: LiveKeys;
  /** How often the watched keys are re-checked, in ms (the documented re-check time). */
  intervalMs?: number;
}

/** How often a server re-checks the keys behind its sessions and connections by default. */
export const KEY_RECHECK_MS = 5000;

export class KeyWatch {
  private readonly watched = new Map<string, Set<() => void>>();
  private timer: NodeJS.Timeout | null = null;
  private checking = false;
  readonly intervalMs: number;

  constructor(private readonly opts: KeyWatchOptions) {
    this.intervalMs = opts.intervalMs ?? KEY_RECHECK_MS;
  }

  /** Keys watched now. */
  get size(): number {
    return this.watched.size;
  }

  /**
   * Call `onDead` once when `keyId` stops holding. Returns the function that stops watching
   * (call it when the session or connection ends on its own).
   */
  watch(keyId: string, onDead: () => void): () => void {
    let set = this.watched.get(keyId);
    if (!set) this.watched.set(keyId, (set = new Set()));
    set.add(onDead);
    this.schedule();
    return () => {
      const s = this.watched.get(keyId);
      if (!s) return;
      s.delete(onDead);
      if (s.size === 0) this.watched.delete(keyId);
    };
  }

  private schedule(): void {
    if (this.timer || this.watched.size === 0) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.check().finally(() => this.schedule());
    }, this.intervalMs);
    this.timer.unref();
  }

  /** Ask now (normally the timer does). Resolves once the dead keys' callbacks have run. */
  async check(): Promise<void> {
    if (this.checking || this.watched.size === 0) return;
    this.checking = true;
    try {
      const ids = [...this.watched.keys()];
      const live = new Set<string>();
      for (let i = 0; i < ids.length; i += 1000)
        for (const id of await this.opts.live(ids.slice(i, i + 1000))) live.add(id);
      for (const id of ids) {
        if (live.has(id)) continue;
        const callbacks = this.watched.get(id);
        this.watched.delete(id);
        for (const cb of callbacks ?? []) cb();
      }
    } catch {
      /* the broker is unreachable: keep everything until it answers */
    } finally {
      this.checking = false;
    }
  }

  /** Stop the timer (the server is closing). */
  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.watched.clear();
  }
}

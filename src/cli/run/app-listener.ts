/**
 * Whose listener is the app's port? (SECURITY.md LOC-3.) An app on a loopback port shares the
 * port space with every local user: one who binds `{app_port}` before a slow app does would be
 * reported "up" and receive the clients' traffic. `broker run` reads the kernel's socket table
 * (src/host/socket-owner.ts) and goes up only when every listener on the port is its own UID's;
 * after an upstream connection fails (the app restarted its listener, and another user may have
 * taken the port in between) it checks again before it connects anywhere.
 *
 * The check reads /proc/net/tcp{,6} whole, so it runs at "up" and after failures, never per
 * connection: on the hot path the cost is one boolean.
 */
import { listenersOn, type TcpSocketEntry } from '../../host/socket-owner.js';
import { readFileSync } from 'node:fs';

/** Where the app listens. `host` is picked from the listener the check found (IPv4 or IPv6). */
export type AppTarget = { path: string } | { host: string; port: number };

export type ListenerCheck =
  | { kind: 'none' }
  | { kind: 'ours'; host: string; addresses: string[] }
  | { kind: 'foreign'; owners: { uid: number; address: string }[] };

/** A user name for a UID from /etc/passwd, or null (no NSS lookups: no shell-out). */
export function userName(uid: number): string | null {
  try {
    for (const line of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = line.split(':');
      if (f[2] === String(uid)) return f[0] ?? null;
    }
  } catch {
    /* no passwd file */
  }
  return null;
}

/** `UID 1001 (mallory)`. */
export function describeUid(uid: number): string {
  const name = userName(uid);
  return name ? `UID ${uid} (${name})` : `UID ${uid}`;
}

/** The address to connect to for a listener's local address. */
function connectable(address: string): string {
  if (address === '0.0.0.0') return '127.0.0.1';
  if (address === '::') return '::1';
  return address;
}

/** Classify the listeners on `port`: none yet, all ours (and where to connect), or foreign. */
export function classify(entries: TcpSocketEntry[], uid: number): ListenerCheck {
  if (entries.length === 0) return { kind: 'none' };
  const foreign = entries.filter((e) => e.uid !== uid);
  if (foreign.length)
    return {
      kind: 'foreign',
      owners: foreign.map((e) => ({ uid: e.uid, address: e.local.address })),
    };
  const addresses = entries.map((e) => e.local.address);
  // IPv4 loopback when the app takes it (directly or through a wildcard), else what it has.
  const host = addresses.some((a) => a === '127.0.0.1' || a === '0.0.0.0')
    ? '127.0.0.1'
    : connectable(addresses.find((a) => a === '::1' || a === '::') ?? addresses[0]!);
  return { kind: 'ours', host, addresses };
}

/** One check of `port` against our UID. Throws when the socket table cannot be read. */
export async function checkListener(port: number): Promise<ListenerCheck> {
  return classify(await listenersOn(port), process.getuid?.() ?? -1);
}

/**
 * Keeps a port target honest after "up": `failed()` after an upstream connection error makes
 * every following connection wait for one shared re-check (`ready()`), which either clears it
 * (our listener; the host is updated), refuses it (nothing listens), or reports a foreign
 * listener through `onForeign` (broker run then stops the app).
 */
export class UpstreamGuard {
  /** True after a failure, until a check has found our own listener again. */
  suspect = false;
  private checking: Promise<boolean> | null = null;

  constructor(
    readonly target: { host: string; port: number },
    private readonly onForeign: (owners: { uid: number; address: string }[]) => void,
  ) {}

  /** An upstream connection to the app failed. */
  failed(): void {
    this.suspect = true;
  }

  /** Resolves true when a connection may go to the target now. Cheap unless `suspect`. */
  ready(): Promise<boolean> | true {
    if (!this.suspect) return true;
    this.checking ??= checkListener(this.target.port)
      .then(
        (c) => {
          if (c.kind === 'foreign') {
            this.onForeign(c.owners);
            return false;
          }
          if (c.kind === 'none') return false;
          this.target.host = c.host;
          this.suspect = false;
          return true;
        },
        () => false, // the socket table is unreadable: fail closed
      )
      .finally(() => {
        this.checking = null;
      });
    return this.checking;
  }
}

/**
 * Whose listener is the app's port? (SECURITY.md LOC-3.) An app on a loopback port shares the
 * port space with every local user: one who binds `{app_port}` before a slow app does would be
 * reported "up" and receive the clients' traffic, and so would one who binds it in the moment
 * between a crash of the app and its restart. `broker run` reads the kernel's socket table
 * (src/host/socket-owner.ts) and goes up only when every listener on the port is its own UID's;
 * after that, every upstream connection is attributed before a byte goes through it: the kernel
 * lists the socket the app accepted for it, with its owner's UID, and a connection answered by
 * anyone else is refused and stops the app (UpstreamGuard.connect).
 *
 * Each lookup is one netlink query by address and port (src/host/sock-diag.ts, ≈ 0.1 ms), or
 * where that cannot run a read of /proc/net/tcp, which walks the kernel's whole connection hash
 * (milliseconds) and is batched (one read per burst of new connections). Kept-alive upstream
 * connections are not checked again: a connected socket cannot change its peer.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { ServerOwners } from '../../host/sock-diag.js';
import { listenersOn, type TcpSocketEntry } from '../../host/socket-owner.js';

/** Where the app listens. `host` is picked from the listener the check found (IPv4 or IPv6). */
export type AppTarget = { path: string } | { host: string; port: number };

export type ListenerCheck =
  | { kind: 'none' }
  | { kind: 'ours'; host: string; addresses: string[] }
  | { kind: 'foreign'; owners: { uid: number; address: string }[] };

export { describeUid, userName } from '../../host/socket-owner.js';

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

/** An upstream connection the guard refused: not the app's, or the app's port is not safe now. */
export class UpstreamRefused extends Error {
  readonly code = 'EUPSTREAMREFUSED';
}

/** The owners of the server end of a connection this process made; null when unknown. */
export type ServerUids = (socket: Socket) => Promise<number[] | null>;

/** By netlink where it can run, else by /proc (src/host/sock-diag.ts); started at once. */
function kernelOwners(): ServerUids {
  const owners = new ServerOwners();
  return (s) => owners.lookup(s);
}

/**
 * Keeps a port target honest after "up". `connect()` attributes every new upstream connection to
 * a UID before anything is written to it: ours → handed over; another user's → refused, and
 * `onForeign` reports it (broker run then stops the app) and every later connection is refused
 * too; not attributable (the socket went at once, /proc unreadable) → refused. After an upstream
 * connection is refused (ECONNREFUSED: the app restarted its listener) the guard is `suspect`:
 * the next connections wait for one shared check of the listener (`ready()`), which updates the
 * host (IPv4 or IPv6) or answers "not listening" without trying.
 */
export class UpstreamGuard {
  /** True after a failure, until a check has found our own listener again. */
  suspect = false;
  /** Another user answered on the port: nothing goes upstream any more. */
  closed = false;
  private checking: Promise<boolean> | null = null;
  private readonly uid = process.getuid?.() ?? -1;

  constructor(
    readonly target: { host: string; port: number },
    private readonly onForeign: (owners: { uid: number; address: string }[]) => void,
    private readonly owners: ServerUids = kernelOwners(),
  ) {}

  /** An upstream connection to the app failed. */
  failed(): void {
    this.suspect = true;
  }

  /**
   * A connection to the target, handed to `done` only once the kernel says its other end is
   * owned by our UID; nothing is ever written to it before. The error is the connection's own, or
   * {@link UpstreamRefused}.
   */
  connect(done: (err: Error | null, socket?: Socket) => void): void {
    let settled = false;
    const settle = (err: Error | null, socket?: Socket) => {
      if (settled) return;
      settled = true;
      done(err, socket);
    };
    const refuse = (why: string) => settle(new UpstreamRefused(why));
    const go = () => {
      if (this.closed) return refuse('the app port was taken by another user');
      const { host, port } = this.target;
      const up = netConnect({ host, port });
      up.setNoDelay(true);
      const onError = (err: NodeJS.ErrnoException) => {
        if (err.code === 'ECONNREFUSED') this.failed();
        settle(err);
      };
      up.once('error', onError);
      // Nothing is written to it, and nobody reads from it, until the kernel has named its peer.
      up.once('connect', () =>
        this.owners(up).then(
          (uids) => {
            up.off('error', onError);
            up.on('error', () => {}); // the consumer's own listener comes with the socket
            if (uids?.length && uids.every((u) => u === this.uid) && !this.closed) {
              if (up.destroyed) return refuse('the app closed the connection');
              return settle(null, up);
            }
            up.destroy();
            if (this.closed) return refuse('the app port was taken by another user');
            if (!uids?.length)
              return refuse(
                `the kernel does not name the owner of the connection to ${host}:${port}`,
              );
            this.closed = true;
            this.onForeign(
              uids.filter((u) => u !== this.uid).map((uid) => ({ uid, address: host })),
            );
            refuse(`${host}:${port} is held by another user`);
          },
          () => {
            up.destroy();
            refuse('the socket table cannot be read');
          },
        ),
      );
    };
    const ok = this.ready();
    if (ok === true) return go();
    void ok.then((yes) => (yes ? go() : refuse('the app is not listening')));
  }

  /** Resolves true when a connection may go to the target now. Cheap unless `suspect`. */
  ready(): Promise<boolean> | true {
    if (this.closed) return Promise.resolve(false);
    if (!this.suspect) return true;
    this.checking ??= checkListener(this.target.port)
      .then(
        (c) => {
          if (c.kind === 'foreign') {
            this.closed = true;
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

/**
 * Who owns a TCP socket on this host. The kernel lists every TCP socket of the network namespace,
 * with the UID of its owner, in `/proc/net/tcp` and `/proc/net/tcp6` (Documentation/networking/
 * proc_net_tcp.rst): `sl local_address rem_address st … uid timeout inode`. Addresses are hex:
 * IPv4 as one 32-bit word and IPv6 as four, each in host byte order (little-endian here), ports
 * big-endian. That is how loopback connections are attributed to a Unix user (SECURITY.md LOC-5):
 * the listener behind a port (`broker run`, `ready`), the process behind a local connection
 * (`broker tunnel --inject-key`, the gateway's pre-auth slots).
 *
 * The files are read asynchronously and whole; their size grows with the host's socket count
 * (≈ 150 bytes a socket), so callers use this where a connection is set up, never per byte.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { endianness } from 'node:os';

/** TCP states of include/net/tcp_states.h that matter here. */
const TCP_ESTABLISHED = '01';
const TCP_LISTEN = '0A';

/** One row of /proc/net/tcp{,6}. */
export interface TcpSocketEntry {
  /** Canonical IP (IPv4-mapped IPv6 folded to IPv4), and port. */
  local: { address: string; port: number };
  remote: { address: string; port: number };
  /** `ESTABLISHED`, `LISTEN` or the kernel's hex state. */
  state: string;
  uid: number;
  inode: number;
}

const LITTLE = endianness() === 'LE';

/** One 32-bit word of the kernel's hex address, as 4 bytes in network order. */
function wordBytes(hex8: string): number[] {
  const b = [0, 2, 4, 6].map((i) => parseInt(hex8.slice(i, i + 2), 16));
  return LITTLE ? b.reverse() : b;
}

/** `0100007F` → `127.0.0.1`; 32 hex digits → canonical IPv6 (or IPv4 when v4-mapped). */
export function decodeProcAddress(hex: string): string {
  if (hex.length === 8) return wordBytes(hex).join('.');
  const bytes: number[] = [];
  for (let i = 0; i < 32; i += 8) bytes.push(...wordBytes(hex.slice(i, i + 8)));
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 255 && bytes[11] === 255;
  if (mapped) return bytes.slice(12).join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return compressIpv6(groups);
}

/** RFC 5952 text form of eight hex groups. */
function compressIpv6(groups: string[]): string {
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best === -1) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** An address as Node reports it (`::ffff:127.0.0.1`, `::1`, `127.0.0.1`) in canonical form. */
export function canonicalAddress(address: string): string {
  const v = address.startsWith('[') ? address.slice(1, -1) : address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(v);
  if (mapped) return mapped[1]!;
  if (isIP(v) !== 6) return v;
  // Normalise through the same encoding the kernel uses.
  const parts = v.toLowerCase().split('::');
  const head = parts[0] ? parts[0].split(':') : [];
  const tail = parts.length > 1 && parts[1] ? parts[1].split(':') : [];
  const groups = [...head, ...Array<string>(8 - head.length - tail.length).fill('0'), ...tail].map(
    (g) => parseInt(g, 16).toString(16),
  );
  return compressIpv6(groups);
}

function parseTable(text: string): TcpSocketEntry[] {
  const out: TcpSocketEntry[] = [];
  const lines = text.split('\n');
  for (let i = 1; i < lines.length; i++) {
    const f = lines[i]!.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [la, lp] = f[1]!.split(':');
    const [ra, rp] = f[2]!.split(':');
    const st = f[3]!;
    out.push({
      local: { address: decodeProcAddress(la!), port: parseInt(lp!, 16) },
      remote: { address: decodeProcAddress(ra!), port: parseInt(rp!, 16) },
      state: st === TCP_LISTEN ? 'LISTEN' : st === TCP_ESTABLISHED ? 'ESTABLISHED' : st,
      uid: Number(f[7]),
      inode: Number(f[9]),
    });
  }
  return out;
}

/**
 * Every TCP socket of this network namespace, IPv4 and IPv6. Throws when /proc/net/tcp cannot be
 * read (not Linux, or /proc hidden): callers decide whether that fails closed.
 */
export async function tcpSockets(): Promise<TcpSocketEntry[]> {
  const [v4, v6] = await Promise.all([
    readFile('/proc/net/tcp', 'latin1'),
    readFile('/proc/net/tcp6', 'latin1').catch(() => ''),
  ]);
  return [...parseTable(v4), ...parseTable(v6)];
}

/**
 * The listening sockets on `port` (any address), with their owners. An empty list means nothing
 * listens there.
 */
export async function listenersOn(port: number): Promise<TcpSocketEntry[]> {
  return (await tcpSockets()).filter((s) => s.state === 'LISTEN' && s.local.port === port);
}

/**
 * The UID of the process at the other end of a loopback connection this process holds:
 * `ours` is our end (`socket.localAddress/localPort`), `theirs` the peer's
 * (`socket.remoteAddress/remotePort`). The kernel lists the peer's socket with local = theirs and
 * remote = ours. Null when the peer is not on this host (or already gone).
 */
export async function peerUid(
  ours: { address: string; port: number },
  theirs: { address: string; port: number },
): Promise<number | null> {
  const oa = canonicalAddress(ours.address);
  const ta = canonicalAddress(theirs.address);
  for (const s of await tcpSockets()) {
    if (
      s.local.port === theirs.port &&
      s.remote.port === ours.port &&
      s.local.address === ta &&
      s.remote.address === oa
    )
      // Inode 0: its process closed it (an orphan still in the table): nobody owns it now.
      return s.inode === 0 ? null : s.uid;
  }
  return null;
}

/** `peerUid` for a connected net.Socket. */
export function socketPeerUid(socket: {
  localAddress?: string;
  localPort?: number;
  remoteAddress?: string;
  remotePort?: number;
}): Promise<number | null> {
  if (!socket.localAddress || !socket.remoteAddress || !socket.localPort || !socket.remotePort)
    return Promise.resolve(null);
  return peerUid(
    { address: socket.localAddress, port: socket.localPort },
    { address: socket.remoteAddress, port: socket.remotePort },
  );
}

/** Who is at the other end of a loopback connection this process accepted (null: unknown). */
export interface PeerAttribution {
  peerUid(socket: Parameters<typeof socketPeerUid>[0]): Promise<number | null>;
}

/**
 * Peer lookups for a stream of new connections, coalesced: every lookup waits for the next read
 * of the socket tables and one read answers all that were waiting, so a flood of connects costs
 * one read per batch, not one each.
 */
export class PeerUidLookup {
  private waiting: {
    socket: Parameters<typeof socketPeerUid>[0];
    done: (uid: number | null) => void;
  }[] = [];
  private reading = false;

  /** The UID behind a loopback connection this process accepted, or null (remote, gone, no /proc). */
  peerUid(socket: Parameters<typeof socketPeerUid>[0]): Promise<number | null> {
    return this.lookup(socket);
  }

  lookup(socket: Parameters<typeof socketPeerUid>[0]): Promise<number | null> {
    return new Promise((done) => {
      this.waiting.push({ socket, done });
      if (!this.reading) void this.read();
    });
  }

  private async read(): Promise<void> {
    this.reading = true;
    while (this.waiting.length) {
      const batch = this.waiting;
      this.waiting = [];
      let table: TcpSocketEntry[] = [];
      try {
        table = await tcpSockets();
      } catch {
        /* no /proc: nobody is attributed */
      }
      const index = new Map<string, number>();
      for (const s of table)
        // Inode 0: an orphan (its process closed it): nobody owns it now.
        if (s.state === 'ESTABLISHED' && s.inode !== 0)
          index.set(
            `${s.local.address}|${s.local.port}|${s.remote.address}|${s.remote.port}`,
            s.uid,
          );
      for (const { socket, done } of batch) {
        const { localAddress, localPort, remoteAddress, remotePort } = socket;
        done(
          localAddress && remoteAddress
            ? (index.get(
                `${canonicalAddress(remoteAddress)}|${remotePort}|${canonicalAddress(localAddress)}|${localPort}`,
              ) ?? null)
            : null,
        );
      }
    }
    this.reading = false;
  }
}

/**
 * One family's table: `/proc/net/tcp` (4) or `/proc/net/tcp6` (6). Each read walks the kernel's
 * whole established hash, whatever the number of sockets (≈ 4 ms for 262,144 buckets on a 24 GB
 * host), so reading only the family that can hold the socket halves the cost.
 */
export async function tcpSocketTable(family: 4 | 6): Promise<TcpSocketEntry[]> {
  return parseTable(await readFile(family === 4 ? '/proc/net/tcp' : '/proc/net/tcp6', 'latin1'));
}

const TCP_TIME_WAIT = '06';
const WILDCARDS = new Set(['0.0.0.0', '::']);

/**
 * Who owns the server end of a TCP connection this process made (or, with `peer`, the client
 * end of one it accepted, where inode 0 means unowned): the socket the listener on
 * `theirs` created for it, which the kernel lists with local = `theirs`, remote = `ours`. Its UID
 * is the listener's (on kernels where `sock_i_uid` reads `sk_uid`) or the accepting process's.
 * A socket not accepted yet (inode 0: a queued child, or SYN_RECV) is shown with UID 0 by older
 * kernels (RHEL 8/9), so for it the owners are those of the listeners that can have made it (the
 * same port, on `theirs`'s address or a wildcard). Null when the table has no such socket (not
 * there yet, or gone); otherwise every UID that may own it (normally one).
 */
export function serverUids(
  table: TcpSocketEntry[],
  ours: { address: string; port: number },
  theirs: { address: string; port: number },
  opts: { peer?: boolean } = {},
): number[] | null {
  const oa = canonicalAddress(ours.address);
  const ta = canonicalAddress(theirs.address);
  const peer = table.find(
    (s) =>
      s.local.port === theirs.port &&
      s.remote.port === ours.port &&
      s.local.address === ta &&
      s.remote.address === oa &&
      s.state !== TCP_TIME_WAIT, // a closed connection's remains: UID 0, no owner
  );
  if (!peer) return null;
  if (peer.inode !== 0) return [peer.uid];
  // The client end of a connection this process accepted, with no inode: its process closed it
  // (an orphan still sending). Nobody owns it now; the listener rule does not apply — whoever
  // listens on its port later is not who wrote into it (pen test 2, --inject-key).
  if (opts.peer) return null;
  const listeners = table.filter(
    (s) =>
      s.state === 'LISTEN' &&
      s.local.port === theirs.port &&
      (s.local.address === ta || WILDCARDS.has(s.local.address)),
  );
  if (!listeners.length) return null; // its listener is gone: it is being reset
  return [...new Set(listeners.map((s) => s.uid))];
}

/**
 * `serverUids` for connections this process made, coalesced like {@link PeerUidLookup}: every
 * lookup waits for the next read and one read answers all that were waiting. An IPv4 connection
 * is looked up in `/proc/net/tcp` and, only when not there (an IPv6 listener that takes IPv4
 * too), in `/proc/net/tcp6`. A socket not found is looked for once more in the next read (the
 * server side of a loopback handshake can trail the client's by a moment), then answered null.
 */
export class ServerUidLookup {
  private waiting: {
    socket: ConnectedSocket;
    tries: number;
    done: (u: number[] | null) => void;
    peer: boolean;
  }[] = [];
  private reading = false;

  /**
   * The UIDs that may own the other end of `socket`, a connection this process made; with
   * `peer`, the owner of the client end of one it accepted (never a listener's stand-in).
   */
  lookup(socket: ConnectedSocket, peer = false): Promise<number[] | null> {
    return new Promise((done) => {
      this.waiting.push({ socket, tries: 0, done, peer });
      if (!this.reading) void this.read();
    });
  }

  private async read(): Promise<void> {
    this.reading = true;
    while (this.waiting.length) {
      const batch = this.waiting;
      this.waiting = [];
      const tables = new Map<4 | 6, Promise<TcpSocketEntry[]>>();
      const table = (f: 4 | 6) => {
        let t = tables.get(f);
        if (!t) tables.set(f, (t = tcpSocketTable(f).catch(() => [])));
        return t;
      };
      // Start every read this batch needs at once.
      for (const { socket } of batch) void table(isIP(socket.remoteAddress ?? '') === 6 ? 6 : 4);
      const retry: typeof batch = [];
      for (const w of batch) {
        const { localAddress, localPort, remoteAddress, remotePort } = w.socket;
        let found: number[] | null = null;
        if (localAddress && remoteAddress && localPort && remotePort) {
          const ours = { address: localAddress, port: localPort };
          const theirs = { address: remoteAddress, port: remotePort };
          const v6 = isIP(remoteAddress) === 6;
          const o = { peer: w.peer };
          found = serverUids(await table(v6 ? 6 : 4), ours, theirs, o);
          if (!found && !v6) found = serverUids(await table(6), ours, theirs, o);
        }
        if (found || w.tries > 0) w.done(found);
        else retry.push({ ...w, tries: w.tries + 1 });
      }
      this.waiting.push(...retry);
    }
    this.reading = false;
  }
}

/** The addresses of a connected net.Socket. */
type ConnectedSocket = Parameters<typeof socketPeerUid>[0];

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

/** `UID 1001 (mallory)`, for messages that name who holds a port. */
export function describeUid(uid: number): string {
  const name = userName(uid);
  return name ? `UID ${uid} (${name})` : `UID ${uid}`;
}

/**
 * `net.ipv4.ip_unprivileged_port_start` of this network namespace: ports below it can only be
 * bound with CAP_NET_BIND_SERVICE, so no unprivileged user can ever take them (default 1024).
 * Null when unknown.
 */
export async function unprivilegedPortStart(): Promise<number | null> {
  try {
    const v = Number(
      (await readFile('/proc/sys/net/ipv4/ip_unprivileged_port_start', 'latin1')).trim(),
    );
    return Number.isInteger(v) ? v : null;
  } catch {
    return null;
  }
}

/**
 * Who owns the server end of a loopback connection this process made, asked of the kernel by
 * socket (NETLINK_SOCK_DIAG, the interface `ss` uses) rather than by reading /proc/net/tcp.
 * Reading /proc/net/tcp walks the kernel's whole connection hash on every read, whatever the
 * number of sockets: 4–9 ms per read for 262,144 buckets on a 24 GB host, more on bigger ones.
 * An exact SOCK_DIAG_BY_FAMILY lookup by address and port is a hash lookup: about 5 µs.
 *
 * Node cannot open a netlink socket, so a small Python helper (`python3 -I -S`, stdlib only) holds
 * one and answers one line per lookup over a pipe; it ends with its stdin, so with this process.
 * Where it cannot run (no python3, netlink refused), {@link ServerOwners} falls back to the
 * batched /proc reader ({@link ServerUidLookup}), which answers the same question, slower.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { isIP } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { canonicalAddress, ServerUidLookup } from './socket-owner.js';

/**
 * The helper. Request: `ID MODE FAMILY OUR_ADDR OUR_PORT THEIR_ADDR THEIR_PORT`; answer:
 * `ID UIDS` (comma-separated) or `ID -` (no such socket). MODE `s`: the other end is a server's
 * socket; one not accepted yet (inode 0: its UID is 0 on older kernels) is answered with its
 * listener's UID. MODE `p`: the other end is a client's, of a connection this process accepted;
 * inode 0 there means its process closed it (an orphan), which nobody owns: answered `-`.
 */
const HELPER = String.raw`
import socket, struct, sys
TCP_TIME_WAIT, TCP_LISTEN = 6, 10
try:
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
except OSError as e:
    print("unavailable", e, flush=True)
    sys.exit(0)
seq = 0
def query(fam, src, sport, dst, dport):
    global seq
    seq += 1
    req = struct.pack("=BBBxI", fam, socket.IPPROTO_TCP, 0, 0xFFFFFFFF)
    req += struct.pack(">HH", sport, dport) + src.ljust(16, b"\0") + dst.ljust(16, b"\0")
    req += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    nl.send(struct.pack("=IHHII", 16 + len(req), 20, 1, seq, 0) + req)  # SOCK_DIAG_BY_FAMILY
    while True:
        data = nl.recv(65536)
        _, typ, _, rseq, _ = struct.unpack_from("=IHHII", data)
        if rseq != seq:
            continue
        if typ == 2:  # NLMSG_ERROR: no such socket
            return None
        uid, inode = struct.unpack_from("=II", data, 16 + 64)
        return data[17], uid, inode
print("ready", flush=True)
for line in sys.stdin:
    ident = line.split(" ", 1)[0]
    try:
        _, mode, f, oa, op, ta, tp = line.split()
        fam = socket.AF_INET if f == "4" else socket.AF_INET6
        ours, theirs = socket.inet_pton(fam, oa), socket.inet_pton(fam, ta)
        got = query(fam, theirs, int(tp), ours, int(op))
        answer = "-"
        if got and got[0] not in (TCP_TIME_WAIT, TCP_LISTEN):
            if got[2] != 0:
                answer = str(got[1])
            elif mode == "p":
                answer = "-"
            else:
                lst = query(fam, theirs, int(tp), bytes(len(theirs)), 0)
                if lst and lst[0] == TCP_LISTEN:
                    answer = str(lst[1])
    except Exception:
        answer = "-"
    sys.stdout.write(ident + " " + answer + "\n")
    sys.stdout.flush()
`;

type ConnectedSocket = {
  localAddress?: string;
  localPort?: number;
  remoteAddress?: string;
  remotePort?: number;
};

/** The netlink helper process; `ready` resolves false when it cannot answer. */
class SockDiagHelper {
  readonly ready: Promise<boolean>;
  private readonly waiting = new Map<number, (uids: number[] | null) => void>();
  private next = 0;
  private child: ChildProcess | null = null;
  private alive = false;
  private hold: (on: boolean) => void = () => {};

  constructor(python = 'python3') {
    this.ready = new Promise((resolve) => {
      let child: ChildProcess;
      try {
        child = spawn(python, ['-I', '-S', '-c', HELPER], { stdio: ['pipe', 'pipe', 'ignore'] });
      } catch {
        return resolve(false);
      }
      this.child = child;
      // It never keeps this process alive by itself: only while it is starting or answering.
      child.unref();
      const stdin = child.stdin as Writable & { unref?: () => void };
      const stdout = child.stdout as Readable & { ref?: () => void; unref?: () => void };
      stdin.unref?.();
      this.hold = (on) => (on ? stdout.ref?.() : stdout.unref?.());
      stdin.on('error', () => this.fail());
      child.once('error', () => (this.fail(), resolve(false)));
      child.once('exit', () => (this.fail(), resolve(false)));
      let buf = '';
      let started = false;
      stdout.on('data', (c: Buffer) => {
        buf += c.toString('latin1');
        let nl: number;
        while ((nl = buf.indexOf('\n')) !== -1) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (!started) {
            started = true;
            this.alive = line === 'ready';
            resolve(this.alive);
            if (!this.alive) this.fail();
            this.hold(this.waiting.size > 0);
            continue;
          }
          const [id, answer] = line.split(' ');
          const done = this.waiting.get(Number(id));
          this.waiting.delete(Number(id));
          if (!this.waiting.size) this.hold(false);
          done?.(answer === '-' || !answer ? null : answer.split(',').map(Number));
        }
      });
    });
  }

  /**
   * The owners of the other end of `socket`; null when the kernel has no such socket (or, with
   * `peer`, when the client end has no owner left).
   */
  lookup(socket: ConnectedSocket, peer = false): Promise<number[] | null> {
    const { localAddress, localPort, remoteAddress, remotePort } = socket;
    if (!this.alive || !localAddress || !remoteAddress || !localPort || !remotePort)
      return Promise.resolve(null);
    const ours = canonicalAddress(localAddress);
    const theirs = canonicalAddress(remoteAddress);
    const family = isIP(theirs) === 6 ? 6 : 4;
    if (isIP(ours) !== family) return Promise.resolve(null);
    const id = this.next++;
    return new Promise((done) => {
      this.waiting.set(id, done);
      this.hold(true);
      this.child!.stdin!.write(
        `${id} ${peer ? 'p' : 's'} ${family} ${ours} ${localPort} ${theirs} ${remotePort}\n`,
      );
    });
  }

  /** Stop the helper (it also stops by itself when this process ends). */
  close(): void {
    this.child?.stdin?.end();
    this.fail();
  }

  private fail(): void {
    this.alive = false;
    for (const done of this.waiting.values()) done(null);
    this.waiting.clear();
    this.hold(false);
  }

  get usable(): boolean {
    return this.alive;
  }
}

/**
 * The owners of the server end of connections this process makes: by netlink through the helper
 * (started at construction, so the first connection does not wait for Python), or, until it is
 * ready and wherever it cannot run, by the batched /proc reader. A socket the helper does not
 * find is looked up once more the slow way (the server side of a loopback handshake can trail
 * the client's by a moment). Null when neither finds it.
 */
export class ServerOwners {
  private readonly helper: SockDiagHelper;
  private readonly proc = new ServerUidLookup();

  constructor(opts: { python?: string } = {}) {
    this.helper = new SockDiagHelper(opts.python);
    void this.helper.ready;
  }

  /** Whether lookups go through netlink (false: /proc). */
  async viaNetlink(): Promise<boolean> {
    return this.helper.ready;
  }

  async lookup(socket: ConnectedSocket): Promise<number[] | null> {
    if (this.helper.usable) {
      const uids = await this.helper.lookup(socket);
      if (uids) return uids;
    }
    return this.proc.lookup(socket);
  }

  /**
   * The Unix user at the other end of a loopback connection this process accepted (the client's
   * socket), or null: the same exact lookup, from the other side (LOC-5 attribution).
   */
  async peerUid(socket: ConnectedSocket): Promise<number | null> {
    if (this.helper.usable) {
      const uids = await this.helper.lookup(socket, true);
      if (uids) return uids[0] ?? null;
    }
    return (await this.proc.lookup(socket, true))?.[0] ?? null;
  }

  close(): void {
    this.helper.close();
  }
}

/**
 * Join two duplex streams both ways (a tunnel's data path) with real half-close: when one side
 * ends, the other's writable side is ended in order (TCP FIN, SSH EOF) while the reverse
 * direction keeps flowing, so `(echo "$KEY"; echo hi) | nc …` still gets its answer. A side that
 * closes abnormally (error, reset, destroy) tears the other down at once.
 */
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

type SshChannel = Duplex & {
  server?: boolean;
  allowHalfOpen: boolean;
  close(): void;
  outgoing?: unknown;
};

function isSshChannel(s: Duplex): s is SshChannel {
  return typeof (s as SshChannel).close === 'function' && 'outgoing' in s;
}

/** End the writable side only. */
function halfClose(s: Duplex): void {
  if (isSshChannel(s)) {
    // ssh2 closes a server-side channel as soon as its writable side finishes (lib/Channel.js
    // onFinish); a tunnel must send EOF only and keep reading. Outside exit(), which tcpip
    // channels never use, the flag has no other effect.
    s.server = false;
    s.allowHalfOpen = true;
  }
  s.end();
}

/** The TCP socket under a stream: itself, or an ssh2 channel's transport (ssh2 internals). */
function transportOf(s: Duplex): Socket | null {
  if (s instanceof Socket) return s;
  const sock = (s as { _client?: { _sock?: unknown } })._client?._sock;
  return sock instanceof Socket ? sock : null;
}

const corked = new WeakSet<Socket>();
const watched = new WeakSet<Socket>();

/**
 * Hold `sock`'s writes until the end of the current I/O phase, so the 32 KiB packets that ssh2
 * encrypts one by one leave in one writev() instead of one write() each, and the far end is woken
 * once per batch instead of once per packet. Shared by every channel on the connection.
 */
function corkForPhase(sock: Socket): void {
  if (corked.has(sock)) return;
  corked.add(sock);
  sock.cork();
  setImmediate(() => {
    corked.delete(sock);
    sock.uncork();
  });
}

/**
 * An SSH connection also writes from its own read path: a WINDOW_ADJUST from the peer releases
 * the data a channel held back (up to 1 MiB), packet by packet, inside ssh2's 'data' handler, one
 * write() per 32 KiB packet (17 % of the samples in a profile of `broker tunnel` moving bulk
 * data). Cork before ssh2 parses what came in, so that burst is batched too. Measured A/B over 6
 * runs of 1 GiB: about 5 % more throughput, 2–3 % less client CPU per GiB.
 */
function batchReadPath(sock: Socket): void {
  if (watched.has(sock)) return;
  watched.add(sock);
  sock.prependListener('data', () => corkForPhase(sock));
}

/**
 * `from` → `to` with backpressure, like pipe() without ending `to`. When `to` is an SSH channel,
 * its connection's socket is corked for the I/O phase (see corkForPhase). Between two plain
 * sockets there is nothing to batch (one read, one write) and holding the write back only costs
 * throughput: `batch` is off.
 */
function pump(from: Duplex, to: Duplex, batch: boolean, onBytes?: (n: number) => void): void {
  const sock = batch ? transportOf(to) : null;
  if (sock && sock !== to) batchReadPath(sock);
  from.on('data', (chunk: Buffer) => {
    onBytes?.(chunk.length);
    if (sock) corkForPhase(sock);
    // A closed ssh2 channel swallows writes and never calls back, so write() stays false
    // forever: never wait on a side that is gone (teardown ends this when it closes).
    if (!to.write(chunk) && !to.destroyed && !to.writableEnded) from.pause();
  });
  to.on('drain', () => from.resume());
}

/**
 * Close a stream now, losing what it holds. For an ssh2 channel destroy() only sends CLOSE; the
 * channel emits 'close' (and leaves the gateway's channel count) once its readable side has
 * ended, so what it still holds is drained too.
 */
export function drop(s: Duplex): void {
  s.destroy();
  s.resume();
}

/** `onBytes` is told the size of every chunk carried, either way. */
export function splice(a: Duplex, b: Duplex, onBytes?: (n: number) => void): void {
  let ended = 0;
  const onEnd = (to: Duplex) => () => {
    halfClose(to);
    if (++ended === 2) {
      // Both ways are done; an SSH channel is closed once its writable side has finished. Data
      // still queued for the peer's window (up to a window's worth when the last bytes arrive in
      // a burst) would otherwise be dropped by CHANNEL_CLOSE — ssh2's close() does not wait.
      for (const s of [a, b])
        if (isSshChannel(s)) {
          if (s.writableFinished) s.close();
          else s.once('finish', () => s.close());
        }
    }
  };
  // When one side closes, the other goes too unless both of its directions are already done:
  // `from` ended badly (reset, error), or `to` still has bytes for `from`, which has nowhere to
  // put them now — an app that resets mid-upload, a client that vanishes mid-download.
  const teardown = (from: Duplex, to: Duplex) => () => {
    if (!from.readableEnded || from.errored || !to.readableEnded) drop(to);
  };
  // splice owns the ends. A socket left with Node's default (allowHalfOpen false) ends its own
  // writable side when its peer half-closes, cutting off whatever the other side still has to
  // send: a client that wrote 24 MiB to an echo through the gateway and then shut down its
  // sending side got back 8–20 MiB of it.
  for (const s of [a, b]) s.allowHalfOpen = true;
  if (a.destroyed || b.destroyed) {
    // One side left before the splice (a client that hung up during a verify): no 'close' is
    // coming to tear the other down.
    a.destroy();
    b.destroy();
    return;
  }
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  const batch = isSshChannel(a) || isSshChannel(b);
  pump(a, b, batch, onBytes);
  pump(b, a, batch, onBytes);
  a.once('end', onEnd(b));
  b.once('end', onEnd(a));
  a.once('close', teardown(a, b));
  b.once('close', teardown(b, a));
}

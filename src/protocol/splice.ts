/**
 * Join two duplex streams both ways (a tunnel's data path) with real half-close: when one side
 * ends, the other's writable side is ended in order (TCP FIN, SSH EOF) while the reverse
 * direction keeps flowing, so `(echo "$KEY"; echo hi) | nc …` still gets its answer. A side that
 * closes abnormally (error, reset, destroy) tears the other down at once.
 */
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

export function splice(a: Duplex, b: Duplex): void {
  let ended = 0;
  const onEnd = (to: Duplex) => () => {
    halfClose(to);
    if (++ended === 2) {
      for (const s of [a, b]) if (isSshChannel(s)) s.close();
    }
  };
  const teardown = (from: Duplex, to: Duplex) => () => {
    if (!from.readableEnded || from.errored) to.destroy();
  };
  a.on('error', () => b.destroy());
  b.on('error', () => a.destroy());
  a.pipe(b, { end: false });
  b.pipe(a, { end: false });
  a.once('end', onEnd(b));
  b.once('end', onEnd(a));
  a.once('close', teardown(a, b));
  b.once('close', teardown(b, a));
}

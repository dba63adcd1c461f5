/**
 * The TCP front of `broker run --mode tcp` (DESIGN §7): the key line, a verify, then a
 * byte-for-byte pipe to the app — on its Unix socket, or on its loopback port (IPv4 or IPv6, as
 * the listener check found it), guarded by an {@link UpstreamGuard}.
 */
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { splice } from '../../protocol/splice.js';
import { gate } from '../../server-sdk/gate.js';
import type { BrokerService } from '../../server-sdk/service.js';
import type { AppTarget, UpstreamGuard } from './app-listener.js';

/** Connect to the app; a failed connection to a port marks the guard suspect. */
export function connectApp(target: AppTarget, guard: UpstreamGuard | null): Socket {
  if ('path' in target) return netConnect(target.path);
  const up = netConnect({ host: target.host, port: target.port });
  up.setNoDelay(true);
  if (guard) {
    const onError = () => guard.failed();
    up.once('error', onError);
    up.once('connect', () => up.off('error', onError));
  }
  return up;
}

/** A server that lets only key holders through to the app. */
export function tcpFront(
  svc: BrokerService,
  target: AppTarget,
  guard: UpstreamGuard | null,
): Server {
  const carry = (sock: Socket) => splice(sock, connectApp(target, guard));
  return createServer(
    gate(
      (sock: Socket) => {
        const ok = guard ? guard.ready() : true;
        if (ok === true) return carry(sock);
        // The gate resumes the socket after this handler: hold what arrives until the check.
        const held: Buffer[] = [];
        const hold = (c: Buffer) => {
          held.push(c);
          sock.pause();
        };
        sock.on('data', hold);
        void ok.then((yes) => {
          sock.off('data', hold);
          if (!yes || sock.destroyed) return void sock.destroy();
          if (held.length) sock.unshift(Buffer.concat(held));
          carry(sock);
          sock.resume();
        });
      },
      { verify: (k) => svc.verify(k) },
    ),
  );
}

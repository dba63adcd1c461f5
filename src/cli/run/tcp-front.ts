/**
 * The TCP front of `broker run --mode tcp` (DESIGN §7): the key line, a verify, then a
 * byte-for-byte pipe to the app — on its Unix socket, or on its loopback port (IPv4 or IPv6, as
 * the listener check found it) through an {@link UpstreamGuard}, which hands over the upstream
 * connection only once the kernel says the app's UID answered it (LOC-3).
 */
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { splice } from '../../protocol/splice.js';
import type { BrokerService } from '../../server-sdk/service.js';
import type { AppTarget, UpstreamGuard } from './app-listener.js';

/**
 * Carry `client` to the app. A Unix socket is connected at once (only our UID can create it:
 * nothing to check). A port goes through the guard: what the client sends meanwhile is held, and
 * the client is dropped if the guard refuses the connection.
 */
export function carryToApp(client: Socket, target: AppTarget, guard: UpstreamGuard | null): void {
  if ('path' in target) return splice(client, netConnect(target.path));
  if (!guard) throw new Error('a port target needs an UpstreamGuard');
  // The caller may resume the client right after this (the gate does): keep its bytes.
  const held: Buffer[] = [];
  const hold = (c: Buffer) => {
    held.push(c);
    client.pause();
  };
  client.on('data', hold);
  guard.connect((err, up) => {
    client.off('data', hold);
    if (err || !up || client.destroyed) {
      up?.destroy();
      return void client.destroy();
    }
    if (held.length) client.unshift(Buffer.concat(held));
    splice(client, up);
    client.resume();
  });
}

/** A server that lets only key holders through to the app. */
export function tcpFront(
  svc: BrokerService,
  target: AppTarget,
  guard: UpstreamGuard | null,
): Server {
  return createServer(
    // The service's gate: connections end when the key they were opened with does (SES-2).
    svc.gate((sock: Socket) => carryToApp(sock, target, guard)),
  );
}

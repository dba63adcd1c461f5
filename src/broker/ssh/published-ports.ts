/**
 * The broker's loopback listeners for tunnelled services, held for a service's whole lease
 * (SECURITY.md LOC-4): from registration to removal, through tunnel gaps and reconnects. While no
 * reverse tunnel is attached a connection is reset at once, so a port the broker allocated is
 * never free for another local user to bind, answer like the service and collect the keys clients
 * send. Each port is held on 127.0.0.1 and, where the host has it, on ::1 (a client resolving
 * `localhost` or a service's `*.localhost` name may try either).
 *
 * Across a restart of the broker the ports are free for as long as it is down; only ports below
 * `net.ipv4.ip_unprivileged_port_start` (which unprivileged users cannot bind at all) close that
 * window. The broker reports which case it is in (`protectedPorts`), and at start it binds every
 * live service's port before it answers any API request, so a squatter is found before a key it
 * may have collected could be verified.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';

/** The outcome of holding a port. */
export type HoldResult = { held: true } | { held: false; code: string };

/** Loopback addresses this host has: 127.0.0.1, and ::1 when IPv6 loopback is configured. */
export function loopbackAddresses(): string[] {
  const lo = Object.values(networkInterfaces())
    .flat()
    .some((a) => a?.internal && a.family === 'IPv6' && a.address === '::1');
  return lo ? ['127.0.0.1', '::1'] : ['127.0.0.1'];
}

function listenOn(server: Server, port: number, host: string): Promise<string | null> {
  return new Promise((resolve) => {
    const onError = (err: NodeJS.ErrnoException) => resolve(err.code ?? 'EINVAL');
    server.once('error', onError);
    server.listen({ port, host, ipv6Only: host.includes(':'), backlog: 511 }, () => {
      server.off('error', onError);
      resolve(null);
    });
  });
}

export class PublishedPorts {
  private readonly held = new Map<string, { port: number; servers: Server[] }>();

  constructor(
    /** A client connected to a held port of `serviceId`. */
    private readonly onConnection: (serviceId: string, socket: Socket) => void,
    private readonly addresses: string[] = loopbackAddresses(),
  ) {}

  /** Listening sockets held now (for the fd budget and metrics). */
  get listeners(): number {
    let n = 0;
    for (const h of this.held.values()) n += h.servers.length;
    return n;
  }

  /** The port held for a service, if any. */
  portOf(serviceId: string): number | undefined {
    return this.held.get(serviceId)?.port;
  }

  /**
   * Bind `port` on every loopback address for `serviceId` (releasing any port it held before).
   * On failure nothing stays bound and the code says why (`EADDRINUSE`: another process has it).
   */
  async hold(serviceId: string, port: number): Promise<HoldResult> {
    const current = this.held.get(serviceId);
    if (current?.port === port) return { held: true };
    if (current) this.release(serviceId);
    const servers: Server[] = [];
    for (const host of this.addresses) {
      const server = createServer((socket) => this.onConnection(serviceId, socket));
      const failed = await listenOn(server, port, host);
      if (failed) {
        for (const s of servers) s.close();
        server.close();
        return { held: false, code: failed };
      }
      // A listener error after binding (rare: EMFILE on accept) must not crash the daemon.
      server.on('error', () => undefined);
      servers.push(server);
    }
    this.held.set(serviceId, { port, servers });
    return { held: true };
  }

  /** Stop listening for a service (it left the registry). */
  release(serviceId: string): void {
    const h = this.held.get(serviceId);
    if (!h) return;
    this.held.delete(serviceId);
    for (const s of h.servers) s.close();
  }

  close(): void {
    for (const id of [...this.held.keys()]) this.release(id);
  }
}

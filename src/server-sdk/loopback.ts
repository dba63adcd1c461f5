/**
 * Listening where a loopback service's clients actually connect. A service on the broker host is
 * reached by its name, `NAME.OWNER.localhost`, which resolves to 127.0.0.1 *and* ::1 — browsers
 * try ::1 first (RFC 6761 §6.3; Chromium, Firefox) — so a server that holds only 127.0.0.1:PORT
 * leaves [::1]:PORT to whoever binds it next: another local user would receive its clients, the
 * keys they present and the TLS server name of their browser sessions (SECURITY.md LOC-4, pen
 * test 2). The broker treats such a twin as a squat (the service goes offline, its keys are
 * revoked); this helper keeps it from happening by holding both.
 */
import { createServer, type Server } from 'node:net';
import { BrokerError } from '../protocol/errors.js';

/** The other loopback address of a loopback host (127.x ↔ ::1), or null for any other host. */
export function loopbackTwin(host: string): string | null {
  if (host === '::1') return '127.0.0.1';
  if (/^127\./.test(host)) return '::1';
  return null;
}

function listenOnce(server: Server, opts: { port: number; host: string; ipv6Only?: boolean }) {
  return new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => reject(err);
    server.once('error', fail);
    server.listen(opts, () => {
      server.off('error', fail);
      resolve();
    });
  });
}

/**
 * `server.listen(port, host)` and, for a loopback host, a listener on the twin loopback address
 * and the same port that hands every connection to `server` (`'connection'`), so TLS, HTTP and
 * gates apply unchanged. The twin closes with `server`. A host without the other family (no
 * IPv6) needs no twin: nobody can bind it either.
 *
 * @param server a net, tls, http or https server, not listening yet.
 * @returns the twin's address, or null when there is none.
 * @throws BrokerError `port_unavailable` when another process holds the twin already (the
 *   service's port there is someone else's: do not serve; register again for another port);
 *   the listen error of `host:port` itself as Node reports it.
 * @example
 * ```ts
 * const svc = await registerService({ name: 'nb', mode: 'https', tunnel: 'none' });
 * await listenOnLoopback(server, svc.port);   // 127.0.0.1 and ::1
 * await svc.ready();
 * ```
 */
export async function listenOnLoopback(
  server: Server,
  port: number,
  host = '127.0.0.1',
): Promise<string | null> {
  await listenOnce(server, { port, host });
  const twinHost = loopbackTwin(host);
  if (!twinHost) return null;
  const twin = createServer((c) => server.emit('connection', c));
  try {
    await listenOnce(twin, { port, host: twinHost, ipv6Only: twinHost === '::1' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT') return null;
    server.close();
    if (code === 'EADDRINUSE')
      throw new BrokerError(
        'port_unavailable',
        `[${twinHost}]:${port} is held by another process: clients of this service reach it there too (its name resolves to both loopback addresses), so it does not serve; unregister and register again for another port`,
      );
    throw err;
  }
  server.once('close', () => twin.close());
  return twinHost;
}

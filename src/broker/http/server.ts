/**
 * The HTTPS listener: TLS ≥ 1.2 only, no plaintext (NET-1), header/request timeouts, header size
 * and connection caps (NET-3) shared fairly between sources (LOC-5): each local Unix user (or
 * remote address) holds at most `maxConnectionsPerSource` connections, and at the overall cap a
 * newcomer takes the oldest connection of whoever holds the most — one user's idle keep-alive
 * sockets cannot lock everyone out of the API (and every gate out of verify). POST /v1/verify goes
 * to the fast path, everything else to express.
 */
import { createServer, type Server } from 'node:https';
import { STATUS_CODES, type RequestListener } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { BrokerError } from '../../protocol/errors.js';
import type { Config } from '../config.js';
import { VERIFY_PATH } from './verify-fast-path.js';
import { newRequestId } from './respond.js';
import { FairShares, uncappedSources } from '../fair-shares.js';
import { canonicalIp, isLoopback } from '../net-util.js';
import type { PeerAttribution } from '../../host/socket-owner.js';

export interface TlsMaterial {
  cert: string;
  key: string;
}

/**
 * The API listener: a plain TCP server in front of the HTTPS server. A connection is attributed
 * to its source (the kernel says which local Unix user is behind a loopback connection) and
 * admitted by its share before any TLS work is done for it — a source over its share costs a
 * lookup and a close, not a handshake — then handed to the HTTPS server. `listen`, `address` and
 * `close` are the front's; everything else (TLS contexts, connection draining) the HTTPS server's.
 */
export interface ApiListener {
  https: Server;
  /** Listen; resolves with the port. */
  listen(port: number, host: string): Promise<number>;
  /**
   * Stop accepting, close idle connections, let requests in flight finish for up to `graceMs`,
   * then cut what is left.
   */
  drain(graceMs: number): Promise<void>;
}

export function createHttpsServer(
  config: Config,
  tls: TlsMaterial,
  app: RequestListener,
  verify: RequestListener,
  /** Attributes loopback connections to local UIDs; without it every address is one source. */
  peers?: PeerAttribution,
): ApiListener {
  const server = createServer(
    {
      cert: tls.cert,
      key: tls.key,
      minVersion: 'TLSv1.2',
      maxHeaderSize: config.maxHeaderBytes,
      headersTimeout: config.headersTimeoutMs,
      requestTimeout: config.requestTimeoutMs,
      keepAliveTimeout: config.keepAliveTimeoutMs,
      // node checks the two timeouts above only this often (default 30 s, which would let a
      // slowloris socket live three times its header timeout).
      connectionsCheckingInterval: Math.min(1000, config.headersTimeoutMs),
      // A TLS handshake must finish as fast as headers must arrive.
      handshakeTimeout: config.headersTimeoutMs,
    },
    (req, res) => {
      if (req.method === 'POST' && req.url === VERIFY_PATH) verify(req, res);
      else app(req, res);
    },
  );
  server.on('tlsClientError', () => {
    /* failed handshakes (wrong version, scanners) are expected; nothing to do */
  });
  // Requests node's parser rejects never reach a handler: answer them in the API's error shape.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
    if (!socket.writable || (err.code !== 'HPE_HEADER_OVERFLOW' && !err.code?.startsWith('HPE_'))) {
      socket.destroy();
      return;
    }
    const e =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? new BrokerError(
            'headers_too_large',
            `request line and headers exceed ${config.maxHeaderBytes} bytes`,
          )
        : new BrokerError('bad_request', 'malformed HTTP request');
    const requestId = newRequestId();
    const body = JSON.stringify(e.toJSON(requestId));
    socket.end(
      `HTTP/1.1 ${e.status} ${STATUS_CODES[e.status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`,
    );
  });
  // Root and the broker's own user may hold any number (tools and tests on the broker host);
  // they still count against the overall cap.
  const unlimited = uncappedSources();
  const shares = new FairShares({
    max: config.maxConnections,
    perSource: config.maxConnectionsPerSource,
  });
  const open = new Set<Socket>();
  const front = createNetServer({ pauseOnConnect: true }, (socket: Socket) => {
    socket.on('error', () => socket.destroy());
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    const ip = canonicalIp(socket.remoteAddress ?? '') ?? 'unknown';
    const admit = (source: string) => {
      if (socket.destroyed) return;
      const release = shares.admit(source, () => socket.destroy(), unlimited.has(source));
      if (!release) return void socket.destroy();
      socket.once('close', release);
      server.emit('connection', socket);
      socket.resume();
    };
    if (peers && isLoopback(ip))
      void peers.peerUid(socket).then(
        (uid) => admit(uid === null ? `ip:${ip}` : `uid:${uid}`),
        () => admit(`ip:${ip}`),
      );
    else admit(`ip:${ip}`);
  });
  front.on('error', () => undefined);
  return {
    https: server,
    listen: (port, host) =>
      new Promise((resolve, reject) => {
        front.once('error', reject);
        front.listen(port, host, () => {
          front.off('error', reject);
          // The HTTPS server never listens itself, but node:http starts tracking its connections
          // (header and request timeouts, closeIdleConnections) on 'listening': say it does.
          // The slowloris and drain tests (NET-3, lifecycle) would catch a node that changed this.
          server.emit('listening');
          resolve((front.address() as AddressInfo).port);
        });
      }),
    drain: async (graceMs) => {
      const closed = new Promise<void>((resolve) => front.close(() => resolve()));
      server.closeIdleConnections();
      const deadline = Date.now() + graceMs;
      while (open.size > 0 && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 50));
        server.closeIdleConnections();
      }
      server.closeAllConnections();
      for (const s of open) s.destroy();
      await closed;
    },
  };
}

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
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { BrokerError } from '../../protocol/errors.js';
import type { Config } from '../config.js';
import { VERIFY_PATH } from './verify-fast-path.js';
import { newRequestId } from './respond.js';
import { FairShares } from '../fair-shares.js';
import { canonicalIp, isLoopback } from '../net-util.js';
import type { PeerUidLookup } from '../../host/socket-owner.js';

export interface TlsMaterial {
  cert: string;
  key: string;
}

export function createHttpsServer(
  config: Config,
  tls: TlsMaterial,
  app: RequestListener,
  verify: RequestListener,
  /** Attributes loopback connections to local UIDs; without it every address is one source. */
  peers?: PeerUidLookup,
): Server {
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
  // Root and the broker's own user may hold any number (tools and tests on the broker host);
  // they still count against the overall cap.
  const unlimited = new Set([0, process.getuid?.() ?? 0].map((uid) => `uid:${uid}`));
  const shares = new FairShares({
    max: config.maxConnections,
    perSource: config.maxConnectionsPerSource,
  });
  server.on('connection', (socket: Socket) => {
    const ip = canonicalIp(socket.remoteAddress ?? '') ?? 'unknown';
    const admit = (source: string) => {
      if (socket.destroyed) return;
      const release = shares.admit(source, () => socket.destroy(), unlimited.has(source));
      if (!release) return void socket.destroy();
      socket.once('close', release);
    };
    if (peers && isLoopback(ip))
      void peers.lookup(socket).then((uid) => admit(uid === null ? `ip:${ip}` : `uid:${uid}`));
    else admit(`ip:${ip}`);
  });
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
  return server;
}

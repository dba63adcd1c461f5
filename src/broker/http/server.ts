/**
 * The HTTPS listener: TLS ≥ 1.2 only, no plaintext (NET-1), header/request timeouts, header size
 * and connection caps (NET-3). POST /v1/verify goes to the fast path, everything else to express.
 */
import { createServer, type Server } from 'node:https';
import type { RequestListener } from 'node:http';
import type { Config } from '../config.js';
import { VERIFY_PATH } from './verify-fast-path.js';

export interface TlsMaterial {
  cert: string;
  key: string;
}

export function createHttpsServer(
  config: Config,
  tls: TlsMaterial,
  app: RequestListener,
  verify: RequestListener,
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
      // A TLS handshake must finish as fast as headers must arrive.
      handshakeTimeout: config.headersTimeoutMs,
    },
    (req, res) => {
      if (req.method === 'POST' && req.url === VERIFY_PATH) verify(req, res);
      else app(req, res);
    },
  );
  server.maxConnections = config.maxConnections;
  server.on('tlsClientError', () => {
    /* failed handshakes (wrong version, scanners) are expected; nothing to do */
  });
  return server;
}

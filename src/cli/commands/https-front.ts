/**
 * The HTTPS front of `broker run --mode https`: TLS with the broker-issued certificate, the HTTP
 * gate (bearer key, login URL → cookie), then a plain-HTTP proxy to the app on loopback,
 * WebSocket upgrades included. The app never sees a request without a valid key.
 */
import { request as httpRequest } from 'node:http';
import { createServer, type Server } from 'node:https';
import { connect as netConnect } from 'node:net';
import type { Duplex } from 'node:stream';
import { splice } from '../../protocol/splice.js';
import type { BrokerService } from '../../server-sdk/service.js';

type AppTarget = { port: number } | { path: string };

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
]);

export function httpsFront(svc: BrokerService, app: AppTarget): Server {
  const gate = svc.httpGate();
  const server = createServer(svc.tlsOptions(), async (req, res) => {
    if (!(await gate.handle(req, res))) return;
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers))
      if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
    headers['x-forwarded-proto'] = 'https';
    const up = httpRequest(
      {
        ...('path' in app ? { socketPath: app.path } : { host: '127.0.0.1', port: app.port }),
        method: req.method,
        path: req.url,
        headers,
      },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
        // An app that dies mid-response resets the client's response: not a silent, truncated
        // 200. (The other way is the 'close' below.) pipeline() does both but cost 30 % of req/s.
        upRes.once('close', () => {
          if (!upRes.complete) res.destroy();
        });
      },
    );
    up.on('error', () => {
      if (res.headersSent) return void res.destroy();
      res.writeHead(502, { 'Content-Type': 'text/plain' });
      res.end('the app is not answering\n');
    });
    // A client gone before its response ended (waiting, mid-upload, mid-download) aborts the
    // app's request and frees its connection.
    res.once('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    // A request without a body (most are) ends at once; pipe() would wait a tick for its 'end'.
    if (
      req.headers['content-length'] === undefined &&
      req.headers['transfer-encoding'] === undefined
    )
      up.end();
    else req.pipe(up);
  });
  server.on('upgrade', (req, socket: Duplex, head: Buffer) =>
    gate.upgrade(req, socket, head, (r, s, h) => {
      const up =
        'path' in app ? netConnect(app.path) : netConnect({ host: '127.0.0.1', port: app.port });
      const hungUp = () => up.destroy();
      s.once('close', hungUp); // the client may leave while the app connection is being made
      up.once('connect', () => {
        s.off('close', hungUp);
        const lines = [`${r.method} ${r.url} HTTP/1.1`];
        for (let i = 0; i < r.rawHeaders.length; i += 2)
          lines.push(`${r.rawHeaders[i]}: ${r.rawHeaders[i + 1]}`);
        up.write(lines.join('\r\n') + '\r\n\r\n');
        if (h.length) up.write(h);
        splice(s, up);
      });
      up.once('error', () => s.destroy());
    }),
  );
  svc.watch(server);
  return server;
}

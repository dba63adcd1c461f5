/**
 * The HTTPS front of `broker run --mode https`: TLS with the broker-issued certificate, the HTTP
 * gate (bearer key, login URL → cookie), then a plain-HTTP proxy to the app, WebSocket upgrades
 * included. The app never sees a request without a valid key, nor the broker's credentials
 * (forward-headers.ts).
 *
 * It behaves like the reverse proxies people put in front of web apps (nginx,
 * configurable-http-proxy): no total request time limit but idle timeouts (a long upload is not
 * cut at 5 minutes), headers as large as the apps behind accept (Tornado: 64 KiB; browsers send
 * every `localhost` cookie to every port), an upgrade the app refuses answered and closed
 * (never left as a raw pipe that later requests would take past the gate), and the app reached on
 * IPv4 or IPv6 loopback, wherever its listener is. On a port, every new upstream connection is
 * made by the {@link UpstreamGuard}, which hands it to http.request only once the kernel says the
 * app's UID answered it — before a header (with the app credential) is written (LOC-3). Upstream
 * connections are kept alive, and a kept-alive one needs no new check.
 */
import {
  Agent,
  request as httpRequest,
  type IncomingMessage,
  type RequestOptions,
} from 'node:http';
import { createServer, type Server } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { splice } from '../../protocol/splice.js';
import type { GatedRequest } from '../../server-sdk/http-gate.js';
import type { BrokerService } from '../../server-sdk/service.js';
import type { AppTarget, UpstreamGuard } from './app-listener.js';
import {
  appRequestHeaders,
  clientResponseHeaders,
  withoutLoginKey,
  type ForwardOptions,
} from './forward-headers.js';

/** Limits of the front; each is at least as generous as what the apps behind it accept. */
export const FRONT_LIMITS = {
  /** Request line + headers (Tornado's default max_header_size). */
  maxHeaderBytes: 64 * 1024,
  /** To receive a request's headers (a slowloris bound; nginx: 60 s). */
  headersTimeoutMs: 30_000,
  /** An idle keep-alive connection between requests. */
  keepAliveTimeoutMs: 5_000,
  /** Default for a connection with no bytes either way mid-request (nginx: 60 s per read). */
  idleTimeoutMs: 300_000,
} as const;

export interface HttpsFrontOptions extends Omit<ForwardOptions, 'gateCookie'> {
  /** For a port target: makes (and attributes) every upstream connection. */
  guard: UpstreamGuard | null;
  /** Close a connection with no traffic for this long (default FRONT_LIMITS.idleTimeoutMs). */
  idleTimeoutMs?: number;
}

type Target = AppTarget;

const where = (t: Target) =>
  'path' in t ? { socketPath: t.path } : { host: t.host, port: t.port, family: 0 };

/** http's `createConnection` for a port target: the guard's connection, once it is ours. */
type CreateConnection = NonNullable<RequestOptions['createConnection']>;
const through =
  (guard: UpstreamGuard): CreateConnection =>
  (_o, oncreate) => {
    guard.connect((err, socket) => oncreate(err, socket!));
    return undefined;
  };

/** `HTTP/1.1 <status> <message>` and the raw header lines of a response. */
function head(res: IncomingMessage, extra: string[] = [], drop?: Set<string>): string {
  const lines = [`HTTP/1.1 ${res.statusCode} ${res.statusMessage ?? ''}`];
  for (let i = 0; i < res.rawHeaders.length; i += 2)
    if (!drop?.has(res.rawHeaders[i]!.toLowerCase()))
      lines.push(`${res.rawHeaders[i]}: ${res.rawHeaders[i + 1]}`);
  return [...lines, ...extra].join('\r\n') + '\r\n\r\n';
}

const REFUSED_UPGRADE_DROP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade']);

/** Create the front; the caller listens. */
export function httpsFront(svc: BrokerService, app: Target, opts: HttpsFrontOptions): Server {
  const gate = svc.httpGate();
  const fwd: ForwardOptions = {
    gateCookie: gate.cookieName,
    appAuth: opts.appAuth,
    forwardUser: opts.forwardUser,
  };
  const agent = new Agent({ keepAlive: true });
  const guard = opts.guard;
  if (!('path' in app) && !guard) throw new Error('a port target needs an UpstreamGuard');
  const connection = guard && !('path' in app) ? { createConnection: through(guard) } : {};
  // The agent makes its new sockets through the guard; kept-alive ones are reused as they are.
  if (connection.createConnection)
    (agent as unknown as { createConnection: CreateConnection }).createConnection =
      connection.createConnection;
  /** Wait for the guard when it asks to; false: do not connect. */
  const mayConnect = (): boolean | Promise<boolean> => (guard ? guard.ready() : true);

  const server = createServer(
    {
      ...svc.tlsOptions(),
      requestTimeout: 0,
      headersTimeout: FRONT_LIMITS.headersTimeoutMs,
      keepAliveTimeout: FRONT_LIMITS.keepAliveTimeoutMs,
      maxHeaderSize: FRONT_LIMITS.maxHeaderBytes,
    },
    async (req: GatedRequest, res) => {
      if (!(await gate.handle(req, res))) return;
      const ok = mayConnect();
      if (ok !== true && !(await ok)) {
        res.writeHead(502, { 'Content-Type': 'text/plain', Connection: 'close' });
        return void res.end('the app is not listening\n');
      }
      const up = httpRequest(
        {
          ...where(app),
          agent,
          method: req.method,
          path: withoutLoginKey(req.url ?? '/'),
          headers: appRequestHeaders(req, req.brokerPrincipal, fwd),
          maxHeaderSize: FRONT_LIMITS.maxHeaderBytes,
        },
        (upRes) => {
          res.writeHead(upRes.statusCode ?? 502, clientResponseHeaders(upRes, fwd.gateCookie));
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
    },
  );
  server.setTimeout(opts.idleTimeoutMs ?? FRONT_LIMITS.idleTimeoutMs);

  server.on('upgrade', (req: GatedRequest, socket: Duplex, bodyHead: Buffer) =>
    gate.upgrade(req, socket, bodyHead, async (r: GatedRequest, s, h) => {
      const ok = mayConnect();
      if (ok !== true && !(await ok)) {
        s.end('HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      const headers = appRequestHeaders(r, r.brokerPrincipal, fwd);
      headers.connection = 'Upgrade';
      if (r.headers.upgrade) headers.upgrade = r.headers.upgrade;
      const up = httpRequest({
        ...where(app),
        ...connection,
        agent: false,
        method: r.method,
        path: withoutLoginKey(r.url ?? '/'),
        headers,
        maxHeaderSize: FRONT_LIMITS.maxHeaderBytes,
      });
      const hungUp = () => up.destroy();
      s.once('close', hungUp); // the client may leave while the app is being asked
      // 101: from now on the connection is the app's protocol, both ways.
      up.once('upgrade', (upRes, upSock: Socket, upHead: Buffer) => {
        s.off('close', hungUp);
        s.write(head(upRes));
        if (upHead.length) s.write(upHead);
        if (h.length) upSock.write(h);
        splice(s, upSock);
      });
      // Anything else: the app's answer goes back and the connection ends. Later requests on it
      // would otherwise reach the app through a raw pipe, past the gate.
      up.once('response', (upRes) => {
        s.write(head(upRes, ['Connection: close'], REFUSED_UPGRADE_DROP));
        upRes.on('data', (c: Buffer) => s.write(c));
        upRes.once('end', () => s.end());
        upRes.once('close', () => {
          if (!upRes.complete) s.destroy();
        });
      });
      up.once('error', () => {
        if (!s.destroyed)
          s.end('HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      });
      up.end();
    }),
  );
  server.once('close', () => agent.destroy());
  svc.watch(server);
  return server;
}

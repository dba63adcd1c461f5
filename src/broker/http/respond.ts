/**
 * What every response path shares — express routes and the verify fast path alike: request ids,
 * the error body, and one structured access line per request (query strings stripped, secrets
 * redacted, level by status).
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { BrokerError } from '../../protocol/errors.js';
import { canonicalIp } from '../net-util.js';
import type { Metrics } from '../metrics.js';

export interface RequestMeta {
  requestId: string;
  start: bigint;
  /** Fields handlers add for the access line (service, keyId, actor). */
  fields: Record<string, unknown>;
}

/** Request ids: a random per-process prefix and a counter — unique, cheap, sortable in a log. */
const ID_PREFIX = randomBytes(6).toString('base64url');
let idCounter = 0;
export function newRequestId(): string {
  return `${ID_PREFIX}-${(++idCounter).toString(36)}`;
}

export function startRequest(res: ServerResponse): RequestMeta {
  const meta: RequestMeta = {
    requestId: newRequestId(),
    start: process.hrtime.bigint(),
    fields: {},
  };
  res.setHeader('X-Request-Id', meta.requestId);
  return meta;
}

const sources = new WeakMap<object, string>();

/** The client's address, canonical; computed once per connection. */
export function sourceOf(req: IncomingMessage): string {
  let source = sources.get(req.socket);
  if (source === undefined) {
    source = canonicalIp(req.socket.remoteAddress ?? '') ?? 'unknown';
    sources.set(req.socket, source);
  }
  return source;
}

const SECRET_IN_TEXT = /bk[usk]_[A-Za-z0-9_-]*/g;

/** A path fit for a log line: no query string, no secret, no control characters, bounded. */
export function loggablePath(url: string | undefined): string {
  if (url === '/v1/verify') return url;
  const path = (url ?? '').split('?')[0]!;
  return (
    path
      .replace(SECRET_IN_TEXT, 'bk?_[redacted]')
      // eslint-disable-next-line no-control-regex
      .replace(/[\x00-\x1f\x7f]/g, '?')
      .slice(0, 200)
  );
}

/** Map anything thrown to the BrokerError that goes out; unexpected errors become `internal`. */
export function toBrokerError(err: unknown, log: Logger, meta: RequestMeta): BrokerError {
  if (err instanceof BrokerError) return err;
  log.error({ err, requestId: meta.requestId }, 'unexpected error');
  return new BrokerError(
    'internal',
    'internal error; the broker log has details under this requestId',
  );
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  });
  res.end(text);
}

export function sendError(res: ServerResponse, err: BrokerError, meta: RequestMeta): void {
  if (err.code === 'rate_limited' && err.retryAfterSeconds !== undefined) {
    res.setHeader('Retry-After', String(Math.ceil(err.retryAfterSeconds)));
  }
  meta.fields.error = err.code;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  sendJson(res, err.status, err.toJSON(meta.requestId));
}

/** One access line per request, when the response finishes. */
export function logAccess(
  log: Logger,
  req: IncomingMessage,
  res: ServerResponse,
  meta: RequestMeta,
  metrics?: Metrics,
): void {
  const ms = Number(process.hrtime.bigint() - meta.start) / 1e6;
  // Route templates only, never raw paths: bounded label values.
  const route =
    (req as { route?: { path?: string } }).route?.path ??
    (req.url === '/v1/verify' ? '/v1/verify' : 'unmatched');
  metrics?.request(req.method ?? 'OTHER', route, res.statusCode, ms / 1000);
  const line = {
    requestId: meta.requestId,
    method: req.method,
    path: loggablePath(req.url),
    status: res.statusCode,
    ms: Math.round(ms * 1000) / 1000,
    source: sourceOf(req),
    ...meta.fields,
  };
  if (res.statusCode >= 500) log.error(line, 'request');
  else if (res.statusCode >= 400 || meta.fields.valid === false) {
    if (!failureBudget(log).take()) return;
    if (res.statusCode >= 400) log.warn(line, 'request');
    else log.info(line, 'request');
  } else log.info(line, 'request');
}

/**
 * Failed requests are logged at a bounded rate (LOG-2): a flood of wrong keys or bad requests
 * writes at most `perSecond` lines a second and one line saying how many it left out (the audit
 * log and /metrics still count every one). Successes and 5xx are always logged.
 */
export class FailureLogBudget {
  private windowStart = 0;
  private used = 0;
  private suppressed = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly perSecond: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** True when this failure may be logged; otherwise it is counted for the summary line. */
  take(): boolean {
    const now = this.now();
    if (now - this.windowStart >= 1000) {
      this.report();
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used < this.perSecond) {
      this.used++;
      return true;
    }
    this.suppressed++;
    if (!this.timer) {
      this.timer = setTimeout(() => this.report(), 1000 - (now - this.windowStart));
      this.timer.unref();
    }
    return false;
  }

  private report(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.suppressed === 0) return;
    this.log.warn(
      { suppressed: this.suppressed, perSecond: this.perSecond },
      'failed requests over the log rate limit were counted, not logged',
    );
    this.suppressed = 0;
  }
}

const budgets = new WeakMap<Logger, FailureLogBudget>();
/** The budget shared by every request logged through `log` (one per daemon). */
export function failureBudget(log: Logger, perSecond = 50): FailureLogBudget {
  let b = budgets.get(log);
  if (!b) budgets.set(log, (b = new FailureLogBudget(log, perSecond)));
  return b;
}

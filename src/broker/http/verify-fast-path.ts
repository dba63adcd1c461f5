/**
 * POST /v1/verify without express. Verify is the hot path (every client connection to a gated
 * server costs one), and express alone spends ≈ 160 µs per request (PERFORMANCE.md fact 3) against
 * ≈ 13 µs for the lookup and hash. This handler gives the same answers, errors and access line as
 * the express route would, on bare node:http.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import { BrokerError } from '../../protocol/errors.js';
import { MAX_BODY_BYTES, MAX_KEY_LINE_BYTES } from '../../protocol/constants.js';
import { Authenticator } from '../auth.js';
import type { KeyService } from '../keys.js';
import type { Metrics } from '../metrics.js';
import { checkBodyHeaders } from './app.js';
import {
  logAccess,
  type RequestMeta,
  sendError,
  sendJson,
  sourceOf,
  startRequest,
  toBrokerError,
} from './respond.js';

export const VERIFY_PATH = '/v1/verify';

function readBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_BODY_BYTES) {
      reject(new BrokerError('payload_too_large', `request body exceeds ${MAX_BODY_BYTES} bytes`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        req.removeAllListeners('data');
        req.resume();
        reject(
          new BrokerError('payload_too_large', `request body exceeds ${MAX_BODY_BYTES} bytes`),
        );
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)));
    req.on('error', () => reject(new BrokerError('bad_request', 'request body was cut short')));
  });
}

/** Parse like express.json({strict: true}): empty → {}, only objects and arrays, else 400. */
function parseVerifyBody(raw: Buffer): string {
  let body: unknown = {};
  if (raw.length > 0) {
    const text = raw.toString('utf8');
    const first = /^[ \t\n\r]*(.)/.exec(text)?.[1];
    try {
      if (first !== '{' && first !== '[') throw new Error('not an object');
      body = JSON.parse(text);
    } catch {
      throw new BrokerError('bad_request', 'request body is not valid JSON');
    }
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new BrokerError('validation_failed', 'invalid body: expected an object {"key": "bkk_…"}');
  }
  const keys = Object.keys(body);
  const key = (body as { key?: unknown }).key;
  if (
    keys.length !== 1 ||
    keys[0] !== 'key' ||
    typeof key !== 'string' ||
    key.length > MAX_KEY_LINE_BYTES
  ) {
    throw new BrokerError(
      'validation_failed',
      'invalid body: expected exactly {"key": "<client key>"}',
    );
  }
  return key;
}

export function createVerifyHandler(deps: {
  auth: Authenticator;
  keys: KeyService;
  log: Logger;
  metrics?: Metrics;
  /** How long a 429 for a blocked service is held back (0: answer at once). */
  tarpitMs?: number;
  /** At most this many 429s held back at once; beyond it they are answered at once. */
  tarpitMax?: number;
}) {
  const tarpitMs = deps.tarpitMs ?? 0;
  const tarpitMax = deps.tarpitMax ?? 256;
  let held = 0;
  /**
   * BF-2 tarpit: a wrong key for a service already in backoff is answered after `tarpitMs`
   * instead of at once, so each connection of a guessing attacker costs the broker one timer a
   * second rather than a request's worth of work a few hundred times a second — the same idea as
   * OpenSSH's PerSourcePenalties. The right key is checked before the limiter and never waits.
   */
  const sendLater = (res: ServerResponse, err: BrokerError, meta: RequestMeta) => {
    if (tarpitMs <= 0 || held >= tarpitMax) {
      sendError(res, err, meta);
      return;
    }
    held++;
    const delay = Math.min(tarpitMs, (err.retryAfterSeconds ?? 1) * 1000);
    const timer = setTimeout(() => {
      held--;
      res.off('close', gone);
      if (!res.destroyed) sendError(res, err, meta);
    }, delay);
    const gone = () => {
      clearTimeout(timer);
      held--;
    };
    res.once('close', gone);
  };
  return async function verify(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const meta = startRequest(res);
    res.on('finish', () => logAccess(deps.log, req, res, meta, deps.metrics));
    try {
      const bad = checkBodyHeaders(req);
      if (bad) throw bad;
      const identity = deps.auth.authenticateForVerify(
        Authenticator.bearer(req.headers.authorization),
      );
      if (identity.kind === 'service') meta.fields.actor = `service:${identity.service.id}`;
      const key = parseVerifyBody(await readBody(req));
      const result = deps.keys.verify(identity, key, sourceOf(req));
      meta.fields.valid = result.valid;
      if (result.valid) meta.fields.keyId = result.keyId;
      sendJson(res, 200, result);
    } catch (err) {
      const e = toBrokerError(err, deps.log, meta);
      if (e.code === 'rate_limited') sendLater(res, e, meta);
      else sendError(res, e, meta);
    }
  };
}

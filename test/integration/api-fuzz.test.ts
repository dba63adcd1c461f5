/**
 * SECURITY.md FUZZ-1: fast-check over every route of the route table with hostile path
 * parameters, methods, bodies, content types and credentials. Whatever arrives, the broker answers
 * a JSON 4xx in the catalogue's shape (never a 5xx, never a stack trace), tags every response
 * with X-Request-Id, and stays up. The verify fast path must answer exactly like the express
 * route it shadows.
 *
 * Deterministic: fixed seeds (override with FUZZ_SEED=<n>); a failure prints seed and path so
 * `fc.assert(…, { seed, path })` replays it.
 */
import { request, type Agent } from 'node:https';
import type { IncomingHttpHeaders } from 'node:http';
import type { Server } from 'node:net';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROUTES } from '../../src/broker/http/app.js';
import { type Daemon, recordSecrets } from '../helpers/daemon.js';
import {
  OTHER_METHODS,
  authArb,
  contentTypeArb,
  errorCode,
  fuzzKit,
  problems,
  unknownPathArb,
  type FuzzState,
  emptyFuzzState,
  startFuzzDaemon,
  readyFuzzService,
  type Raw,
  type Req,
} from '../helpers/fuzz-arbitraries.js';

const SEED = Number(process.env.FUZZ_SEED ?? 20_261_122);

let d: Daemon;
let port: number;
const state: FuzzState = emptyFuzzState();
const listeners: Server[] = [];
const { bodyArb, buildReq, routeArb, routeReq } = fuzzKit(state);

/** A raw HTTPS request: the path goes out byte for byte (no URL normalisation). */
function send(r: Req, agent: Agent | false = d.agent): Promise<Raw> {
  const headers = { ...r.headers };
  if (r.body !== undefined) {
    if (r.chunked) headers['transfer-encoding'] = 'chunked';
    else headers['content-length'] = String(r.body.length);
  }
  return new Promise((resolve, reject) => {
    const req = request(
      { hostname: '127.0.0.1', port, path: r.path, method: r.method, headers, agent, ca: d.ca },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          recordSecrets(text);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(r.body);
  });
}

async function api(method: string, path: string, token: string, body?: unknown) {
  const res = await send({
    method,
    path,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    body: body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined,
  });
  return { ...res, body: JSON.parse(res.text || 'null') };
}

beforeAll(async () => {
  d = await startFuzzDaemon(state, listeners);
  port = Number(new URL(d.url).port);
});

afterAll(async () => {
  for (const s of listeners) s.close();
  if (!d) return;
  const code = await d.stop();
  expect(code).toBe(0);
  // KEY-2, LOG-1: stop() has scanned the logs, database and WAL for every secret seen.
});

// ---------------------------------------------------------------------------------------------

async function check(req: Req): Promise<void> {
  const res = await send(req);
  const p = problems(req, res);
  if (p) throw new Error(p);
}

// ---------------------------------------------------------------------------------------------

describe('FUZZ-1: every route of the table', () => {
  it('the route table is what this file fuzzes', () => {
    expect(ROUTES.length).toBeGreaterThanOrEqual(20);
    // Everything is under /v1 except Prometheus' conventional /metrics (DESIGN §5).
    for (const r of ROUTES) expect(r.path.startsWith('/v1/') || r.path === '/metrics').toBe(true);
  });

  it(`fail/FUZZ-1 random requests over ROUTES → JSON 4xx in the catalogue shape, never 5xx (seed ${SEED})`, async () => {
    await fc.assert(
      fc.asyncProperty(routeArb(), async (x) => {
        await check(routeReq(x));
      }),
      { numRuns: 1000, seed: SEED },
    );
  });

  it(`fail/FUZZ-1 unknown paths and methods → 404 not_found / 405 method_not_allowed JSON (seed ${SEED + 1})`, async () => {
    const pathArb = unknownPathArb();
    await fc.assert(
      fc.asyncProperty(
        pathArb,
        fc.constantFrom(...OTHER_METHODS),
        bodyArb(),
        contentTypeArb,
        authArb,
        async (path, method, body, ct, auth) => {
          await check(buildReq(method, path, body, ct, undefined, auth, false));
        },
      ),
      { numRuns: 250, seed: SEED + 1 },
    );
  });

  it('fail/FUZZ-1 a known path with a wrong method → 405 method_not_allowed with Allow', async () => {
    for (const route of ROUTES) {
      const path = route.path
        .replace(':owner', 'alice')
        .replace(':name', 'fuzzsvc')
        .replace(':keyId', 'key_0000000000000000')
        .replace(':tokenId', 'tok_0000000000000000');
      const allowed = ROUTES.filter((r) => r.path === route.path).map((r) => r.method);
      for (const method of ['PUT', 'PROPFIND', 'PATCH', 'DELETE', 'POST', 'GET']) {
        if (allowed.includes(method as (typeof allowed)[number])) continue;
        const req = buildReq(method, path, undefined, undefined, undefined, 'admin', false);
        const res = await send(req);
        expect(problems(req, res), `${method} ${path}`).toBeNull();
        expect(res.status, `${method} ${path}`).toBe(405);
        expect(errorCode(res)).toBe('method_not_allowed');
        expect(String(res.headers.allow).split(', ').sort()).toEqual([...allowed].sort());
      }
    }
  });
});

describe('FUZZ-1: the verify fast path answers like the express route', () => {
  // The random fuzz above may have unregistered alice/fuzzsvc or revoked its key (which requests
  // it draws depends on the route table): start this block from a known state.
  beforeAll(async () => {
    if ((await api('GET', '/v1/whoami', state.serviceToken)).status !== 200) {
      await api('DELETE', '/v1/services/alice/fuzzsvc', state.alice);
      state.serviceToken = await readyFuzzService(d, state, listeners, 'fuzzsvc');
    }
    const k = await api('POST', '/v1/services/alice/fuzzsvc/keys', state.alice, {});
    state.key = k.body.key;
    state.keyId = k.body.keyId;
  });

  /** `/v1/verify` is served by the fast path; `/v1/verify?` (same route) goes through express. */
  const FAST = '/v1/verify';
  const EXPRESS = '/v1/verify?';

  async function both(req: Omit<Req, 'path'>): Promise<[Raw, Raw]> {
    const fast = await send({ ...req, path: FAST });
    const slow = await send({ ...req, path: EXPRESS });
    return [fast, slow];
  }

  const json = { 'content-type': 'application/json' };
  const cases: {
    name: string;
    req: () => Omit<Req, 'path'>;
    status: number | number[];
    code: string | null;
  }[] = [
    {
      name: 'malformed JSON',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from('{"key":') }),
      status: 400,
      code: 'bad_request',
    },
    {
      name: 'text/plain',
      req: () => ({
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: Buffer.from(`{"key":"${state.key}"}`),
      }),
      status: 415,
      code: 'unsupported_media_type',
    },
    {
      name: 'no content type',
      req: () => ({ method: 'POST', headers: {}, body: Buffer.from(`{"key":"${state.key}"}`) }),
      status: 415,
      code: 'unsupported_media_type',
    },
    {
      name: 'charset latin1',
      req: () => ({
        method: 'POST',
        headers: { 'content-type': 'application/json; charset=latin1' },
        body: Buffer.from('{"key":"x"}'),
      }),
      status: 415,
      code: 'unsupported_media_type',
    },
    {
      name: 'unknown field',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"${state.key}","admin":true}`),
      }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'key is a number',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from('{"key":1}') }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'key too long',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"${'k'.repeat(2000)}"}`),
      }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'array body',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from('[]') }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'null body',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from('null') }),
      status: 400,
      code: null,
    },
    {
      name: 'string body',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from('"bkk_x"') }),
      status: 400,
      code: null,
    },
    {
      name: 'empty body',
      req: () => ({ method: 'POST', headers: json, body: Buffer.alloc(0) }),
      status: 400,
      code: null,
    },
    {
      name: 'no body at all',
      req: () => ({ method: 'POST', headers: {} }),
      status: 400,
      code: null,
    },
    {
      name: '__proto__ body',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from('{"__proto__":{"key":"x"}}'),
      }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'deep nesting',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from('{"key":' + '['.repeat(8000) + ']'.repeat(8000) + '}'),
      }),
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'invalid UTF-8 key',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from([0x7b, 0x22, 0x6b, 0x65, 0x79, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0x22, 0x7d]),
      }),
      status: 200,
      code: null,
    },
    {
      name: 'unknown key',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"bkk_${'Q'.repeat(43)}"}`),
      }),
      status: 200,
      code: null,
    },
    {
      name: 'valid key',
      req: () => ({ method: 'POST', headers: json, body: Buffer.from(`{"key":"${state.key}"}`) }),
      status: 200,
      code: null,
    },
    {
      name: 'chunked valid key',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"${state.key}"}`),
        chunked: true,
      }),
      status: 200,
      code: null,
    },
    {
      name: '20000-byte body',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"${'a'.repeat(20_000 - 10)}"}`),
      }),
      status: 413,
      code: 'payload_too_large',
    },
    {
      name: '20000-byte chunked body',
      req: () => ({
        method: 'POST',
        headers: json,
        body: Buffer.from(`{"key":"${'a'.repeat(20_000 - 10)}"}`),
        chunked: true,
      }),
      status: 413,
      code: 'payload_too_large',
    },
    {
      name: 'gzip-encoded body',
      req: () => ({
        method: 'POST',
        headers: { ...json, 'content-encoding': 'gzip' },
        body: gzipSync(`{"key":"${state.key}"}`),
      }),
      // Inflated and verified, or refused as a content-encoded body: either, but on both paths.
      status: [200, 415],
      code: null,
    },
  ];
  const principals: [string, () => string | undefined][] = [
    ['service token', () => `Bearer ${state.serviceToken}`],
    ['no token', () => undefined],
    ['user token', () => `Bearer ${state.alice}`],
    ['unknown token', () => 'Bearer bks_' + 'Z'.repeat(43)],
  ];

  const summary = (r: Raw) => ({
    status: r.status,
    code: errorCode(r),
    body: r.status === 200 ? (JSON.parse(r.text) as unknown) : undefined,
  });

  for (const c of cases) {
    const expected = `${[c.status].flat().join('/')}${c.code ? ' ' + c.code : ''}`;
    it(`fail/FUZZ-1 verify ${c.name}: fast path ≡ express for every credential (service token → ${expected})`, async () => {
      const mismatches: string[] = [];
      for (const [who, auth] of principals) {
        const base = c.req();
        const a = auth();
        const req = { ...base, headers: { ...base.headers, ...(a ? { authorization: a } : {}) } };
        const [fast, slow] = await both(req);
        expect(problems({ ...req, path: FAST }, fast)).toBeNull();
        expect(problems({ ...req, path: EXPRESS }, slow)).toBeNull();
        const [f, e] = [summary(fast), summary(slow)];
        if (JSON.stringify(f) !== JSON.stringify(e)) {
          mismatches.push(`${who}: fast ${f.status} ${f.code} ≠ express ${e.status} ${e.code}`);
        }
        if (who === 'service token') {
          expect([c.status].flat(), fast.text).toContain(fast.status);
          if (c.code) expect(errorCode(fast)).toBe(c.code);
        }
      }
      expect(mismatches).toEqual([]);
    });
  }

  it(`fail/FUZZ-1 random verify requests: fast path ≡ express route (seed ${SEED + 2})`, async () => {
    await fc.assert(
      fc.asyncProperty(
        bodyArb(),
        contentTypeArb,
        authArb,
        fc.boolean(),
        async (body, ct, auth, chunked) => {
          const req = buildReq('POST', FAST, body, ct, undefined, auth, chunked);
          const fast = await send(req);
          const slow = await send({ ...req, path: EXPRESS });
          const p = problems(req, fast) ?? problems({ ...req, path: EXPRESS }, slow);
          if (p) throw new Error(p);
          if (fast.status !== slow.status || errorCode(fast) !== errorCode(slow)) {
            throw new Error(
              `fast ${fast.status} ${errorCode(fast)} ≠ express ${slow.status} ${errorCode(slow)}`,
            );
          }
        },
      ),
      { numRuns: 250, seed: SEED + 2 },
    );
  });
});

describe('FUZZ-1: explicit hostile inputs', () => {
  const admin = () => ({ authorization: `Bearer ${state.admin}` });
  const cases: { name: string; req: () => Req; status: number | number[] }[] = [
    // A %-escape that is not UTF-8 cannot be decoded into a name: the request is malformed.
    {
      name: 'GET /v1/services/alice/%ff',
      req: () => ({ method: 'GET', path: '/v1/services/alice/%ff', headers: admin() }),
      status: 400,
    },
    {
      name: 'GET /v1/principals/%c0%ae',
      req: () => ({ method: 'GET', path: '/v1/principals/%c0%ae', headers: admin() }),
      status: 400,
    },
    {
      name: 'DELETE /v1/keys/%e0%80',
      req: () => ({ method: 'DELETE', path: '/v1/keys/%e0%80', headers: admin() }),
      status: 400,
    },
    {
      name: 'GET /v1/services/%2e%2e/%2e%2e',
      req: () => ({ method: 'GET', path: '/v1/services/%2e%2e/%2e%2e', headers: admin() }),
      status: 400,
    },
    {
      name: 'GET /v1/services/alice/..%2f..%2fetc%2fpasswd',
      req: () => ({
        method: 'GET',
        path: '/v1/services/alice/..%2f..%2fetc%2fpasswd',
        headers: admin(),
      }),
      status: 400,
    },
    {
      name: 'GET /v1/principals/a%00b',
      req: () => ({ method: 'GET', path: '/v1/principals/a%00b', headers: admin() }),
      status: 400,
    },
    // A body whose Content-Encoding does not match its bytes cannot be parsed.
    ...(['gzip', 'deflate', 'br'] as const).map((enc) => ({
      name: `POST /v1/services with corrupt ${enc} body`,
      req: (): Req => ({
        method: 'POST',
        path: '/v1/services',
        headers: { ...admin(), 'content-type': 'application/json', 'content-encoding': enc },
        body: Buffer.from('{"name":"not-compressed"}'),
      }),
      // Unparseable (400) or content-encoded bodies not accepted at all (415).
      status: [400, 415],
    })),
    {
      name: 'POST /v1/services with unknown content-encoding',
      req: () => ({
        method: 'POST',
        path: '/v1/services',
        headers: { ...admin(), 'content-type': 'application/json', 'content-encoding': 'x-zip' },
        body: Buffer.from('{"name":"x"}'),
      }),
      status: 415,
    },
    {
      name: 'POST /v1/principals with 10000-deep nesting',
      req: () => ({
        method: 'POST',
        path: '/v1/principals',
        headers: { ...admin(), 'content-type': 'application/json' },
        body: Buffer.from('['.repeat(10_000) + ']'.repeat(10_000)),
      }),
      status: 413,
    },
    {
      name: 'POST /v1/principals with 8000-deep nesting (under the size limit)',
      req: () => ({
        method: 'POST',
        path: '/v1/principals',
        headers: { ...admin(), 'content-type': 'application/json' },
        body: Buffer.from('{"name":' + '['.repeat(8_000) + ']'.repeat(8_000) + '}'),
      }),
      status: 400,
    },
    {
      name: 'POST /v1/principals {"__proto__":{"admin":true}}',
      req: () => ({
        method: 'POST',
        path: '/v1/principals',
        headers: { ...admin(), 'content-type': 'application/json' },
        body: Buffer.from('{"name":"protouser","__proto__":{"role":"admin"}}'),
      }),
      status: 400,
    },
    {
      name: 'POST /v1/services with invalid UTF-8',
      req: () => ({
        method: 'POST',
        path: '/v1/services',
        headers: { ...admin(), 'content-type': 'application/json' },
        body: Buffer.from([
          0x7b, 0x22, 0x6e, 0x61, 0x6d, 0x65, 0x22, 0x3a, 0x22, 0xff, 0xc0, 0x22, 0x7d,
        ]),
      }),
      status: 400,
    },
    {
      name: 'PROPFIND /v1/services',
      req: () => ({ method: 'PROPFIND', path: '/v1/services', headers: admin() }),
      status: 405,
    },
  ];
  for (const c of cases) {
    it(`fail/FUZZ-1 ${c.name} → ${[c.status].flat().join('/')} JSON error`, async () => {
      const req = c.req();
      const res = await send(req);
      expect(problems(req, res)).toBeNull();
      expect([c.status].flat(), res.text).toContain(res.status);
    });
  }
});

describe('FUZZ-1: body size limits and liveness', () => {
  const svcPost = (body: Buffer, extra: Record<string, string> = {}): Req => ({
    method: 'POST',
    path: '/v1/services',
    headers: {
      authorization: `Bearer ${state.alice}`,
      'content-type': 'application/json',
      ...extra,
    },
    body,
  });

  it('fail/FUZZ-1 1 MB body → 413 payload_too_large', async () => {
    const body = Buffer.from(`{"name":"${'a'.repeat(1024 * 1024)}"}`);
    for (const req of [svcPost(body), { ...svcPost(body), path: '/v1/verify' }]) {
      const res = await send(req, false);
      expect(problems(req, res)).toBeNull();
      expect(res.status, res.text).toBe(413);
      expect(errorCode(res)).toBe('payload_too_large');
    }
  });

  it('fail/FUZZ-1 content-length 20000 → 413 payload_too_large', async () => {
    const body = Buffer.from(`{"name":"${'a'.repeat(20_000 - 11)}"}`);
    expect(body.length).toBe(20_000);
    const verifyReq: Req = {
      method: 'POST',
      path: '/v1/verify',
      headers: {
        authorization: `Bearer ${state.serviceToken}`,
        'content-type': 'application/json',
      },
      body,
    };
    for (const req of [svcPost(body), verifyReq]) {
      const res = await send(req, false);
      expect(problems(req, res)).toBeNull();
      expect(res.status, res.text).toBe(413);
      expect(errorCode(res)).toBe('payload_too_large');
    }
  });

  it('fail/FUZZ-1 a deflate bomb (gzip of 1 MB) → 413 payload_too_large or 415 (not inflated)', async () => {
    const body = gzipSync(Buffer.from(`{"name":"${'a'.repeat(1024 * 1024)}"}`));
    const req = svcPost(body, { 'content-encoding': 'gzip' });
    const res = await send(req, false);
    expect(problems(req, res)).toBeNull();
    expect([413, 415], res.text).toContain(res.status);
  });

  interface Streamed {
    status: number;
    text: string;
    sent: number;
    headers: IncomingHttpHeaders;
    /** Set when the connection failed before a response could be read. */
    error?: string;
  }

  /**
   * Stream up to `total` bytes chunked, one 64 KiB chunk per event-loop turn (so a response is
   * read as soon as it arrives), and stop writing as soon as it does. Nothing big is allocated.
   */
  function stream(path: string, token: string, total: number): Promise<Streamed> {
    return new Promise((resolve) => {
      let responded = false;
      let sent = 0;
      const req = request({
        hostname: '127.0.0.1',
        port,
        path,
        method: 'POST',
        agent: false,
        ca: d.ca,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'transfer-encoding': 'chunked',
        },
      });
      req.on('response', (res) => {
        responded = true;
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, text, sent, headers: res.headers });
          req.destroy();
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (!responded)
          resolve({ status: 0, text: '', sent, headers: {}, error: err.code ?? err.message });
      });
      const chunk = Buffer.alloc(64 * 1024, 0x61);
      const pump = () => {
        if (responded || req.destroyed) return;
        if (sent >= total) {
          req.end('"}');
          return;
        }
        sent += chunk.length;
        if (req.write(chunk)) setImmediate(pump);
        else req.once('drain', () => setImmediate(pump));
      };
      req.write('{"name":"');
      pump();
    });
  }

  it('fail/FUZZ-1 100 MB chunked body → 413, the daemon stays up', async () => {
    const total = 100 * 1024 * 1024;
    for (const [path, token] of [
      ['/v1/services', state.alice],
      ['/v1/verify', state.serviceToken],
    ] as const) {
      // A server that answers early and closes while the client is still sending makes the
      // kernel reset the connection; a client then sometimes loses the answer (EPIPE/ECONNRESET
      // on its next write). Such an attempt shows nothing either way, so it is repeated.
      let res = await stream(path, token, total);
      for (let i = 0; i < 4 && (res.error === 'EPIPE' || res.error === 'ECONNRESET'); i++) {
        res = await stream(path, token, total);
      }
      expect(res.error, `${path} after ${res.sent} bytes`).toBeUndefined();
      expect(res.status, `${path}: ${res.text}`).toBe(413);
      expect(JSON.parse(res.text).error.code).toBe('payload_too_large');
      expect(res.headers['x-request-id']).toBeTruthy();
      const health = await send({ method: 'GET', path: '/v1/health', headers: {} });
      expect(health.status).toBe(200);
    }
    expect(d.proc.exitCode).toBeNull();
  }, 60_000);

  it('ok/FUZZ-1 after all of the above: /v1/health answers, the daemon is alive, tokens work', async () => {
    const res = await send({ method: 'GET', path: '/v1/health', headers: {} });
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text).status).toBe('ok');
    expect(d.proc.exitCode).toBeNull();
    expect(d.proc.signalCode).toBeNull();
    const who = await api('GET', '/v1/whoami', state.admin);
    expect(who.status).toBe(200);
  });

  // DUR-5: bad input is a 4xx, not an "unexpected error" in the broker log.
  it('fail/FUZZ-1 no unexpected error was logged during the whole run', () => {
    const unexpected = d
      .logs()
      .split('\n')
      .filter((l) => l.includes('"unexpected error"') || /"level":(?:50|60)/.test(l))
      .map((l) => l.slice(0, 200));
    expect(unexpected).toEqual([]);
  });
});

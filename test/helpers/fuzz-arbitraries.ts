/**
 * SECURITY.md FUZZ-1: the request generators and the response property shared by
 * test/integration/api-fuzz.test.ts (fast-check properties with shrinking) and
 * test/integration/api-fuzz-volume.test.ts (>= 100,000 sampled requests against one daemon).
 *
 * Generators that need live credentials (bodies carrying a client key, authorization headers,
 * valid path parameters) come from `fuzzKit(state)`; they read `state` when a value is drawn or
 * a request is built, so a test may replace a token or key in `state` after building them.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { METHODS } from 'node:http';
import { gzipSync } from 'node:zlib';
import { createServer, type Server } from 'node:net';
import fc from 'fast-check';
import { ROUTES } from '../../src/broker/http/app.js';
import type { Route } from '../../src/broker/http/route.js';
import { ERROR_CATALOGUE } from '../../src/protocol/errors.js';
import { MAX_BODY_BYTES } from '../../src/protocol/constants.js';
import { Daemon } from './daemon.js';

export interface Raw {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
}

export interface Req {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: Buffer;
  chunked?: boolean;
}

/** The live credentials and ids the generators draw from (filled in by the test's setup). */
export interface FuzzState {
  admin: string;
  adminName: string;
  user: string;
  alice: string;
  serviceToken: string;
  otherServiceToken: string;
  key: string;
  keyId: string;
  tokenId: string;
}

export const STACK_FRAME = /\bat (?:[^\s()]+ )?\(?(?:file:\/\/|node:|\/)[^\s()]*:\d+(?::\d+)?\)?/;

/** The FUZZ-1 property for one response; returns a description of what is wrong, or null. */
export function problems(req: Req, res: Raw): string | null {
  const where = `${req.method} ${req.path.slice(0, 120)} → ${res.status} ${res.text.slice(0, 300)}`;
  if (res.status >= 500 || res.status < 100) return `status ${res.status}: ${where}`;
  const rid = res.headers['x-request-id'];
  if (typeof rid !== 'string' || rid.length === 0) return `no X-Request-Id: ${where}`;
  if (res.text.includes('node_modules') || STACK_FRAME.test(res.text))
    return `stack trace in body: ${where}`;
  if (res.status < 400 || req.method === 'HEAD') return null;
  if (!String(res.headers['content-type']).startsWith('application/json'))
    return `error without JSON content type: ${where}`;
  let body: unknown;
  try {
    body = JSON.parse(res.text);
  } catch {
    return `error body is not JSON: ${where}`;
  }
  const b = body as { error?: Record<string, unknown>; requestId?: unknown };
  if (typeof b !== 'object' || b === null || Array.isArray(b)) return `error body shape: ${where}`;
  if (Object.keys(b).sort().join() !== 'error,requestId') return `error body keys: ${where}`;
  if (b.requestId !== rid) return `requestId differs from X-Request-Id: ${where}`;
  const e = b.error;
  if (typeof e !== 'object' || e === null) return `error is not an object: ${where}`;
  const keys = Object.keys(e).sort().join();
  if (keys !== 'code,message' && keys !== 'code,details,message') return `error keys: ${where}`;
  if (typeof e.message !== 'string' || e.message.length === 0) return `error.message: ${where}`;
  const code = e.code as string;
  if (!Object.hasOwn(ERROR_CATALOGUE, code)) return `code not in catalogue: ${where}`;
  if (ERROR_CATALOGUE[code as keyof typeof ERROR_CATALOGUE].status !== res.status)
    return `status does not match the catalogue for ${code}: ${where}`;
  if (code === 'rate_limited' && !res.headers['retry-after']) return `429 without Retry-After`;
  return null;
}

export function errorCode(res: Raw): string | null {
  try {
    return (JSON.parse(res.text) as { error?: { code?: string } }).error?.code ?? null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Arbitraries

const hex2 = (b: number) => '%' + b.toString(16).padStart(2, '0').toUpperCase();

/** Hostile and valid path parameter values (already as they appear in the URL). */
export function paramArb(valid: string[]): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...valid) },
    {
      weight: 4,
      arbitrary: fc.constantFrom(
        '%2e%2e',
        '%2E%2E',
        '..%2f',
        '..%2F..%2Fetc%2Fpasswd',
        '%2e%2e%2f%2e%2e',
        '..',
        '.',
        '%2f',
        '%00',
        'a%00b',
        '%ff',
        '%c0%ae%c0%ae',
        '%',
        '%zz',
        '%E2%80%AE',
        '%0d%0aX-Injected:%201',
        '%3f',
        '%23',
        '*',
        'bku_' + 'a'.repeat(43),
        'key_0000000000000000',
        'tok_0000000000000000',
        'constructor',
        '__proto__',
        'prototype',
        'hasOwnProperty',
      ),
    },
    { weight: 2, arbitrary: fc.stringMatching(/^[a-z0-9_][a-z0-9._-]{0,70}$/) },
    {
      weight: 2,
      arbitrary: fc
        .string({ unit: 'grapheme', minLength: 1, maxLength: 30 })
        .map(encodeURIComponent),
    },
    {
      weight: 1,
      arbitrary: fc
        .uint8Array({ minLength: 1, maxLength: 24 })
        .map((b) => [...b].map(hex2).join('')),
    },
    // Long, but two of them plus the longest query stay under the 16 KiB header limit (NET-3),
    // past which node itself answers 431 before the broker sees the request.
    { weight: 1, arbitrary: fc.integer({ min: 100, max: 5000 }).map((n) => 'a'.repeat(n)) },
  );
}

export const queryArb = fc.oneof(
  { weight: 6, arbitrary: fc.constant('') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      '?',
      '?match=*',
      '?match=alice/*',
      '?match=%ff',
      '?limit=0',
      '?limit=1001',
      '?limit=abc',
      '?limit=1&limit=2',
      '?cursor=%00',
      '?cursor=YWxpY2U',
      '?since=yesterday',
      '?since=2020-01-01T00:00:00Z',
      '?a[b]=c',
      '?__proto__[admin]=1',
      '?constructor[prototype][admin]=1',
      '?%00=%00',
      '?x=' + 'y'.repeat(4000),
    ),
  },
  {
    weight: 1,
    arbitrary: fc
      .string({ unit: 'grapheme', maxLength: 30 })
      .map((s) => `?q=${encodeURIComponent(s)}`),
  },
);

export const OTHER_METHODS = METHODS.filter((m) => m !== 'CONNECT');

export const contentTypeArb = fc.oneof(
  { weight: 8, arbitrary: fc.constant('application/json') },
  { weight: 2, arbitrary: fc.constant(undefined) },
  {
    weight: 4,
    arbitrary: fc.constantFrom(
      'application/json; charset=utf-8',
      'APPLICATION/JSON; Charset="UTF-8"',
      'application/json; charset=latin1',
      'application/json; charset=utf-16',
      'application/json; charset=bogus',
      'text/plain',
      'multipart/form-data; boundary=x',
      'application/x-www-form-urlencoded',
      'application/jsonp',
      '*/*',
      '',
    ),
  },
);

export const encodingArb = fc.oneof(
  { weight: 12, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.constantFrom('gzip', 'deflate', 'br', 'x-unknown', 'gzip, gzip') },
);

export const authArb: fc.Arbitrary<string | undefined> = fc.constantFrom(
  undefined,
  'admin',
  'user',
  'alice',
  'service',
  'service',
  'other-service',
  'random-user',
  'client-key',
  'Basic YWxpY2U6eA==',
  'Bearer',
  'Bearer  double',
  'bearer lower',
  'long',
);

/** One draw of `routeArb`: a route of the table and everything hostile about the request. */
export interface RouteDraw {
  route: Route;
  params: string[];
  method: string;
  query: string;
  body: Buffer | undefined;
  ct: string | undefined;
  enc: string | undefined;
  auth: string | undefined;
  chunked: boolean;
}

/** Paths outside the route table (unknown routes, traversal attempts) for 404/405 fuzzing. */
export function unknownPathArb(): fc.Arbitrary<string> {
  const segment = paramArb(['v1', 'services', 'keys', 'verify', 'principals', 'health', '']);
  return fc.oneof(
    fc
      .array(segment, { minLength: 1, maxLength: 6 })
      .map((s) => ('/' + s.join('/')).slice(0, 12_000)),
    fc.constantFrom(
      '/',
      '//',
      '/v1',
      '/v1/',
      '/v2/health',
      '/V1/HEALTH',
      '/v1/health/',
      '/v1/health/..',
      '/v1/services/alice',
      '/v1/services/alice/fuzzsvc/extra/more',
      '/v1/keys',
      '/v1/verify/x',
      '/metrics',
      '/.env',
      '/%2e%2e/%2e%2e/etc/passwd',
      '/v1/%2e%2e/v1/health',
      '*',
    ),
  );
}

/** The generators that depend on live credentials. */
export function fuzzKit(state: FuzzState) {
  /** A body: raw bytes plus whether the generator meant it as JSON. */
  function bodyArb(): fc.Arbitrary<Buffer | undefined> {
    const nameArb = fc.oneof(
      fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,20}$/),
      fc.string({ maxLength: 80 }),
      fc.constantFrom('fuzzsvc', 'alice', 'victim', '../x', ''),
    );
    const strOrNum = (s: fc.Arbitrary<unknown>) =>
      fc.oneof(
        s,
        fc.integer(),
        fc.double(),
        fc.boolean(),
        fc.constant(null),
        fc.array(s, { maxLength: 3 }),
      );
    const validLooking = fc.record(
      {
        name: strOrNum(nameArb),
        mode: strOrNum(fc.constantFrom('tcp', 'https', 'udp')),
        tunnel: strOrNum(fc.constantFrom('ssh', 'none', 'tor')),
        host: strOrNum(fc.constantFrom('127.0.0.1', '::1', '10.0.0.1', 'example.com', '')),
        port: fc.oneof(fc.integer({ min: -1, max: 70000 }), fc.constant('20001')),
        ttlSeconds: fc.oneof(fc.integer({ min: -10, max: 10_000_000 }), fc.double()),
        labels: fc.oneof(
          fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 10 }), {
            maxKeys: 20,
          }),
          fc.constant('x'),
        ),
        key: strOrNum(
          fc.constantFrom(() => state.key, 'bkk_' + 'A'.repeat(43), '', 'x'.repeat(300)),
        ),
        once: strOrNum(fc.constant(true)),
        role: strOrNum(fc.constantFrom('user', 'admin', 'root')),
        disabled: strOrNum(fc.constant(false)),
        label: strOrNum(fc.constantFrom('laptop', '\u0000', 'x'.repeat(70))),
        owner: fc.constantFrom('alice', 'fuzzuser'),
        admin: fc.constant(true),
        status: fc.constant('ready'),
      },
      { requiredKeys: [] },
    );
    const json = (v: unknown) =>
      Buffer.from(
        JSON.stringify(v, (_k, x: unknown) =>
          typeof x === 'function' ? (x as () => string)() : x,
        ),
      );
    return fc.oneof(
      { weight: 3, arbitrary: fc.constant(undefined) },
      { weight: 5, arbitrary: validLooking.map(json) },
      { weight: 1, arbitrary: fc.constant(Buffer.alloc(0)) },
      { weight: 1, arbitrary: fc.constant(Buffer.from('{}')) },
      {
        // malformed JSON
        weight: 2,
        arbitrary: fc
          .constantFrom(
            '{',
            '{"name":',
            '{"a":1,}',
            "{'a':1}",
            'nul',
            '[1,2',
            '"\\u12"',
            '{"a":"\\x"}',
            '{"a":1}}',
            '\u0000',
            '{"a":NaN}',
            '{"key":"bkk_x"} trailing',
          )
          .map((s) => Buffer.from(s)),
      },
      {
        // truncated JSON
        weight: 2,
        arbitrary: fc
          .tuple(validLooking.map(json), fc.nat())
          .map(([b, n]) => b.subarray(0, b.length > 1 ? (n % (b.length - 1)) + 1 : 1)),
      },
      {
        // invalid UTF-8
        weight: 1,
        arbitrary: fc.oneof(
          fc.constant(
            Buffer.from([
              0x7b, 0x22, 0x6b, 0x65, 0x79, 0x22, 0x3a, 0x22, 0xff, 0xfe, 0xc0, 0x22, 0x7d,
            ]),
          ),
          fc.constant(
            Buffer.from([
              0x7b, 0x22, 0x6e, 0x61, 0x6d, 0x65, 0x22, 0x3a, 0x22, 0xed, 0xa0, 0x80, 0x22, 0x7d,
            ]),
          ),
          fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a)),
        ),
      },
      {
        // deep nesting: 10000 levels is over the size limit, 8000 and 2700 objects are under it
        weight: 1,
        arbitrary: fc
          .constantFrom(
            '['.repeat(10_000) + ']'.repeat(10_000),
            '['.repeat(8_000) + ']'.repeat(8_000),
            '{"key":' + '['.repeat(8_000) + ']'.repeat(8_000) + '}',
            '{"a":'.repeat(2_700) + '1' + '}'.repeat(2_700),
          )
          .map((s) => Buffer.from(s)),
      },
      {
        // prototype pollution
        weight: 2,
        arbitrary: fc
          .constantFrom(
            '{"__proto__":{"admin":true}}',
            '{"name":"pp","__proto__":{"owner":"admin","role":"admin"}}',
            '{"constructor":{"prototype":{"admin":true}}}',
            '{"labels":{"__proto__":{"polluted":"yes"}},"name":"pp2"}',
            '{"key":"x","__proto__":null}',
            '{"toString":"x"}',
          )
          .map((s) => Buffer.from(s)),
      },
      {
        // numbers where strings are expected and other type confusion
        weight: 1,
        arbitrary: fc
          .constantFrom(
            '{"name":123}',
            '{"key":1e308}',
            '{"name":-0}',
            '{"ttlSeconds":1e400}',
            '{"key":{"$ne":null}}',
            '{"key":["bkk_x"]}',
            '[{"name":"x"}]',
            '"just a string"',
            '42',
            'true',
            'null',
          )
          .map((s) => Buffer.from(s)),
      },
      {
        // huge strings: just under and just over 16 KiB
        weight: 1,
        arbitrary: fc
          .constantFrom(MAX_BODY_BYTES - 100, MAX_BODY_BYTES + 1, 64 * 1024)
          .map((n) => Buffer.from(`{"name":"${'a'.repeat(n - 11)}"}`)),
      },
      { weight: 1, arbitrary: fc.json({ maxDepth: 4 }).map((s) => Buffer.from(s)) },
    );
  }

  function authHeader(a: string | undefined): string | undefined {
    switch (a) {
      case undefined:
        return undefined;
      case 'admin':
        return `Bearer ${state.admin}`;
      case 'user':
        return `Bearer ${state.user}`;
      case 'alice':
        return `Bearer ${state.alice}`;
      case 'service':
        return `Bearer ${state.serviceToken}`;
      case 'other-service':
        return `Bearer ${state.otherServiceToken}`;
      case 'random-user':
        return 'Bearer bku_' + 'Z'.repeat(43);
      case 'client-key':
        return `Bearer ${state.key}`;
      case 'long':
        return 'Bearer ' + 'x'.repeat(300);
      default:
        return a;
    }
  }

  function encodeBody(body: Buffer | undefined, enc: string | undefined): Buffer | undefined {
    if (body === undefined || enc !== 'gzip') return body;
    return gzipSync(body);
  }

  function buildReq(
    method: string,
    path: string,
    body: Buffer | undefined,
    ct: string | undefined,
    enc: string | undefined,
    auth: string | undefined,
    chunked: boolean,
  ): Req {
    const headers: Record<string, string> = {};
    const a = authHeader(auth);
    if (a !== undefined) headers.authorization = a;
    if (ct !== undefined) headers['content-type'] = ct;
    if (enc !== undefined && body !== undefined) headers['content-encoding'] = enc;
    return { method, path, headers, body: encodeBody(body, enc), chunked: chunked && !!body };
  }

  function validParams(param: string): string[] {
    switch (param) {
      case 'owner':
        return ['alice', 'fuzzuser', 'nobody'];
      case 'name':
        return ['fuzzsvc', 'othersvc', 'missing', 'victim', 'nobody', state.adminName];
      case 'keyId':
        return [state.keyId, 'key_0000000000000000'];
      case 'tokenId':
        return [state.tokenId, 'tok_0000000000000000'];
      default:
        return ['x'];
    }
  }

  /**
   * Random requests over every route of the table: hostile path parameters, query strings,
   * methods, bodies, content types, content encodings and credentials. Routes are drawn equally
   * often unless `weight` says otherwise.
   */
  function routeArb(weight: (route: Route) => number = () => 1): fc.Arbitrary<RouteDraw> {
    // Arbitraries are built once: building them is far dearer than drawing from them.
    const body = bodyArb();
    const params = new Map<string, fc.Arbitrary<string>>();
    const paramFor = (n: string) => {
      if (!params.has(n)) params.set(n, paramArb(validParams(n)));
      return params.get(n)!;
    };
    const perRoute = ROUTES.map((route) => {
      const names = [...route.path.matchAll(/:(\w+)/g)].map((m) => m[1]!);
      const arbitrary = fc.record({
        route: fc.constant(route),
        params: fc.tuple(...names.map(paramFor)),
        method: fc.oneof(
          { weight: 6, arbitrary: fc.constant(route.method as string) },
          { weight: 1, arbitrary: fc.constantFrom('GET', 'POST', 'PATCH', 'DELETE', 'PUT') },
          { weight: 1, arbitrary: fc.constantFrom(...OTHER_METHODS) },
        ),
        query: queryArb,
        body,
        ct: contentTypeArb,
        enc: encodingArb,
        auth: authArb,
        chunked: fc.boolean(),
      });
      return { weight: weight(route), arbitrary };
    });
    return fc.oneof(...perRoute);
  }

  /** The request a `routeArb` draw stands for. */
  function routeReq(x: RouteDraw): Req {
    let i = 0;
    const path = x.route.path.replace(/:(\w+)/g, () => x.params[i++] as string) + x.query;
    return buildReq(x.method, path, x.body, x.ct, x.enc, x.auth, x.chunked);
  }

  return { bodyArb, authHeader, buildReq, validParams, routeArb, routeReq };
}

/** A state for `fuzzKit` before `startFuzzDaemon` fills it. */
export function emptyFuzzState(): FuzzState {
  return {
    admin: '',
    adminName: '',
    user: '',
    alice: '',
    serviceToken: '',
    otherServiceToken: '',
    key: '',
    keyId: '',
    tokenId: '',
  };
}

function listenOn(port: number): Promise<Server | null> {
  return new Promise((res) => {
    const server = createServer((s) => s.destroy());
    server.once('error', () => res(null));
    server.listen(port, '127.0.0.1', () => res(server));
  });
}

/** A ready `tunnel: none` service of alice's; returns its service token. */
export async function readyFuzzService(
  d: Daemon,
  state: FuzzState,
  listeners: Server[],
  name: string,
): Promise<string> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = await d.api('POST', '/v1/services', {
      token: state.alice,
      body: { name, tunnel: 'none' },
    });
    if (r.status !== 201) throw new Error(`register ${name}: ${r.status} ${r.text}`);
    const server = await listenOn(r.body.service.port);
    if (!server) {
      await d.api('DELETE', `/v1/services/alice/${name}`, { token: state.alice });
      continue;
    }
    listeners.push(server);
    const ready = await d.api('POST', `/v1/services/alice/${name}/ready`, {
      token: r.body.serviceToken,
    });
    if (ready.status !== 200) throw new Error(`ready ${name}: ${ready.status} ${ready.text}`);
    return r.body.serviceToken;
  }
  throw new Error(`no free port for alice/${name}`);
}

/**
 * The daemon both fuzz suites run against, with the principals, ready services and client key
 * the generators draw from written into `state`. No tarpit: held 429s would only slow the runs;
 * the answers are the same. The services' listeners are pushed to `listeners` for closing.
 */
export async function startFuzzDaemon(state: FuzzState, listeners: Server[]): Promise<Daemon> {
  const d = await Daemon.start({ config: { verifyTarpitMs: 0 } });
  const readyService = (name: string) => readyFuzzService(d, state, listeners, name);
  state.admin = d.adminToken;
  state.adminName = (await d.api('GET', '/v1/whoami')).body.principal.name;
  state.alice = await d.addUser('alice');
  state.user = await d.addUser('fuzzuser');
  await d.addUser('victim');
  const t = await d.api('POST', '/v1/principals/victim/tokens', { body: { label: 'fuzz' } });
  state.tokenId = t.body.tokenInfo.id;
  state.serviceToken = await readyService('fuzzsvc');
  state.otherServiceToken = await readyService('othersvc');
  const k = await d.api('POST', '/v1/services/alice/fuzzsvc/keys', {
    token: state.alice,
    body: {},
  });
  state.key = k.body.key;
  state.keyId = k.body.keyId;
  return d;
}

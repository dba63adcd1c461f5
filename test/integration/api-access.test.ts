/**
 * Table-driven access tests for the HTTP API (STYLE.md §15): every case is named `ok/…` or
 * `fail/…`, states the expected status and code, and names the threat from SECURITY.md it covers
 * (LOC-2, COMP-1, COMP-2, COMP-4, KEY-5, BF-3, KEY-2, LOG-1). Runs against a real daemon.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ERROR_CATALOGUE } from '../../src/protocol/errors.js';
import { Daemon, findLeaks, issuedSecrets, type ApiResponse } from '../helpers/daemon.js';

type Body = Record<string, any>;
type CallOpts = Parameters<Daemon['api']>[2];

let d: Daemon;
let adminName: string;
const tokens: Record<'alice' | 'bob' | 'dave' | 'erin', string> = {
  alice: '',
  bob: '',
  dave: '',
  erin: '',
};
const listeners: Server[] = [];

/** Every response this file received, for the COMP-2 scan. */
const responses: { what: string; status: number; text: string; body: unknown }[] = [];

async function call(method: string, path: string, opts: CallOpts = {}): Promise<ApiResponse<Body>> {
  const r = await d.api<Body>(method, path, opts);
  responses.push({ what: `${method} ${path}`, status: r.status, text: r.text, body: r.body });
  return r;
}

function withoutRequestId(r: ApiResponse<Body>): unknown {
  const { requestId: _ignored, ...rest } = r.body;
  return { status: r.status, body: rest };
}

function expectError(r: ApiResponse<Body>, status: number, code: string): void {
  expect(r.status, r.text).toBe(status);
  expect(r.body.error?.code, r.text).toBe(code);
  expect(ERROR_CATALOGUE[code as keyof typeof ERROR_CATALOGUE].status).toBe(status);
}

function listen(port: number): Promise<Server | null> {
  return new Promise((res) => {
    const server = createServer((s) => s.destroy());
    server.once('error', () => res(null));
    server.listen(port, '127.0.0.1', () => res(server));
  });
}

interface Ready {
  owner: string;
  name: string;
  port: number;
  serviceToken: string;
}

/** Register a `tunnel: none` service, listen on its port, and confirm `ready` with its token. */
async function readyService(owner: keyof typeof tokens, name: string): Promise<Ready> {
  for (let attempt = 0; attempt < 10; attempt++) {
    const r = await call('POST', '/v1/services', {
      token: tokens[owner],
      body: { name, tunnel: 'none' },
    });
    expect(r.status, r.text).toBe(201);
    const port = r.body.service.port as number;
    const server = await listen(port);
    if (!server) {
      // Someone else on this host holds the port: release it and ask for another one.
      await call('DELETE', `/v1/services/${owner}/${name}`, { token: tokens[owner] });
      continue;
    }
    listeners.push(server);
    const serviceToken = r.body.serviceToken as string;
    const rr = await call('POST', `/v1/services/${owner}/${name}/ready`, { token: serviceToken });
    expect(rr.status, rr.text).toBe(200);
    expect(rr.body.service.status).toBe('ready');
    return { owner, name, port, serviceToken };
  }
  throw new Error(`no free port for ${owner}/${name}`);
}

async function loadKey(
  token: string,
  s: Ready,
  body: Body = {},
): Promise<{ key: string; keyId: string }> {
  const r = await call('POST', `/v1/services/${s.owner}/${s.name}/keys`, { token, body });
  expect(r.status, r.text).toBe(201);
  return { key: r.body.key, keyId: r.body.keyId };
}

function verify(serviceToken: string, key: string): Promise<ApiResponse<Body>> {
  return call('POST', '/v1/verify', { token: serviceToken, body: { key } });
}

async function allServiceIds(): Promise<string[]> {
  const r = await call('GET', '/v1/services?limit=1000', { token: d.adminToken });
  expect(r.status, r.text).toBe(200);
  return (r.body.services as { id: string }[]).map((s) => s.id).sort();
}

/** A port range of its own so concurrent suites on this host rarely contend for ports. */
const PORT_BASE = 21000 + Math.floor(Math.random() * 40) * 200;
const PORT_RANGE = `${PORT_BASE}-${PORT_BASE + 199}`;

beforeAll(async () => {
  d = await Daemon.start({ portRange: PORT_RANGE });
  const who = await call('GET', '/v1/whoami', { token: d.adminToken });
  adminName = who.body.principal.name;
  for (const name of Object.keys(tokens) as (keyof typeof tokens)[]) {
    tokens[name] = await d.addUser(name);
  }
});

afterAll(async () => {
  for (const s of listeners) s.close();
  if (!d) return;
  const stateFiles = () =>
    readdirSync(d.dataDir)
      .filter((f) => f.startsWith('broker.db'))
      .map((f) => join(d.dataDir, f));
  const logFiles = () =>
    readdirSync(d.home)
      .filter((f) => f.startsWith('daemon-') && f.endsWith('.log'))
      .map((f) => join(d.home, f));
  // KEY-2: only hashes at rest — the database and its WAL while live (the WAL is checkpointed
  // away at shutdown) and again after a clean stop. LOG-1: no secret in any log.
  const liveLeaks = findLeaks(stateFiles());
  const code = await d.stop();
  expect(code).toBe(0);
  expect(issuedSecrets.size).toBeGreaterThan(0);
  expect(d.allLogs()).toContain('"msg":"request"');
  expect([...liveLeaks, ...findLeaks([...stateFiles(), ...logFiles()])]).toEqual([]);
});

describe('LOC-2: another principal cannot tell my service from a missing one', () => {
  type Caller = 'bob' | 'bob-service';
  const ops: {
    name: string;
    caller: Caller;
    req: (o: string, n: string) => [string, string, CallOpts?];
    status: number;
    code: string;
  }[] = [
    // Threat LOC-2: bob loads a key for alice's service.
    {
      name: 'load',
      caller: 'bob',
      req: (o, n) => ['POST', `/v1/services/${o}/${n}/keys`, { body: {} }],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2: bob reads alice's service (port, host, labels).
    {
      name: 'get',
      caller: 'bob',
      req: (o, n) => ['GET', `/v1/services/${o}/${n}`],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2: bob unregisters alice's service.
    {
      name: 'unregister',
      caller: 'bob',
      req: (o, n) => ['DELETE', `/v1/services/${o}/${n}`],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2: bob lists the keys issued for alice's service.
    {
      name: 'list keys',
      caller: 'bob',
      req: (o, n) => ['GET', `/v1/services/${o}/${n}/keys`],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2: bob's server process (service token) reads alice's service.
    {
      name: 'get',
      caller: 'bob-service',
      req: (o, n) => ['GET', `/v1/services/${o}/${n}`],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2: bob's server process unregisters alice's service.
    {
      name: 'unregister',
      caller: 'bob-service',
      req: (o, n) => ['DELETE', `/v1/services/${o}/${n}`],
      status: 404,
      code: 'service_not_found',
    },
    // Threat LOC-2/COMP-1: a service token never loads keys (same answer, existing or not).
    {
      name: 'load',
      caller: 'bob-service',
      req: (o, n) => ['POST', `/v1/services/${o}/${n}/keys`, { body: {} }],
      status: 403,
      code: 'forbidden',
    },
    // Threat LOC-2/COMP-1: a service token never lists keys (same answer, existing or not).
    {
      name: 'list keys',
      caller: 'bob-service',
      req: (o, n) => ['GET', `/v1/services/${o}/${n}/keys`],
      status: 403,
      code: 'forbidden',
    },
  ];

  let bobService: Ready;
  beforeAll(async () => {
    bobService = await readyService('bob', 'bob-loc2');
  });

  ops.forEach((op, i) => {
    it(`fail/LOC-2 ${op.caller} ${op.name} alice's service → ${op.status} ${op.code}, as for a missing one`, async () => {
      const name = `loc2-${i}`;
      const alice = await readyService('alice', name);
      const token = op.caller === 'bob' ? tokens.bob : bobService.serviceToken;
      const [method, path, opts] = op.req('alice', name);
      const present = await call(method, path, { ...opts, token });
      expectError(present, op.status, op.code);
      // Nothing happened to alice's service.
      const still = await call('GET', `/v1/services/alice/${name}`, { token: tokens.alice });
      expect(still.status).toBe(200);
      expect(still.body.service.status).toBe('ready');
      // Now make it really missing and ask again: the whole answer is the same.
      const del = await call('DELETE', `/v1/services/alice/${name}`, { token: alice.serviceToken });
      expect(del.status).toBe(204);
      const missing = await call(method, path, { ...opts, token });
      expect(withoutRequestId(present)).toEqual(withoutRequestId(missing));
    });
  });

  const queries = ['', '?match=*', '?match=loc2*', '?match=alice/*', '?match=*/*', '?limit=1000'];
  for (const q of queries) {
    // Threat LOC-2: query lists only the caller's own services, whatever the glob.
    it(`fail/LOC-2 bob query '${q}' never lists alice's service (200, identical with or without it)`, async () => {
      const name = `loc2-q${queries.indexOf(q)}`;
      const alice = await readyService('alice', name);
      for (const [who, token] of [
        ['bob', tokens.bob],
        ['bob-service', bobService.serviceToken],
      ] as const) {
        const r = await call('GET', `/v1/services${q}`, { token });
        expect(r.status, r.text).toBe(200);
        const owners = (r.body.services as { owner: string; name: string }[]).map(
          (s) => `${s.owner}/${s.name}`,
        );
        expect(owners, who).not.toContain(`alice/${name}`);
        expect(
          owners.every((o) => o.startsWith('bob/')),
          who,
        ).toBe(true);
      }
      const before = await call('GET', `/v1/services${q}`, { token: tokens.bob });
      await call('DELETE', `/v1/services/alice/${name}`, { token: alice.serviceToken });
      const after = await call('GET', `/v1/services${q}`, { token: tokens.bob });
      expect(after.body).toEqual(before.body);
    });
  }

  // Threat LOC-2 (control): the owner and an admin do see it.
  it('ok/LOC-2 owner and admin get alice/loc2-own → 200', async () => {
    await readyService('alice', 'loc2-own');
    for (const token of [tokens.alice, d.adminToken]) {
      const r = await call('GET', '/v1/services/alice/loc2-own', { token });
      expect(r.status, r.text).toBe(200);
      expect(r.body.service.owner).toBe('alice');
    }
    const q = await call('GET', '/v1/services?match=loc2-own', { token: tokens.alice });
    expect(q.body.services.map((s: Body) => s.name)).toEqual(['loc2-own']);
  });
});

describe('COMP-1: a service token is no oracle and no admin', () => {
  let a: Ready;
  let b: Ready;
  beforeAll(async () => {
    a = await readyService('alice', 'comp1-a');
    b = await readyService('alice', 'comp1-b');
  });

  // Threat COMP-1: a user (or admin) token is not a service credential for verify.
  for (const who of ['alice', 'bob', 'admin'] as const) {
    it(`fail/COMP-1 ${who} user token POST /v1/verify → 403 forbidden`, async () => {
      const { key } = await loadKey(tokens.alice, b);
      const token = who === 'admin' ? d.adminToken : tokens[who];
      const r = await verify(token, key);
      expectError(r, 403, 'forbidden');
      // The refused call did not use the key up or reveal it.
      expect(r.text).not.toContain(key);
      expect((await verify(b.serviceToken, key)).body.valid).toBe(true);
    });
  }

  // Threat COMP-1: service A's token must not confirm service B's keys.
  it('fail/COMP-1 service A verifies a valid key of service B → 200 exactly {valid:false}', async () => {
    const { key } = await loadKey(tokens.alice, b);
    const r = await verify(a.serviceToken, key);
    expect(r.status).toBe(200);
    expect(r.body).toStrictEqual({ valid: false });
    expect(r.text).toBe('{"valid":false}');
    // The key still works where it belongs.
    expect((await verify(b.serviceToken, key)).body.valid).toBe(true);
  });

  // Threat COMP-1: a probe by another service does not consume a once key.
  it('fail/COMP-1 service A verifies a once key of service B → {valid:false}, B still can', async () => {
    const { key } = await loadKey(tokens.alice, b, { once: true });
    expect((await verify(a.serviceToken, key)).body).toStrictEqual({ valid: false });
    expect((await verify(b.serviceToken, key)).body.valid).toBe(true);
  });

  // Threat COMP-1 (control): success says valid, principal, keyId, expiresAt and nothing more.
  it('ok/COMP-1 service B verifies its own key → 200 {valid,principal,keyId,expiresAt,once}', async () => {
    const { key, keyId } = await loadKey(tokens.alice, b);
    const r = await verify(b.serviceToken, key);
    expect(r.status).toBe(200);
    expect(Object.keys(r.body).sort()).toEqual([
      'expiresAt',
      'keyId',
      'once',
      'principal',
      'valid',
    ]);
    expect(r.body).toMatchObject({ valid: true, principal: 'alice', keyId, once: false });
  });

  const forbidden: { name: string; req: () => [string, string, CallOpts?] }[] = [
    // Threat COMP-1: a compromised server registers more services under its owner's name.
    {
      name: 'register',
      req: () => ['POST', '/v1/services', { body: { name: 'comp1-new', tunnel: 'none' } }],
    },
    // Threat COMP-1: a compromised server mints client keys for itself.
    {
      name: 'load own service',
      req: () => ['POST', '/v1/services/alice/comp1-a/keys', { body: {} }],
    },
    // Threat COMP-1: … or for a sibling service.
    {
      name: 'load other service',
      req: () => ['POST', '/v1/services/alice/comp1-b/keys', { body: {} }],
    },
    // Threat COMP-1: a compromised server manages principals.
    { name: 'list principals', req: () => ['GET', '/v1/principals'] },
    {
      name: 'create principal',
      req: () => ['POST', '/v1/principals', { body: { name: 'mallory', role: 'admin' } }],
    },
    { name: 'get principal', req: () => ['GET', '/v1/principals/alice'] },
    {
      name: 'disable principal',
      req: () => ['PATCH', '/v1/principals/bob', { body: { disabled: true } }],
    },
    {
      name: 'promote principal',
      req: () => ['PATCH', '/v1/principals/alice', { body: { role: 'admin' } }],
    },
    { name: 'remove principal', req: () => ['DELETE', '/v1/principals/bob'] },
    // Threat COMP-1: a compromised server reads the audit log.
    { name: 'read audit', req: () => ['GET', '/v1/audit'] },
  ];
  for (const f of forbidden) {
    it(`fail/COMP-1 service token ${f.name} → 403 forbidden`, async () => {
      const [method, path, opts] = f.req();
      const r = await call(method, path, { ...opts, token: a.serviceToken });
      expectError(r, 403, 'forbidden');
    });
  }

  // Threat COMP-1: a compromised server creates or lists user tokens of its owner. Refused as if
  // the principal did not exist (the token routes hide principals from non-admins).
  for (const [method, path, body] of [
    ['POST', '/v1/principals/alice/tokens', {}],
    ['GET', '/v1/principals/alice/tokens', undefined],
  ] as const) {
    it(`fail/COMP-1 service token ${method} ${path} → 403 or 404, no token issued`, async () => {
      const r = await call(method, path, { token: a.serviceToken, body });
      expect([403, 404], r.text).toContain(r.status);
      expect(['forbidden', 'principal_not_found']).toContain(r.body.error.code);
      expect(r.text).not.toMatch(/bku_/);
    });
  }

  it('fail/COMP-1 nothing the service token tried took effect', async () => {
    const p = await call('GET', '/v1/principals', { token: d.adminToken });
    const byName = Object.fromEntries(p.body.principals.map((x: Body) => [x.name, x]));
    expect(byName.mallory).toBeUndefined();
    expect(byName.bob.disabled).toBe(false);
    expect(byName.alice.role).toBe('user');
    const s = await call('GET', '/v1/services/alice/comp1-new', { token: tokens.alice });
    expectError(s, 404, 'service_not_found');
  });
});

describe('COMP-4: no mass assignment', () => {
  const inRange = PORT_BASE + 150;
  const registerCases: { name: string; body: Body | string; status: number; code: string }[] = [
    // Threat COMP-4/LOC-2: the owner comes from the token, never from the body.
    {
      name: 'owner',
      body: { name: 'c4-owner', owner: 'bob' },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4: a server claims to be ready without the bind check.
    {
      name: 'status',
      body: { name: 'c4-status', tunnel: 'none', status: 'ready' },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4: privilege fields.
    {
      name: 'admin',
      body: { name: 'c4-admin', admin: true },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'role',
      body: { name: 'c4-role', role: 'admin' },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4: ids and secrets are the broker's to choose.
    {
      name: 'id',
      body: { name: 'c4-id', id: 'svc_aaaaaaaaaaaaaaaa' },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'serviceToken',
      body: { name: 'c4-tok', serviceToken: 'bks_' + 'a'.repeat(43) },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'expiresAt',
      body: { name: 'c4-exp', expiresAt: '2999-01-01T00:00:00Z' },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'cert',
      body: {
        name: 'c4-cert',
        cert: { fingerprint: 'sha256:00', notAfter: '2999-01-01T00:00:00Z' },
      },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4/PORT-3: tunnel ports are allocated by the broker.
    {
      name: 'port with tunnel ssh',
      body: { name: 'c4-ssh', tunnel: 'ssh', port: inRange },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port with default tunnel',
      body: { name: 'c4-ssh2', port: inRange },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4: ports outside policy are a 400 (`port_unavailable`, 409, is for a port in the
    // range that is taken or cooling down); not a TCP port at all is a schema error.
    {
      name: 'port 22',
      body: { name: 'c4-p22', tunnel: 'none', port: 22 },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port above range',
      body: { name: 'c4-phi', tunnel: 'none', port: PORT_BASE + 200 },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port 70000',
      body: { name: 'c4-p7', tunnel: 'none', port: 70000 },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port 0',
      body: { name: 'c4-p0', tunnel: 'none', port: 0 },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port string',
      body: { name: 'c4-ps', tunnel: 'none', port: String(inRange) },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'port fraction',
      body: { name: 'c4-pf', tunnel: 'none', port: inRange + 0.5 },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4/SSH-1: a non-admin cannot point the gateway at another host.
    {
      name: 'foreign host',
      body: { name: 'c4-host', tunnel: 'none', host: '10.0.0.1' },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'dns host',
      body: { name: 'c4-dns', tunnel: 'none', host: 'example.com' },
      status: 400,
      code: 'validation_failed',
    },
    // Threat COMP-4: unknown fields are rejected, not ignored.
    {
      name: 'unknown field',
      body: { name: 'c4-unk', colour: 'red' },
      status: 400,
      code: 'validation_failed',
    },
    {
      name: '__proto__',
      body: '{"name":"c4-proto","__proto__":{"admin":true,"owner":"bob"}}',
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'constructor',
      body: '{"name":"c4-ctor","constructor":{"prototype":{"admin":true}}}',
      status: 400,
      code: 'validation_failed',
    },
    {
      name: 'label key __proto__',
      body: '{"name":"c4-lbl","labels":{"__proto__":"x"}}',
      status: 400,
      code: 'validation_failed',
    },
    { name: 'bad name', body: { name: '../etc' }, status: 400, code: 'validation_failed' },
  ];
  for (const c of registerCases) {
    it(`fail/COMP-4 register with ${c.name} → ${c.status} ${c.code}, nothing registered`, async () => {
      const before = await allServiceIds();
      const opts: CallOpts =
        typeof c.body === 'string'
          ? { raw: c.body, headers: { 'content-type': 'application/json' } }
          : { body: c.body };
      const r = await call('POST', '/v1/services', { ...opts, token: tokens.alice });
      expectError(r, c.status, c.code);
      expect(r.text).not.toMatch(/bks_/);
      expect(await allServiceIds()).toEqual(before);
      const name = typeof c.body === 'string' ? JSON.parse(c.body).name : c.body.name;
      if (/^[a-z0-9]/.test(name)) {
        for (const owner of ['alice', 'bob']) {
          const g = await call('GET', `/v1/services/${owner}/${name}`, { token: d.adminToken });
          expectError(g, 404, 'service_not_found');
        }
      }
    });
  }

  // Threat COMP-4 (control): the same request without the extra field works.
  it('ok/COMP-4 register {name, tunnel:"none"} → 201 owned by the caller', async () => {
    const r = await call('POST', '/v1/services', {
      token: tokens.alice,
      body: { name: 'c4-ok', tunnel: 'none' },
    });
    expect(r.status, r.text).toBe(201);
    expect(r.body.service).toMatchObject({ owner: 'alice', status: 'pending' });
  });

  const patchCases: { name: string; body: Body | string }[] = [
    // Threat COMP-4: only role and disabled are writable.
    { name: 'unknown field', body: { disabled: false, admin: true } },
    { name: 'rename', body: { name: 'mallory' } },
    { name: 'createdAt', body: { createdAt: '2000-01-01T00:00:00Z' } },
    { name: 'tokens', body: { tokens: [] } },
    { name: 'bad role', body: { role: 'root' } },
    { name: 'disabled as string', body: { disabled: 'false' } },
    { name: '__proto__', body: '{"__proto__":{"role":"admin"}}' },
  ];
  for (const c of patchCases) {
    it(`fail/COMP-4 PATCH /v1/principals/bob with ${c.name} → 400 validation_failed, unchanged`, async () => {
      const before = await call('GET', '/v1/principals/bob', { token: d.adminToken });
      const opts: CallOpts =
        typeof c.body === 'string'
          ? { raw: c.body, headers: { 'content-type': 'application/json' } }
          : { body: c.body };
      const r = await call('PATCH', '/v1/principals/bob', { ...opts, token: d.adminToken });
      expectError(r, 400, 'validation_failed');
      const after = await call('GET', '/v1/principals/bob', { token: d.adminToken });
      expect(after.body).toEqual(before.body);
      expect(after.body.principal).toMatchObject({ name: 'bob', role: 'user', disabled: false });
    });
  }

  // Threat COMP-4: principal creation takes a name and a role only.
  it('fail/COMP-4 POST /v1/principals with disabled/token fields → 400, not created', async () => {
    for (const body of [
      { name: 'c4user', disabled: false },
      { name: 'c4user', token: 'bku_' + 'a'.repeat(43) },
    ]) {
      const r = await call('POST', '/v1/principals', { token: d.adminToken, body });
      expectError(r, 400, 'validation_failed');
    }
    const g = await call('GET', '/v1/principals/c4user', { token: d.adminToken });
    expectError(g, 404, 'principal_not_found');
  });

  // Threat COMP-4: a user mints a key for someone else or with unlimited uses.
  it('fail/COMP-4 load with principal/uses fields → 400 validation_failed', async () => {
    const s = await readyService('alice', 'c4-load');
    for (const body of [{ principal: 'bob' }, { uses: 1000 }, { serviceId: 'svc_x' }]) {
      const r = await call('POST', `/v1/services/alice/${s.name}/keys`, {
        token: tokens.alice,
        body,
      });
      expectError(r, 400, 'validation_failed');
    }
    const keys = await call('GET', `/v1/services/alice/${s.name}/keys`, { token: tokens.alice });
    expect(keys.body.keys).toEqual([]);
  });
});

describe('KEY-5: no token or key in a URL', () => {
  let s: Ready;
  beforeAll(async () => {
    s = await readyService('alice', 'key5');
  });
  const alice = () => tokens.alice;
  const cases: { name: string; path: () => string; auth?: () => string }[] = [
    // Threat KEY-5: tokens in URLs end up in proxy logs, shell history and Referer headers.
    { name: '?token= on whoami', path: () => `/v1/whoami?token=${alice()}` },
    { name: '?access_token= on whoami', path: () => `/v1/whoami?access_token=${alice()}` },
    { name: 'any query field', path: () => `/v1/whoami?x=1&y=${alice()}` },
    { name: 'bare query', path: () => `/v1/whoami?${alice()}` },
    { name: '?token= on query', path: () => `/v1/services?token=${alice()}` },
    { name: '?access_token= on query', path: () => `/v1/services?access_token=${alice()}` },
    { name: 'service token', path: () => `/v1/services/alice/key5?token=${s.serviceToken}` },
    { name: '?token= on an open route', path: () => `/v1/health?token=${alice()}` },
    {
      name: 'percent-encoded token',
      path: () => `/v1/whoami?token=${alice().replace('_', '%5F')}`,
    },
    {
      name: 'percent-encoded token on an open route',
      path: () => `/v1/health?token=${alice().replace('_', '%5F')}`,
    },
    {
      name: 'with a valid header too',
      path: () => `/v1/whoami?token=${alice()}`,
      auth: () => tokens.bob,
    },
  ];
  for (const c of cases) {
    it(`fail/KEY-5 ${c.name} → 4xx, never authenticated`, async () => {
      const token = c.auth ? c.auth() : null;
      const r = await call('GET', c.path(), { token });
      expect(r.status, r.text).toBeGreaterThanOrEqual(400);
      expect(r.status, r.text).toBeLessThan(500);
      if (!token) expect([400, 401]).toContain(r.status);
      expect(r.body.error, r.text).toBeDefined();
      expect(r.text).not.toContain('"kind"');
      expect(r.text).not.toContain(alice());
    });
  }

  // Threat KEY-5: a register authenticated only by the query string does nothing.
  it('fail/KEY-5 POST /v1/services?access_token= without header → 400/401, nothing registered', async () => {
    const r = await call('POST', `/v1/services?access_token=${alice()}`, {
      token: null,
      body: { name: 'key5-new', tunnel: 'none' },
    });
    expect([400, 401]).toContain(r.status);
    const g = await call('GET', '/v1/services/alice/key5-new', { token: alice() });
    expectError(g, 404, 'service_not_found');
  });

  // Threat KEY-5: a client key in the URL of verify is refused and not consumed.
  it('fail/KEY-5 POST /v1/verify?key= → 400, the once key is untouched', async () => {
    const { key } = await loadKey(alice(), s, { once: true });
    const r = await call('POST', `/v1/verify?key=${key}`, { token: s.serviceToken, body: {} });
    expectError(r, 400, 'bad_request');
    const r2 = await call('POST', `/v1/verify?key=${key}`, {
      token: s.serviceToken,
      body: { key },
    });
    expectError(r2, 400, 'bad_request');
    expect((await verify(s.serviceToken, key)).body.valid).toBe(true);
  });
});

describe('revocation (BF-3, KEY-2)', () => {
  // Threat BF-3: a revoked key stops working at once.
  it('ok→fail/BF-3 DELETE /v1/keys/{id} → 204, then verify → {valid:false}', async () => {
    const s = await readyService('alice', 'rev-key');
    const { key, keyId } = await loadKey(tokens.alice, s);
    expect((await verify(s.serviceToken, key)).body.valid).toBe(true);
    const del = await call('DELETE', `/v1/keys/${keyId}`, { token: tokens.alice });
    expect(del.status, del.text).toBe(204);
    expect((await verify(s.serviceToken, key)).body).toStrictEqual({ valid: false });
    const again = await call('DELETE', `/v1/keys/${keyId}`, { token: tokens.alice });
    expectError(again, 404, 'key_not_found');
  });

  // Threat LOC-2/BF-3: another user cannot revoke (or probe) my keys.
  it('fail/BF-3 bob DELETE /v1/keys/{alice key} → 404 key_not_found, key still valid', async () => {
    const s = await readyService('alice', 'rev-bob');
    const { key, keyId } = await loadKey(tokens.alice, s);
    const r = await call('DELETE', `/v1/keys/${keyId}`, { token: tokens.bob });
    const missing = await call('DELETE', '/v1/keys/key_0000000000000000', { token: tokens.bob });
    expectError(r, 404, 'key_not_found');
    expectError(missing, 404, 'key_not_found');
    const sr = await call('DELETE', `/v1/keys/${keyId}`, { token: s.serviceToken });
    expectError(sr, 404, 'key_not_found');
    expect((await verify(s.serviceToken, key)).body.valid).toBe(true);
  });

  // Threat BF-3/PORT-4: unregistering revokes every key; a new service of the same name does
  // not inherit them.
  it('ok→fail/BF-3 unregister → old keys and token dead; re-registered name rejects old keys', async () => {
    const s = await readyService('alice', 'rev-svc');
    const k1 = await loadKey(tokens.alice, s);
    const k2 = await loadKey(tokens.alice, s, { once: true });
    const k3 = await loadKey(d.adminToken, s);
    for (const k of [k1, k3]) expect((await verify(s.serviceToken, k.key)).body.valid).toBe(true);
    const del = await call('DELETE', '/v1/services/alice/rev-svc', { token: tokens.alice });
    expect(del.status, del.text).toBe(204);
    // The old service token is gone with its service.
    expectError(await verify(s.serviceToken, k1.key), 401, 'unauthenticated');
    expectError(await call('GET', '/v1/whoami', { token: s.serviceToken }), 401, 'unauthenticated');
    const s2 = await readyService('alice', 'rev-svc');
    expect(s2.serviceToken).not.toBe(s.serviceToken);
    for (const k of [k1, k2, k3]) {
      expect((await verify(s2.serviceToken, k.key)).body).toStrictEqual({ valid: false });
    }
    const keys = await call('GET', '/v1/services/alice/rev-svc/keys', { token: tokens.alice });
    expect(keys.body.keys).toEqual([]);
    const fresh = await loadKey(tokens.alice, s2);
    expect((await verify(s2.serviceToken, fresh.key)).body.valid).toBe(true);
  });

  // Threat BF-3: a once key is good for exactly one connection.
  it('ok→fail/BF-3 once key: first verify valid, second {valid:false}', async () => {
    const s = await readyService('alice', 'rev-once');
    const { key } = await loadKey(tokens.alice, s, { once: true });
    const first = await verify(s.serviceToken, key);
    expect(first.body).toMatchObject({ valid: true, principal: 'alice' });
    expect((await verify(s.serviceToken, key)).body).toStrictEqual({ valid: false });
    expect((await verify(s.serviceToken, key)).body).toStrictEqual({ valid: false });
  });

  // Threat: a leaked user token is revoked and stops working at once.
  it('ok→fail/token DELETE /v1/tokens/{id} → 204, then that token → 401 unauthenticated', async () => {
    const c = await call('POST', '/v1/principals/erin/tokens', {
      token: tokens.erin,
      body: { label: 'laptop' },
    });
    expect(c.status, c.text).toBe(201);
    const second = c.body.token as string;
    expect((await call('GET', '/v1/whoami', { token: second })).status).toBe(200);
    // bob cannot revoke erin's token, and learns nothing about it.
    const bobTry = await call('DELETE', `/v1/tokens/${c.body.tokenInfo.id}`, { token: tokens.bob });
    expectError(bobTry, 404, 'token_not_found');
    const del = await call('DELETE', `/v1/tokens/${c.body.tokenInfo.id}`, { token: tokens.erin });
    expect(del.status, del.text).toBe(204);
    expectError(await call('GET', '/v1/whoami', { token: second }), 401, 'unauthenticated');
    expectError(await call('GET', '/v1/services', { token: second }), 401, 'unauthenticated');
    // The other token of the same principal is unaffected.
    expect((await call('GET', '/v1/whoami', { token: tokens.erin })).status).toBe(200);
  });

  // Threat: a disabled principal is locked out with every token it holds.
  it('ok→fail/disabled principal → 401 unauthenticated; re-enabled → 200', async () => {
    expect((await call('GET', '/v1/whoami', { token: tokens.dave })).status).toBe(200);
    const p = await call('PATCH', '/v1/principals/dave', {
      token: d.adminToken,
      body: { disabled: true },
    });
    expect(p.status, p.text).toBe(200);
    expect(p.body.principal.disabled).toBe(true);
    expectError(await call('GET', '/v1/whoami', { token: tokens.dave }), 401, 'unauthenticated');
    expectError(
      await call('POST', '/v1/services', { token: tokens.dave, body: { name: 'dave-svc' } }),
      401,
      'unauthenticated',
    );
    const e = await call('PATCH', '/v1/principals/dave', {
      token: d.adminToken,
      body: { disabled: false },
    });
    expect(e.status, e.text).toBe(200);
    expect((await call('GET', '/v1/whoami', { token: tokens.dave })).status).toBe(200);
  });

  // Threat: an admin locks the broker out of administration by removing the last admin.
  it('fail/admin removes itself → 400 validation_failed; disables/demotes itself → 400', async () => {
    const r = await call('DELETE', `/v1/principals/${adminName}`, { token: d.adminToken });
    expectError(r, 400, 'validation_failed');
    for (const body of [{ disabled: true }, { role: 'user' }]) {
      const p = await call('PATCH', `/v1/principals/${adminName}`, { token: d.adminToken, body });
      expectError(p, 400, 'validation_failed');
    }
    const w = await call('GET', '/v1/whoami', { token: d.adminToken });
    expect(w.body.principal).toMatchObject({ name: adminName, role: 'admin', disabled: false });
  });

  // Threat: privilege escalation — a user manages principals.
  it('fail/user token removes or promotes a principal → 403 forbidden', async () => {
    expectError(
      await call('DELETE', '/v1/principals/bob', { token: tokens.alice }),
      403,
      'forbidden',
    );
    expectError(
      await call('PATCH', '/v1/principals/alice', { token: tokens.alice, body: { role: 'admin' } }),
      403,
      'forbidden',
    );
  });
});

describe('COMP-2: no response leaks a secret, a hash or the CA key', () => {
  // Threat COMP-2: one https registration so the file also sees a response with a private key.
  it('ok/COMP-2 register --mode https → tls.key is a PEM private key (the only one allowed)', async () => {
    const r = await call('POST', '/v1/services', {
      token: tokens.alice,
      body: { name: 'comp2-https', mode: 'https' },
    });
    expect(r.status, r.text).toBe(201);
    expect(r.body.tls.key).toContain('PRIVATE KEY');
  });

  // Threat COMP-2: allow-list serializers — every response of this file, scanned.
  it('fail/COMP-2 no response holds a SHA-256 of a secret, the CA key or a foreign secret', () => {
    expect(responses.length).toBeGreaterThan(0);
    const caKey = readFileSync(join(d.dataDir, 'ca-key.pem'), 'utf8');
    const caKeyBody = caKey
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .join('');
    const digests = [...issuedSecrets].flatMap((s) => {
      const h = createHash('sha256').update(s).digest();
      return [h.toString('hex'), h.toString('base64').replace(/=+$/, ''), h.toString('base64url')];
    });
    const problems: string[] = [];
    for (const r of responses) {
      let text = r.text;
      // The secrets a response may carry: those it issued itself (register, load, new token).
      const own = new Set<string>();
      const b = r.body as Body | null;
      if (b && typeof b === 'object' && r.status === 201) {
        for (const f of ['serviceToken', 'key', 'token'])
          if (typeof b[f] === 'string') own.add(b[f]);
        if (b.tls?.key) text = text.replace(JSON.stringify(b.tls.key).slice(1, -1), '');
      }
      for (const m of text.matchAll(/bk[usk]_[A-Za-z0-9_-]{43}/g)) {
        if (!own.has(m[0])) problems.push(`${r.what}: foreign secret ${m[0].slice(0, 8)}…`);
      }
      if (text.includes('PRIVATE KEY')) problems.push(`${r.what}: PRIVATE KEY`);
      if (caKeyBody && text.replace(/\\n/g, '').includes(caKeyBody.slice(0, 40)))
        problems.push(`${r.what}: CA key`);
      const lower = text.toLowerCase();
      for (const h of digests) {
        if (lower.includes(h.toLowerCase())) problems.push(`${r.what}: hash ${h.slice(0, 8)}…`);
      }
    }
    expect(problems).toEqual([]);
  });
});

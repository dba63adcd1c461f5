/**
 * Port allocation through the real daemon (SECURITY.md PORT-1, PORT-4): a full range hands out
 * every port once, the next registration is refused at once with 503 port_range_exhausted, and a
 * freed port is not handed out again during its cool-down (nor do old keys verify against the
 * service that later gets it).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

const daemons: Daemon[] = [];
const servers: Server[] = [];
afterAll(async () => {
  for (const s of servers) s.close();
  for (const d of daemons) await d.stop().catch(() => undefined);
  // Temp homes (state, logs) go too, unless kept for a post-mortem.
  if (!process.env.KEEP_TEST_STATE)
    for (const d of daemons) rmSync(d.home, { recursive: true, force: true });
});

interface RegisterBody {
  service: { name: string; port: number };
  serviceToken: string;
}

interface ErrorBody {
  error: { code: string; message: string };
  requestId: string;
}

function post<T>(
  d: Daemon,
  agent: Agent,
  path: string,
  token: string,
  body: unknown,
): Promise<{ status: number; body: T; text: string }> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((res, rej) => {
    const req = request(
      new URL(path, d.url),
      {
        method: 'POST',
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': String(payload.length),
        },
      },
      (r) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          res({ status: r.statusCode ?? 0, body: parsed as T, text });
        });
        r.on('error', rej);
      },
    );
    req.on('error', rej);
    req.end(payload);
  });
}

function expectErrorShape(
  r: { body: unknown; headers?: Record<string, string | string[] | undefined> },
  code: string,
): void {
  const body = r.body as ErrorBody;
  expect(body).toEqual({
    error: expect.objectContaining({ code, message: expect.any(String) }),
    requestId: expect.any(String),
  });
  expect(body.error.message.length).toBeGreaterThan(0);
  if (r.headers) expect(r.headers['x-request-id']).toBe(body.requestId);
}

describe('PORT-1 / PORT-4: a full 1,000-port range', () => {
  const MIN = 31000;
  const MAX = 31999;
  let d: Daemon;
  let alice: string;
  const ports = new Map<string, number>();

  beforeAll(async () => {
    d = await Daemon.start({ portRange: `${MIN}-${MAX}` });
    daemons.push(d);
    alice = await d.addUser('alice');
  });

  it('1,000 concurrent registrations get 1,000 distinct ports, all in range', async () => {
    const agent = new Agent({ ca: d.ca, keepAlive: true, maxSockets: 64 });
    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: 1000 }, (_, i) =>
        post<RegisterBody>(d, agent, '/v1/services', alice, { name: `r${i}`, tunnel: 'none' }),
      ),
    );
    agent.destroy();
    console.log(`[PORT-1] 1,000 registrations in ${Date.now() - t0} ms`);
    const statuses = new Map<number, number>();
    for (const r of results) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    expect([...statuses]).toEqual([[201, 1000]]);
    results.forEach((r, i) => {
      expect(r.body.service.name).toBe(`r${i}`);
      ports.set(`r${i}`, r.body.service.port);
    });
    const all = [...ports.values()];
    expect(new Set(all).size).toBe(1000);
    for (const p of all) {
      expect(Number.isInteger(p)).toBe(true);
      expect(p).toBeGreaterThanOrEqual(MIN);
      expect(p).toBeLessThanOrEqual(MAX);
    }

    // The registry agrees.
    const list = await d.api('GET', '/v1/services?limit=1000');
    expect(list.status).toBe(200);
    expect(list.body.services).toHaveLength(1000);
    expect(new Set(list.body.services.map((s: { port: number }) => s.port)).size).toBe(1000);
  });

  it('the next registration gets 503 port_range_exhausted at once', async () => {
    for (const body of [
      { name: 'overflow', tunnel: 'none' },
      { name: 'overflow-ssh', tunnel: 'ssh' },
    ]) {
      const t0 = performance.now();
      const r = await d.api('POST', '/v1/services', { token: alice, body });
      const ms = performance.now() - t0;
      expect(r.status, r.text).toBe(503);
      expectErrorShape(r, 'port_range_exhausted');
      expect(ms).toBeLessThan(1000);
      const gone = await d.api('GET', `/v1/services/alice/${body.name}`);
      expect(gone.status).toBe(404);
    }
  });

  it('PORT-4: a freed port is not handed out again during the cool-down (default 60 s)', async () => {
    const freed = ports.get('r500')!;
    const del = await d.api('DELETE', '/v1/services/alice/r500', { token: alice });
    expect(del.status, del.text).toBe(204);
    expect((await d.api('GET', '/v1/services/alice/r500')).status).toBe(404);

    // The only port not in use is cooling down: the range is still exhausted.
    const again = await d.api('POST', '/v1/services', {
      token: alice,
      body: { name: 'after-free', tunnel: 'none' },
    });
    expect(again.status, again.text).toBe(503);
    expectErrorShape(again, 'port_range_exhausted');

    // Asking for it explicitly is refused too.
    const asked = await d.api('POST', '/v1/services', {
      token: alice,
      body: { name: 'after-free', tunnel: 'none', port: freed },
    });
    expect(asked.status, asked.text).toBe(409);
    expectErrorShape(asked, 'port_unavailable');

    // Re-registering the very same name does not get its old port back either.
    const same = await d.api('POST', '/v1/services', {
      token: alice,
      body: { name: 'r500', tunnel: 'none' },
    });
    expect(same.status, same.text).toBe(503);
    expectErrorShape(same, 'port_range_exhausted');
  });
});

describe('PORT-4: cool-down end and old keys (short cool-down)', () => {
  it('the freed port comes back only after the cool-down, and old keys never verify against the new service', async () => {
    // Hold a port the OS picked, so `ready` can succeed on it; the range is that port ±1.
    const holder = createServer((c) => c.destroy());
    await new Promise<void>((res) => holder.listen(0, '127.0.0.1', () => res()));
    servers.push(holder);
    const P = (holder.address() as { port: number }).port;
    const COOL_S = 2;
    const home = mkdtempSync(join(tmpdir(), 'broker-test-'));
    const config = join(home, 'broker.json');
    writeFileSync(config, JSON.stringify({ portCooldownSeconds: COOL_S }));
    const d = await Daemon.start({
      home,
      portRange: `${P - 1}-${P + 1}`,
      extraArgs: ['--config', config],
    });
    daemons.push(d);
    const alice = await d.addUser('alice');
    const reg = (name: string, port?: number) =>
      d.api('POST', '/v1/services', {
        token: alice,
        body: { name, tunnel: 'none', ...(port !== undefined ? { port } : {}) },
      });

    const s0 = await reg('s0', P);
    expect(s0.status, s0.text).toBe(201);
    expect(s0.body.service.port).toBe(P);
    const ready = await d.api('POST', '/v1/services/alice/s0/ready', {
      token: s0.body.serviceToken,
    });
    expect(ready.status, ready.text).toBe(200);
    const key = await d.api('POST', '/v1/services/alice/s0/keys', { token: alice, body: {} });
    expect(key.status, key.text).toBe(201);
    const v0 = await d.api('POST', '/v1/verify', {
      token: s0.body.serviceToken,
      body: { key: key.body.key },
    });
    expect(v0.body.valid).toBe(true);

    const s1 = await reg('s1');
    const s2 = await reg('s2');
    expect([s1.status, s2.status]).toEqual([201, 201]);
    expect(new Set([P, s1.body.service.port, s2.body.service.port]).size).toBe(3);

    const del = await d.api('DELETE', '/v1/services/alice/s0', { token: alice });
    expect(del.status).toBe(204);
    const freedAt = Date.now();

    const during = await reg('s3');
    expect(during.status, during.text).toBe(503);
    expectErrorShape(during, 'port_range_exhausted');

    // Poll until the cool-down is over; it must not end early.
    let s3 = during;
    while (s3.status === 503 && Date.now() - freedAt < COOL_S * 1000 + 5000) {
      await new Promise((r) => setTimeout(r, 200));
      s3 = await reg('s3');
      if (s3.status === 201) break;
    }
    expect(s3.status, s3.text).toBe(201);
    expect(Date.now() - freedAt).toBeGreaterThanOrEqual(COOL_S * 1000 - 50);
    expect(s3.body.service.port).toBe(P);

    // The old key does not verify against the new service on the same port …
    const v3 = await d.api('POST', '/v1/verify', {
      token: s3.body.serviceToken,
      body: { key: key.body.key },
    });
    expect(v3.status, v3.text).toBe(200);
    expect(v3.body).toEqual({ valid: false });
    // … and the old service token is dead.
    const old = await d.api('POST', '/v1/verify', {
      token: s0.body.serviceToken,
      body: { key: key.body.key },
    });
    expect(old.status).toBe(401);
    expectErrorShape(old, 'unauthenticated');
    await d.stop();
  });
});

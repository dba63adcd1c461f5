/**
 * BF-1 against a real daemon: 10,000 wrong keys against one service get zero successes, 429 with
 * Retry-After once the threshold is passed, the right key keeps working for its owner, another
 * service is unaffected, and the audit log records the throttle once, not 10,000 lines.
 */
import { rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

/** A ready `tunnel: none` service of the admin's with a client key; its listener joins `servers`. */
async function readyService(d: Daemon, servers: Server[], name: string) {
  const owner = (await d.api('GET', '/v1/whoami')).body.principal.name as string;
  const reg = await d.api('POST', '/v1/services', { body: { name, tunnel: 'none' } });
  const srv = createServer((s) => s.end());
  servers.push(srv);
  await new Promise<void>((r) => srv.listen(reg.body.service.port, '127.0.0.1', r));
  const token = reg.body.serviceToken as string;
  expect(
    (await d.api('POST', `/v1/services/${owner}/${name}/ready`, { token, body: {} })).status,
  ).toBe(200);
  const { key } = (await d.api('POST', `/v1/services/${owner}/${name}/keys`, { body: {} })).body;
  return { token, key: key as string };
}

describe('BF-1: failed verifies back off', () => {
  let d: Daemon;
  const servers: Server[] = [];
  let owner: string;

  beforeAll(async () => {
    // The tarpit (tested below) would hold each of the 10,000 answers for a second.
    d = await Daemon.start({ config: { verifyTarpitMs: 0 } });
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    for (const s of servers) s.close();
    await d.stop();
    rmSync(d.home, { recursive: true, force: true });
  });

  it('10,000 wrong keys: zero successes, 429 + Retry-After after 30, the right key still works', async () => {
    const target = await readyService(d, servers, 'target');
    const bystander = await readyService(d, servers, 'bystander');
    const statuses = new Map<number, number>();
    let valid = 0;
    let retryAfter: string | undefined;
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < 10_000) {
          next++;
          const r = await d.api('POST', '/v1/verify', {
            token: target.token,
            body: { key: 'bkk_' + 'x'.repeat(43) },
          });
          statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
          if (r.status === 200 && r.body.valid) valid++;
          if (r.status === 429) {
            retryAfter ??= r.headers['retry-after'] as string;
            expect(r.body.error.code).toBe('rate_limited');
          }
        }
      }),
    );
    expect(valid).toBe(0);
    expect(statuses.get(200)).toBe(30); // the threshold, then backoff
    expect(statuses.get(429)).toBe(10_000 - 30);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
    // The owner is not locked out: the right key verifies during the block.
    const ok = await d.api('POST', '/v1/verify', {
      token: target.token,
      body: { key: target.key },
    });
    expect(ok.body).toMatchObject({ valid: true });
    // Another service's verifies are untouched.
    const other = await d.api('POST', '/v1/verify', {
      token: bystander.token,
      body: { key: 'bkk_' + 'y'.repeat(43) },
    });
    expect(other.status).toBe(200);
    expect(
      (await d.api('POST', '/v1/verify', { token: bystander.token, body: { key: bystander.key } }))
        .body.valid,
    ).toBe(true);
    // The audit log: one throttle event, and far fewer rows than attempts.
    const events = (await d.api('GET', '/v1/audit?limit=1000')).body.events as {
      action: string;
      target: string;
      count: number;
    }[];
    const mine = events.filter((e) => e.target === `${owner}/target`);
    expect(mine.filter((e) => e.action === 'key.verify.throttle')).toHaveLength(1);
    expect(mine.length).toBeLessThan(50);
  });
});

/**
 * BF-2 tarpit: once a service is in backoff, wrong keys are answered a second late (bounded
 * number held at once), while the right key and other services answer at once.
 */
describe('BF-2: the tarpit slows guessing, never the right key', () => {
  let d: Daemon;
  const servers: Server[] = [];
  const HELD = 8;

  beforeAll(async () => {
    d = await Daemon.start({ config: { verifyTarpitMax: HELD } });
  });
  afterAll(async () => {
    for (const s of servers) s.close();
    await d.stop();
    rmSync(d.home, { recursive: true, force: true });
  });

  const timed = async (token: string, key: string) => {
    const t0 = Date.now();
    const r = await d.api('POST', '/v1/verify', { token, body: { key } });
    return { status: r.status, valid: r.body?.valid as boolean | undefined, ms: Date.now() - t0 };
  };
  const wrong = (i: number) => 'bkk_' + String(i).padStart(43, 'z');

  it('blocked wrong keys wait ~1 s (at most a bounded number at once); the right key never waits', async () => {
    const target = await readyService(d, servers, 'tarpitted');
    const bystander = await readyService(d, servers, 'bystander2');
    // The threshold: 30 wrong keys are answered at once with valid:false.
    for (let i = 0; i < 30; i++) {
      const r = await timed(target.token, wrong(i));
      expect(r.status).toBe(200);
      expect(r.ms).toBeLessThan(900);
    }
    // Now in backoff: 3×HELD wrong keys at once. HELD are held ~1 s, the rest answered at once.
    const attack = Promise.all(
      Array.from({ length: 3 * HELD }, (_, i) => timed(target.token, wrong(100 + i))),
    );
    await new Promise((r) => setTimeout(r, 100));
    // Meanwhile the right key and another service answer promptly.
    const right = await timed(target.token, target.key);
    expect(right).toMatchObject({ status: 200, valid: true });
    expect(right.ms).toBeLessThan(500);
    const other = await timed(bystander.token, bystander.key);
    expect(other).toMatchObject({ status: 200, valid: true });
    expect(other.ms).toBeLessThan(500);
    const answers = await attack;
    expect(answers.every((a) => a.status === 429)).toBe(true);
    const slow = answers.filter((a) => a.ms >= 900).length;
    console.log(`[BF-2] held ${slow} of ${answers.length} (cap ${HELD}); right key ${right.ms} ms`);
    expect(slow).toBe(HELD);
  });
});

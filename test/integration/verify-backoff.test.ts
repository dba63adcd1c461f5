/**
 * BF-1 against a real daemon: 10,000 wrong keys against one service get zero successes, 429 with
 * Retry-After once the threshold is passed, the right key keeps working for its owner, another
 * service is unaffected, and the audit log records the throttle once, not 10,000 lines.
 */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

describe('BF-1: failed verifies back off', () => {
  let d: Daemon;
  const servers: Server[] = [];
  let owner: string;

  async function readyService(name: string) {
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

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    for (const s of servers) s.close();
    await d.stop();
  });

  it('10,000 wrong keys: zero successes, 429 + Retry-After after 30, the right key still works', async () => {
    const target = await readyService('target');
    const bystander = await readyService('bystander');
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

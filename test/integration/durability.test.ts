/**
 * Durability (SECURITY.md DUR-1, DUR-2): WAL + synchronous=FULL read back at start, and a
 * `kill -9` in the middle of 1,000 concurrent registrations loses nothing that was acknowledged.
 *
 * Seeds are printed; re-run one with DUR_SEEDS=1234,5678.
 */
import { execFile } from 'node:child_process';
import { Agent, request } from 'node:https';
import { createServer, type Server } from 'node:net';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

const execFileP = promisify(execFile);

const SEEDS = (process.env.DUR_SEEDS ?? '20240611,7,1337,424242,90210')
  .split(',')
  .map((s) => Number(s.trim()))
  .filter((n) => Number.isInteger(n));

/** mulberry32: a small seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function sqlite(db: string, sql: string): Promise<string> {
  const { stdout } = await execFileP('sqlite3', [db, sql], { timeout: 30_000 });
  return stdout.trim();
}

/** A free port range of `size` ports starting at a seeded offset (the broker does not bind `none` ports). */
function rangeFor(rng: () => number, size: number): { min: number; max: number; spec: string } {
  const min = 33000 + Math.floor(rng() * 20) * 1000;
  return { min, max: min + size - 1, spec: `${min}-${min + size - 1}` };
}

interface RegisterBody {
  service: { id: string; owner: string; name: string; port: number };
  serviceToken: string;
}

interface LogLine {
  msg?: string;
  pragmas?: { journal_mode?: string; synchronous?: number };
}

/** POST JSON over a given agent (the fixture's `api` always uses its own agent). */
function post<T>(
  d: Daemon,
  agent: Agent,
  path: string,
  token: string,
  body: unknown,
): Promise<{ status: number; body: T }> {
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
          res({ status: r.statusCode ?? 0, body: parsed as T });
        });
        r.on('error', rej);
      },
    );
    req.on('error', rej);
    req.end(payload);
  });
}

/** Run `fn` over `items` with at most `limit` in flight. */
async function pool<T, R>(items: T[], limit: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

function listen(port: number): Promise<Server | null> {
  return new Promise((res) => {
    const s = createServer((c) => c.destroy());
    s.once('error', () => res(null));
    s.listen(port, '127.0.0.1', () => res(s));
  });
}

const daemons: Daemon[] = [];
const servers: Server[] = [];
afterAll(async () => {
  for (const s of servers) s.close();
  for (const d of daemons) await d.stop().catch(() => undefined);
  // Temp homes (state, logs) go too, unless kept for a post-mortem.
  if (!process.env.KEEP_TEST_STATE)
    for (const d of daemons) rmSync(d.home, { recursive: true, force: true });
});

describe('DUR-1: WAL with synchronous=FULL', () => {
  it('the database is in WAL mode and the daemon logs the pragmas it read back', async () => {
    const d = await Daemon.start();
    daemons.push(d);
    const db = join(d.dataDir, 'broker.db');
    expect(await sqlite(db, 'PRAGMA journal_mode')).toBe('wal');

    const lines = d
      .logs()
      .split('\n')
      .filter((l) => l.trim().startsWith('{'))
      .map((l) => JSON.parse(l) as LogLine);
    const open = lines.find((l) => l.msg === 'store open');
    expect(open, 'a "store open" log line').toBeDefined();
    expect(open!.pragmas?.journal_mode).toBe('wal');
    expect(open!.pragmas?.synchronous).toBe(2);
    await d.stop();
  });
});

describe('DUR-2: kill -9 during 1,000 concurrent registrations', () => {
  for (const seed of SEEDS) {
    it(`seed ${seed}: every acknowledged registration survives with its port and token`, async () => {
      const rng = prng(seed);
      const killAfter = 100 + Math.floor(rng() * 601); // acknowledgements before the kill
      const killDelayMs = Math.floor(rng() * 15);
      const range = rangeFor(rng, 2000);
      console.log(
        `[DUR-2] seed=${seed} killAfter=${killAfter} killDelayMs=${killDelayMs} range=${range.spec}`,
      );

      const d = await Daemon.start({ portRange: range.spec });
      daemons.push(d);
      const alice = await d.addUser('alice');
      const pid = d.proc.pid!;

      // A few services with a client key minted before the storm (keys need `ready`).
      const keyed: { name: string; port: number; serviceToken: string; key: string }[] = [];
      for (let i = 0; i < 3; i++) {
        const name = `k${i}`;
        const r = await d.api('POST', '/v1/services', {
          token: alice,
          body: { name, tunnel: 'none' },
        });
        expect(r.status, r.text).toBe(201);
        const server = await listen(r.body.service.port);
        if (!server) continue; // someone else holds the port: skip this key
        servers.push(server);
        const ready = await d.api('POST', `/v1/services/alice/${name}/ready`, {
          token: r.body.serviceToken,
        });
        expect(ready.status, ready.text).toBe(200);
        const k = await d.api('POST', `/v1/services/alice/${name}/keys`, {
          token: alice,
          body: {},
        });
        expect(k.status, k.text).toBe(201);
        keyed.push({
          name,
          port: r.body.service.port,
          serviceToken: r.body.serviceToken,
          key: k.body.key,
        });
      }

      // The storm.
      const agent = new Agent({ ca: d.ca, keepAlive: true, maxSockets: 64 });
      const acked = new Map<string, { port: number; serviceToken: string; id: string }>();
      const other = new Map<number, number>();
      let killed = false;
      const kill = () => {
        if (killed) return;
        killed = true;
        process.kill(pid, 'SIGKILL');
      };
      const delays = Array.from({ length: 1000 }, () => Math.floor(rng() * 20));
      const t0 = Date.now();
      await Promise.all(
        delays.map(async (delay, i) => {
          await new Promise((r) => setTimeout(r, delay));
          if (killed) return;
          try {
            const r = await post<RegisterBody>(d, agent, '/v1/services', alice, {
              name: `r${i}`,
              tunnel: 'none',
            });
            if (r.status === 201 && r.body.service?.name === `r${i}`) {
              acked.set(`r${i}`, {
                port: r.body.service.port,
                serviceToken: r.body.serviceToken,
                id: r.body.service.id,
              });
              if (acked.size === killAfter) {
                if (killDelayMs === 0) kill();
                else setTimeout(kill, killDelayMs);
              }
            } else {
              other.set(r.status, (other.get(r.status) ?? 0) + 1);
            }
          } catch {
            /* connection cut by the kill: not acknowledged */
          }
        }),
      );
      agent.destroy();
      if (!killed) kill();
      await d.kill9();
      console.log(
        `[DUR-2] seed=${seed} acknowledged=${acked.size} other=${JSON.stringify([...other])} in ${Date.now() - t0} ms`,
      );
      // Only 201s or cut connections are expected before the kill.
      expect([...other.keys()]).toEqual([]);
      expect(acked.size).toBeGreaterThanOrEqual(killAfter);

      // Restart on the same state.
      await d.launch();
      expect(d.proc.pid).not.toBe(pid);

      // Every live service, through the API (admin sees all).
      const live: { owner: string; name: string; port: number; id: string }[] = [];
      let cursor: string | undefined;
      do {
        const q = `/v1/services?limit=1000${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
        const r = await d.api('GET', q);
        expect(r.status, r.text).toBe(200);
        live.push(...r.body.services);
        cursor = r.body.nextCursor;
      } while (cursor);

      const byName = new Map(live.map((s) => [s.name, s]));
      console.log(
        `[DUR-2] seed=${seed} after restart: ${live.length} live (${acked.size} acknowledged + ${keyed.length} keyed)`,
      );
      const missing: string[] = [];
      const moved: string[] = [];
      for (const [name, a] of acked) {
        const s = byName.get(name);
        if (!s) missing.push(name);
        else if (s.port !== a.port || s.id !== a.id) moved.push(`${name}: ${a.port} → ${s.port}`);
      }
      expect(missing, 'acknowledged registrations lost').toEqual([]);
      expect(moved, 'acknowledged registrations with another port').toEqual([]);

      // No two live services share a port; all in range.
      const ports = live.map((s) => s.port);
      expect(new Set(ports).size).toBe(ports.length);
      for (const p of ports) {
        expect(p).toBeGreaterThanOrEqual(range.min);
        expect(p).toBeLessThanOrEqual(range.max);
      }

      // Each acknowledged registration is also readable by name with the admin token.
      const sample = [...acked.keys()].filter((_, i) => i % 10 === 0);
      await pool(sample, 32, async (name) => {
        const r = await d.api('GET', `/v1/services/alice/${name}`);
        expect(r.status, r.text).toBe(200);
        expect(r.body.service.port).toBe(acked.get(name)!.port);
      });

      // Every acknowledged service token still authenticates as its own service.
      const badTokens: string[] = [];
      await pool([...acked], 48, async ([name, a]) => {
        const r = await d.api('GET', '/v1/whoami', { token: a.serviceToken });
        if (
          r.status !== 200 ||
          r.body.kind !== 'service' ||
          r.body.service.name !== name ||
          r.body.service.owner !== 'alice' ||
          r.body.service.port !== a.port
        )
          badTokens.push(`${name}: ${r.status} ${r.text.slice(0, 120)}`);
      });
      expect(badTokens, 'acknowledged service tokens that no longer authenticate').toEqual([]);

      // Keys minted before the kill still verify for their service.
      for (const k of keyed) {
        const s = byName.get(k.name);
        expect(s?.port).toBe(k.port);
        const v = await d.api('POST', '/v1/verify', {
          token: k.serviceToken,
          body: { key: k.key },
        });
        expect(v.status, v.text).toBe(200);
        expect(v.body.valid).toBe(true);
        expect(v.body.principal).toBe('alice');
      }

      expect(await sqlite(join(d.dataDir, 'broker.db'), 'PRAGMA integrity_check')).toBe('ok');
      await d.stop();
    });
  }
});

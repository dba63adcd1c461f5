/**
 * PORT-2: a model-based property test of port allocation in SqliteStore. Random sequences of
 * register (picked or requested port) / remove / advance time / reapExpired / restart (close and
 * reopen on the same file) run against a simple model; after every step: no duplicate live port,
 * every port in range, the store's live set equals the model's, a released port is not re-issued
 * before its cool-down ends, and the range is reported exhausted exactly when the model has no
 * free port.
 *
 * The seed is printed; re-run one with PORTS_PROP_SEED=<n> (and PORTS_PROP_RUNS=<n>).
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { BrokerError } from '../../src/protocol/errors.js';
import { SqliteStore } from '../../src/broker/store/sqlite-store.js';
import type { NewService } from '../../src/broker/store/store.js';

const MIN = 40000;
const MAX = 40019; // 20 ports
const OWNERS = ['alice', 'bob'] as const;
const NAMES = Array.from({ length: 16 }, (_, i) => `s${i}`); // 32 (owner, name) pairs > 20 ports
const T0 = 1_700_000_000_000;

const SEED = Number(process.env.PORTS_PROP_SEED ?? 424242);
const RUNS = Number(process.env.PORTS_PROP_RUNS ?? 200);

interface LiveService {
  id: string;
  port: number;
  expiresAt: number;
}

interface Model {
  now: number;
  /** `owner/name` → live service. */
  live: Map<string, LiveService>;
  /** Port → end of its cool-down (a port is free again when now >= until). */
  cooldown: Map<number, number>;
  nextId: number;
}

interface Real {
  path: string;
  store: SqliteStore;
}

const inRange = (p: number) => p >= MIN && p <= MAX;

function isFree(m: Model, port: number): boolean {
  if (!inRange(port)) return false;
  for (const s of m.live.values()) if (s.port === port) return false;
  return !((m.cooldown.get(port) ?? -Infinity) > m.now);
}

function freePorts(m: Model): number[] {
  const out: number[] = [];
  for (let p = MIN; p <= MAX; p++) if (isFree(m, p)) out.push(p);
  return out;
}

function coolPort(m: Model, port: number, until: number): void {
  m.cooldown.set(port, Math.max(m.cooldown.get(port) ?? -Infinity, until));
}

function expectBrokerError(fn: () => unknown, code: string): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  expect(thrown, `expected BrokerError ${code}`).toBeInstanceOf(BrokerError);
  expect((thrown as BrokerError).code).toBe(code);
}

/** The invariants that must hold after every step. */
function checkInvariants(m: Model, r: Real): void {
  const rows = r.store.listServices();
  const ports = rows.map((s) => s.port);
  expect(new Set(ports).size, `duplicate live port in ${JSON.stringify(ports)}`).toBe(ports.length);
  for (const p of ports) expect(inRange(p), `port ${p} outside ${MIN}-${MAX}`).toBe(true);
  const actual = new Map(rows.map((s) => [`${s.owner}/${s.name}`, { id: s.id, port: s.port }]));
  const expected = new Map([...m.live].map(([k, s]) => [k, { id: s.id, port: s.port }]));
  expect(actual).toEqual(expected);
}

class RegisterCmd implements fc.Command<Model, Real> {
  constructor(
    readonly owner: string,
    readonly name: string,
    readonly requested: number | undefined,
    readonly ttlSeconds: number,
  ) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    const key = `${this.owner}/${this.name}`;
    const id = `svc_${m.nextId++}`;
    const row: NewService = {
      id,
      owner: this.owner,
      name: this.name,
      mode: 'tcp',
      tunnel: 'none',
      host: '127.0.0.1',
      status: 'pending',
      tokenHash: createHash('sha256').update(id).digest(),
      ttlSeconds: this.ttlSeconds,
      createdAt: m.now,
      expiresAt: m.now + this.ttlSeconds * 1000,
      certFingerprint: null,
      certNotAfter: null,
      labels: {},
      tokenId: null,
      exposure: null,
    };
    const policy = { min: MIN, max: MAX, now: m.now, requested: this.requested };
    const register = () => r.store.registerService(row, policy);
    const free = freePorts(m);
    if (m.live.has(key)) {
      expectBrokerError(register, 'name_taken');
      saw('name_taken');
    } else if (this.requested !== undefined && !inRange(this.requested)) {
      // Outside the range is a policy violation (400), not a busy port (COMP-4).
      expectBrokerError(register, 'validation_failed');
      saw('validation_failed(out of range)');
    } else if (this.requested !== undefined && !isFree(m, this.requested)) {
      expectBrokerError(register, 'port_unavailable');
      saw('port_unavailable');
    } else if (this.requested === undefined && free.length === 0) {
      expectBrokerError(register, 'port_range_exhausted');
      saw('port_range_exhausted');
    } else {
      saw(this.requested === undefined ? 'registered' : 'registered(requested)');
      if ([...m.cooldown.values()].some((u) => u <= m.now))
        saw('registered with expired cool-downs');
      const s = register();
      expect(s.id).toBe(id);
      if (this.requested !== undefined) expect(s.port).toBe(this.requested);
      // Never a port in use or still cooling down (PORT-4).
      const until = m.cooldown.get(s.port);
      expect(
        until === undefined || until <= m.now,
        `port ${s.port} re-issued at ${m.now - T0} before its cool-down ends at ${until! - T0}`,
      ).toBe(true);
      expect(free).toContain(s.port);
      m.live.set(key, { id, port: s.port, expiresAt: row.expiresAt });
    }
    checkInvariants(m, r);
  }
  toString(): string {
    return `register(${this.owner}/${this.name}${this.requested !== undefined ? `, port ${this.requested}` : ''}, ttl ${this.ttlSeconds}s)`;
  }
}

/** Several registrations in a row (fills the range so exhaustion is reached). */
class BurstCmd implements fc.Command<Model, Real> {
  constructor(readonly regs: RegisterCmd[]) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    for (const reg of this.regs) reg.run(m, r);
  }
  toString(): string {
    return `burst[${this.regs.join('; ')}]`;
  }
}

class RemoveCmd implements fc.Command<Model, Real> {
  constructor(
    readonly owner: string,
    readonly name: string,
    readonly cooldownSeconds: number,
  ) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    const key = `${this.owner}/${this.name}`;
    const s = m.live.get(key);
    const until = m.now + this.cooldownSeconds * 1000;
    if (!s) {
      expect(r.store.removeService(`svc_missing_${key}`, until)).toBe(false);
    } else {
      expect(r.store.removeService(s.id, until)).toBe(true);
      m.live.delete(key);
      coolPort(m, s.port, until);
      saw('removed');
      // Removing twice is a no-op.
      expect(r.store.removeService(s.id, until)).toBe(false);
    }
    checkInvariants(m, r);
  }
  toString(): string {
    return `remove(${this.owner}/${this.name}, cool ${this.cooldownSeconds}s)`;
  }
}

class AdvanceCmd implements fc.Command<Model, Real> {
  constructor(readonly ms: number) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    m.now += this.ms;
    checkInvariants(m, r);
  }
  toString(): string {
    return `advance(${this.ms} ms)`;
  }
}

class ReapCmd implements fc.Command<Model, Real> {
  constructor(
    readonly advanceMs: number,
    readonly cooldownSeconds: number,
  ) {}
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    m.now += this.advanceMs;
    const reaped = r.store.reapExpired(m.now, this.cooldownSeconds);
    const expected = [...m.live].filter(([, s]) => s.expiresAt <= m.now);
    expect(reaped.map((s) => s.id).sort()).toEqual(expected.map(([, s]) => s.id).sort());
    for (const [key, s] of expected) {
      saw('reaped');
      m.live.delete(key);
      coolPort(m, s.port, m.now + this.cooldownSeconds * 1000);
    }
    checkInvariants(m, r);
  }
  toString(): string {
    return `reap(+${this.advanceMs} ms, cool ${this.cooldownSeconds}s)`;
  }
}

class RestartCmd implements fc.Command<Model, Real> {
  check(): boolean {
    return true;
  }
  run(m: Model, r: Real): void {
    r.store.close();
    r.store = new SqliteStore(r.path);
    saw('restart');
    checkInvariants(m, r);
  }
  toString(): string {
    return 'restart';
  }
}

/** How often each outcome was exercised (printed, and checked to be non-trivial). */
const seen: Record<string, number> = {};
const saw = (what: string) => (seen[what] = (seen[what] ?? 0) + 1);

const owner = fc.constantFrom(...OWNERS);
const name = fc.constantFrom(...NAMES);
const register = fc
  .tuple(owner, name, fc.integer({ min: 1, max: 1800 }))
  .map(([o, n, ttl]) => new RegisterCmd(o, n, undefined, ttl));
const remove = fc
  .tuple(owner, name, fc.integer({ min: 0, max: 120 }))
  .map(([o, n, c]) => new RemoveCmd(o, n, c));
const commandArbs = [
  // Registration dominates so the range fills up and exhaustion is exercised.
  register,
  register,
  fc.array(register, { minLength: 2, maxLength: 12 }).map((regs) => new BurstCmd(regs)),
  fc
    .tuple(
      owner,
      name,
      fc.option(fc.integer({ min: MIN - 2, max: MAX + 2 }), { freq: 4, nil: undefined }),
      fc.integer({ min: 1, max: 1800 }),
    )
    .map(([o, n, p, ttl]) => new RegisterCmd(o, n, p, ttl)),
  remove,
  remove,
  fc.integer({ min: 0, max: 60_000 }).map((ms) => new AdvanceCmd(ms)),
  fc
    .tuple(fc.integer({ min: 0, max: 120_000 }), fc.integer({ min: 0, max: 120 }))
    .map(([ms, c]) => new ReapCmd(ms, c)),
  fc.constant(new RestartCmd()),
];

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('PORT-2: port allocation against a model (fast-check)', () => {
  it(`random register/remove/expire/restart sequences keep ports unique, in range and cooled (seed ${SEED}, ${RUNS} runs)`, () => {
    console.log(`[PORT-2] fast-check seed=${SEED} numRuns=${RUNS}`);
    const root = mkdtempSync(join(tmpdir(), 'broker-ports-prop-'));
    dirs.push(root);
    let run = 0;
    const stats = { exhausted: 0, steps: 0 };
    fc.assert(
      fc.property(fc.commands(commandArbs, { maxCommands: 80, size: 'max' }), (cmds) => {
        const path = join(root, `run-${run++}.db`);
        const real: Real = { path, store: new SqliteStore(path) };
        try {
          for (const o of OWNERS)
            real.store.createPrincipal({ name: o, role: 'user', disabled: false, createdAt: T0 });
          const model: Model = { now: T0, live: new Map(), cooldown: new Map(), nextId: 0 };
          fc.modelRun(() => ({ model, real }), cmds);
          stats.steps += [...cmds].length;
          if (freePorts(model).length === 0) stats.exhausted++;
        } finally {
          real.store.close();
          for (const suffix of ['', '-wal', '-shm']) rmSync(path + suffix, { force: true });
        }
      }),
      { seed: SEED, numRuns: RUNS },
    );
    console.log(
      `[PORT-2] ${stats.steps} steps; ${stats.exhausted} runs ended with no free port; outcomes ${JSON.stringify(seen)}`,
    );
    // The generator must actually reach the interesting cases.
    for (const k of ['port_range_exhausted', 'port_unavailable', 'name_taken', 'removed', 'reaped'])
      expect(seen[k] ?? 0, k).toBeGreaterThan(10);
    expect(seen.restart ?? 0).toBeGreaterThan(10);
  });

  it('exhaustion is exact: a full range throws port_range_exhausted, one port freed and cooled lets exactly one more in', () => {
    const root = mkdtempSync(join(tmpdir(), 'broker-ports-unit-'));
    dirs.push(root);
    const store = new SqliteStore(join(root, 'x.db'));
    try {
      store.createPrincipal({ name: 'alice', role: 'user', disabled: false, createdAt: T0 });
      const mk = (i: number, now: number): NewService => ({
        id: `svc_${i}`,
        owner: 'alice',
        name: `n${i}`,
        mode: 'tcp',
        tunnel: 'none',
        host: '127.0.0.1',
        status: 'pending',
        tokenHash: createHash('sha256').update(`t${i}`).digest(),
        ttlSeconds: 3600,
        createdAt: now,
        expiresAt: now + 3_600_000,
        certFingerprint: null,
        certNotAfter: null,
        labels: {},
        tokenId: null,
        exposure: null,
      });
      const policy = (now: number) => ({ min: MIN, max: MAX, now });
      const got = Array.from({ length: 20 }, (_, i) =>
        store.registerService(mk(i, T0), policy(T0)),
      );
      expect(new Set(got.map((s) => s.port)).size).toBe(20);
      expectBrokerError(
        () => store.registerService(mk(20, T0), policy(T0)),
        'port_range_exhausted',
      );
      const victim = got[7]!;
      expect(store.removeService(victim.id, T0 + 60_000)).toBe(true);
      expectBrokerError(
        () => store.registerService(mk(21, T0 + 59_999), policy(T0 + 59_999)),
        'port_range_exhausted',
      );
      const back = store.registerService(mk(22, T0 + 60_000), policy(T0 + 60_000));
      expect(back.port).toBe(victim.port);
      expectBrokerError(
        () => store.registerService(mk(23, T0 + 60_000), policy(T0 + 60_000)),
        'port_range_exhausted',
      );
    } finally {
      store.close();
    }
  });
});

/** Leases, heartbeats and key expiry with an injected clock (no sleeping). */
import { describe, expect, it } from 'vitest';
import { AuditLog } from '../../src/broker/audit.js';
import { PrincipalCache, type Identity } from '../../src/broker/auth.js';
import { ChangeFeed } from '../../src/broker/changes.js';
import { LocalCA } from '../../src/broker/ca/local-ca.js';
import { checkCsr } from '../../src/broker/ca/csr.js';
import { ManualClock } from '../../src/broker/clock.js';
import { loadConfig } from '../../src/broker/config.js';
import { KeyService } from '../../src/broker/keys.js';
import { ServiceRegistry } from '../../src/broker/services.js';
import { SqliteStore } from '../../src/broker/store/sqlite-store.js';

async function setup() {
  const clock = new ManualClock();
  const store = new SqliteStore(':memory:');
  const config = loadConfig({
    env: {},
    flags: { dataDir: '/nonexistent', serviceTtlSeconds: 3600 },
  });
  const audit = new AuditLog(store, clock, (e) => {
    throw e;
  });
  const signer = {
    caCertPem: '',
    lifetimes: { minSeconds: 1, defaultSeconds: 1, maxSeconds: 1 },
    issue: () => Promise.reject(new Error('no')),
  } as unknown as LocalCA;
  const removed: string[] = [];
  const changes = new ChangeFeed();
  changes.subscribe((c) => {
    if (c.kind === 'service.removed') removed.push(`${c.service.name}:${c.reason}`);
  });
  const registry = new ServiceRegistry({
    store,
    config,
    clock,
    audit,
    signer,
    csr: checkCsr,
    publicHost: '127.0.0.1',
    changes,
    probe: async () => true,
  });
  const keys = new KeyService({
    store,
    config,
    clock,
    audit,
    registry,
    caCertPem: '',
    publicHost: '127.0.0.1',
    sshPort: () => 7722,
    principals: new PrincipalCache(store, clock, changes),
    changes,
  });
  store.createPrincipal({ name: 'alice', role: 'user', disabled: false, createdAt: clock.now() });
  const alice: Identity = {
    kind: 'principal',
    principal: store.getPrincipal('alice')!,
    tokenId: 't',
    tokenExpiresAt: null,
  };
  const reg = await registry.register(
    alice,
    { name: 'viz', tunnel: 'none', ttlSeconds: 600 },
    '127.0.0.1',
  );
  const svc: Identity = { kind: 'service', service: store.getService('alice', 'viz')! };
  await registry.ready(svc, 'alice', 'viz', '127.0.0.1');
  return { clock, store, registry, keys, alice, svc, reg, removed, config };
}

describe('leases', () => {
  it('a service lives until expiresAt, then is reaped with its keys; the port cools down', async () => {
    const { clock, registry, keys, alice, svc, store, removed, config } = await setup();
    const k = keys.load(alice, 'alice', 'viz', {}, '127.0.0.1');
    expect(keys.verify(svc, k.key, 'x').valid).toBe(true);
    clock.advance(599_000);
    expect(registry.sweep().reaped).toHaveLength(0);
    clock.advance(2_000);
    expect(registry.sweep().reaped.map((s) => s.name)).toEqual(['viz']);
    expect(removed).toEqual(['viz:lease expired']);
    expect(store.getService('alice', 'viz')).toBeNull();
    expect(store.findKeyByHash(Buffer.alloc(32))).toBeNull();
    expect(store.getKey(k.keyId)).toBeNull();
    // the old port is not handed out during the cool-down
    const port = JSON.parse(JSON.stringify(k.service)).port as number;
    const again = await registry
      .register(alice, { name: 'viz2', tunnel: 'none', port }, '127.0.0.1')
      .catch((e) => e);
    expect(again.code).toBe('port_unavailable');
    clock.advance(config.portCooldownSeconds * 1000 + 1);
    await expect(
      registry.register(alice, { name: 'viz2', tunnel: 'none', port }, '127.0.0.1'),
    ).resolves.toBeTruthy();
  });

  it('heartbeats extend the lease; missed heartbeats mark it offline, a late one brings it back', async () => {
    const { clock, registry, svc } = await setup();
    clock.advance(500_000);
    const hb = registry.heartbeat(svc, 'alice', 'viz');
    expect(Date.parse(hb.expiresAt)).toBe(clock.now() + 600_000);
    clock.advance(91_000);
    expect(registry.sweep().offline.map((s) => s.status)).toEqual(['offline']);
    expect(registry.heartbeat(svc, 'alice', 'viz').status).toBe('ready');
  });

  it('keys expire (BF-3) and never outlive their service lease', async () => {
    const { clock, keys, alice, svc } = await setup();
    const k = keys.load(alice, 'alice', 'viz', { ttlSeconds: 120 }, 'x');
    clock.advance(121_000);
    expect(keys.verify(svc, k.key, 'x')).toEqual({ valid: false });
    const long = keys.load(alice, 'alice', 'viz', { ttlSeconds: 7200 }, 'x');
    expect(Date.parse(long.expiresAt)).toBeLessThanOrEqual(Date.parse(long.service.expiresAt));
  });
});

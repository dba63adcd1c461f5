/**
 * SES-2: every change of identity reaches live state within 1 s, written as the attacker who
 * keeps using what they already hold — an open gateway connection, an open channel, a key, a
 * service token — after their token was revoked, their principal disabled, demoted or removed.
 * And a credential minted with another never outlives or out-privileges it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import {
  closeSshResources,
  echoes,
  forward,
  gatewayOf,
  portRange,
  sshConnect,
  tunnelledEcho,
  type Gw,
  type SshClient,
} from '../helpers/ssh.js';

let d: Daemon;
let gw: Gw;

afterAll(async () => {
  closeSshResources();
  await d?.stop();
});

beforeAll(async () => {
  d = await Daemon.start({ portRange: portRange() });
  gw = await gatewayOf(d);
});

/** A token of `name` created by the admin (an enrolment: independent of the admin's token). */
async function tokenFor(name: string, body: Record<string, unknown> = {}, as = d.adminToken) {
  const r = await d.api('POST', `/v1/principals/${name}/tokens`, { token: as, body });
  expect(r.status, r.text).toBe(201);
  return {
    token: r.body.token as string,
    id: r.body.tokenInfo.id as string,
    info: r.body.tokenInfo,
  };
}

async function key(token: string, ref: string, body: Record<string, unknown> = {}) {
  const r = await d.api('POST', `/v1/services/${ref}/keys`, { token, body });
  expect(r.status, r.text).toBe(201);
  return r.body as { key: string; keyId: string; expiresAt: string };
}

async function verify(serviceToken: string, k: string) {
  const r = await d.api('POST', '/v1/verify', { token: serviceToken, body: { key: k } });
  return r.status === 200 ? (r.body.valid as boolean) : r.status;
}

/** Resolves with how long after `t0` the SSH connection closed (or rejects after `ms`). */
function closedWithin(c: SshClient, t0: () => number, ms = 1000): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`still open after ${ms} ms`)), ms + 500);
    c.once('close', () => {
      clearTimeout(timer);
      resolve(Date.now() - t0());
    });
  });
}

function channelClosed(ch: { once(e: 'close', f: () => void): unknown }, ms: number) {
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    ch.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

describe('SES-2: what an attacker already holds stops working when their identity changes', () => {
  it('fail/SES-2 revoke: the open gateway connection of a revoked token ends within 1 s, its channel with it', async () => {
    await d.addUser('rev-m');
    const enrol = await tokenFor('rev-m'); // registers the service: not the token we revoke
    const svc = await tunnelledEcho(d, gw, 'rev-m', enrol.token, 'echo');
    const stolen = await tokenFor('rev-m');
    const c = await sshConnect(gw, 'rev-m', stolen.token);
    const ch = await forward(c, '127.0.0.1', svc.port);
    expect(await echoes(ch, 'before\n')).toBe(true);
    let t0 = 0;
    const closed = closedWithin(c, () => t0);
    t0 = Date.now();
    const r = await d.api('DELETE', `/v1/tokens/${stolen.id}`);
    expect(r.status).toBe(204);
    expect(await closed).toBeLessThan(1000);
    // The principal's other token, and its service, are untouched.
    const again = await sshConnect(gw, 'rev-m', enrol.token);
    expect(await echoes(await forward(again, '127.0.0.1', svc.port), 'after\n')).toBe(true);
  });

  it("fail/SES-2 disable: the connection ends, the principal's keys stop verifying at once, its service token stops heartbeating and its tunnel drops", async () => {
    await d.addUser('dis-a');
    await d.addUser('dis-v');
    const a = await tokenFor('dis-a');
    const v = await tokenFor('dis-v');
    // dis-a holds a key to its own service and an admin-visible one of dis-v's: use its own.
    const own = await tunnelledEcho(d, gw, 'dis-a', a.token, 'own');
    const reg = await d.api('POST', '/v1/services', {
      token: v.token,
      body: { name: 'victim', tunnel: 'ssh' },
    });
    const k = await key(a.token, 'dis-a/own');
    const regOwn = (await d.api('GET', '/v1/services/dis-a/own', { token: a.token })).body.service;
    expect(regOwn.status).toBe('ready');
    const c = await sshConnect(gw, 'dis-a', a.token);
    const ch = await forward(c, '127.0.0.1', own.port);
    expect(await echoes(ch, 'x\n')).toBe(true);
    // The reverse tunnel (service token identity) is a connection too.
    const tunnelClosed = closedWithin(own.server, () => t0);
    let t0 = 0;
    const userClosed = closedWithin(c, () => t0);
    t0 = Date.now();
    expect(
      (await d.api('PATCH', '/v1/principals/dis-a', { body: { disabled: true } })).status,
    ).toBe(200);
    expect(await userClosed).toBeLessThan(1000);
    expect(await tunnelClosed).toBeLessThan(1000);
    expect(reg.status).toBe(201);
    // The service token of a disabled owner is worth nothing: no heartbeat, no verify, no tunnel.
    const svcToken = own.serviceToken;
    expect(
      (await d.api('POST', '/v1/services/dis-a/own/heartbeat', { token: svcToken, body: {} }))
        .status,
    ).toBe(401);
    expect(await verify(svcToken, k.key)).toBe(401);
    await expect(sshConnect(gw, 'dis-a', svcToken)).rejects.toThrow();
  });

  it("fail/SES-2 disable: a disabled principal's key to someone else's service stops verifying at once (no cache)", async () => {
    await d.addUser('holder', 'admin');
    const h = await tokenFor('holder');
    await d.addUser('own2');
    const o = await tokenFor('own2');
    const svc = await tunnelledEcho(d, gw, 'own2', o.token, 'shared');
    const k = await key(h.token, 'own2/shared'); // an admin may load any service's key
    expect(await verify(svc.serviceToken, k.key)).toBe(true);
    expect(await verify(svc.serviceToken, k.key)).toBe(true); // now in the verify cache
    await d.api('PATCH', '/v1/principals/holder', { body: { disabled: true } });
    expect(await verify(svc.serviceToken, k.key)).toBe(false);
    await d.api('PATCH', '/v1/principals/holder', { body: { disabled: false } });
    expect(await verify(svc.serviceToken, k.key)).toBe(true);
  });

  it("fail/SES-2 demote: an admin's channel to another user's service closes within 1 s, new forwards are refused and its key stops verifying", async () => {
    await d.addUser('eve', 'admin');
    const e = await tokenFor('eve');
    await d.addUser('alice-d');
    const a = await tokenFor('alice-d');
    const svc = await tunnelledEcho(d, gw, 'alice-d', a.token, 'lab');
    const k = await key(e.token, 'alice-d/lab');
    expect(await verify(svc.serviceToken, k.key)).toBe(true);
    const c = await sshConnect(gw, 'eve', e.token);
    const ch = await forward(c, '127.0.0.1', svc.port);
    expect(await echoes(ch, 'as admin\n')).toBe(true);
    const closed = channelClosed(ch, 1000);
    const t0 = Date.now();
    expect((await d.api('PATCH', '/v1/principals/eve', { body: { role: 'user' } })).status).toBe(
      200,
    );
    expect(await closed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(1000);
    await expect(forward(c, '127.0.0.1', svc.port)).rejects.toThrow();
    expect(await verify(svc.serviceToken, k.key)).toBe(false);
    // eve keeps her connection and what a user may have (her own services).
    const mine = await tunnelledEcho(d, gw, 'eve', e.token, 'mine');
    expect(await echoes(await forward(c, '127.0.0.1', mine.port), 'own\n')).toBe(true);
  });

  it('fail/SES-2 remove: keys of a removed principal never verify again, not even from the cache', async () => {
    await d.addUser('gone', 'admin');
    const g = await tokenFor('gone');
    await d.addUser('stay');
    const s = await tokenFor('stay');
    const svc = await tunnelledEcho(d, gw, 'stay', s.token, 'svc');
    const k = await key(g.token, 'stay/svc');
    expect(await verify(svc.serviceToken, k.key)).toBe(true);
    expect((await d.api('DELETE', '/v1/principals/gone')).status).toBe(204);
    expect(await verify(svc.serviceToken, k.key)).toBe(false);
  });
});

describe('SES-2: a credential minted with another never outlives or out-privileges it', () => {
  it('fail/SES-2 what a short-lived token mints ends with it: service lease, key, self-made token', async () => {
    await d.addUser('short');
    const t = await tokenFor('short', { ttlSeconds: 120 });
    const end = Date.parse(t.info.expiresAt);
    const reg = await d.api('POST', '/v1/services', {
      token: t.token,
      body: { name: 'job', tunnel: 'none', ttlSeconds: 86400 },
    });
    expect(reg.status, reg.text).toBe(201);
    expect(Date.parse(reg.body.service.expiresAt)).toBeLessThanOrEqual(end);
    const child = await tokenFor('short', { ttlSeconds: 7 * 86400, label: 'mine' }, t.token);
    expect(Date.parse(child.info.expiresAt)).toBeLessThanOrEqual(end);
  });

  it('fail/SES-2 revoking a token takes everything minted with it: its services, its keys, the tokens made from it', async () => {
    await d.addUser('chain');
    const root = await tokenFor('chain');
    const child = await tokenFor('chain', { label: 'made with root' }, root.token);
    const grandchild = await tokenFor('chain', { label: 'made with child' }, child.token);
    const other = await tokenFor('chain'); // an enrolment by the admin: independent
    const svc = await tunnelledEcho(d, gw, 'chain', child.token, 'minted');
    const kept = await tunnelledEcho(d, gw, 'chain', other.token, 'kept');
    const k = await key(grandchild.token, 'chain/kept');
    const k2 = await key(other.token, 'chain/kept');
    expect(await verify(kept.serviceToken, k.key)).toBe(true);
    expect((await d.api('DELETE', `/v1/tokens/${root.id}`)).status).toBe(204);
    for (const t of [root, child, grandchild])
      expect((await d.api('GET', '/v1/whoami', { token: t.token })).status).toBe(401);
    expect((await d.api('GET', '/v1/services/chain/minted')).status).toBe(404);
    expect(await verify(svc.serviceToken, 'bkk_x')).toBe(401);
    expect(await verify(kept.serviceToken, k.key)).toBe(false);
    // What the independent token made stands.
    expect((await d.api('GET', '/v1/whoami', { token: other.token })).status).toBe(200);
    expect(await verify(kept.serviceToken, k2.key)).toBe(true);
    const events = (await d.api('GET', '/v1/audit?limit=200')).body.events as {
      action: string;
      details: Record<string, unknown> | null;
    }[];
    const revoke = events.find(
      (e) => e.action === 'token.revoke' && e.details?.tokenId === root.id,
    );
    expect(revoke?.details).toMatchObject({ services: ['chain/minted'], keys: 1 });
  });
});

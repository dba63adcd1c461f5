/**
 * Pen test 2 (LOC-4, LOC-5, SES-1): a `--tunnel none` service on loopback is reached by its name,
 * `NAME.OWNER.localhost`, which resolves to 127.0.0.1 *and* ::1 (browsers try ::1 first). A
 * server that holds only 127.0.0.1:PORT leaves [::1]:PORT to bt-mallory, who would receive its
 * clients, their keys and the TLS server name of their sessions. The broker counts another
 * user's listener on any loopback address of the port as a squat: `ready` is refused, and a
 * ready service goes offline with its keys revoked. The SDK's `listenOnLoopback` holds both.
 */
import { mkdtempSync, writeFileSync, chmodSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';
import {
  announceSkip,
  killAs,
  lineFrom,
  runAs,
  spawnNodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { listenOnLoopback } from '../../src/server-sdk/loopback.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('loopback twin squats (test/integration/loopback-twin.test.ts)');

/** A listener as `user` on host:port; prints "up" once listening (or the error code). */
const LISTEN = (host: string, port: number) =>
  `import net from 'node:net';
   net.createServer((c) => c.end('hi\\n')).on('error', (e) => console.log(e.code))
     .listen({ host: ${JSON.stringify(host)}, port: ${port}, ipv6Only: ${host === '::1'} }, () => console.log('up'));`;

describe.skipIf(skip)('the loopback twin of a tunnel "none" service', () => {
  let d: Daemon;
  let alice: UnixUser;
  let mallory: UnixUser;
  let aliceToken: string;
  let caFile: string;
  const procs: ReturnType<typeof spawnNodeAs>[] = [];

  beforeAll(async () => {
    alice = unixUser('bt-alice');
    mallory = unixUser('bt-mallory');
    d = await Daemon.start({ config: { reapIntervalSeconds: 1 } });
    aliceToken = await d.addUser('bt-alice');
    const dir = mkdtempSync(join(tmpdir(), 'broker-twin-'));
    chmodSync(dir, 0o755);
    caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, d.ca, { mode: 0o644 });
  });
  afterAll(async () => {
    for (const p of procs) killAs(p);
    await d?.stop();
  });

  async function register(name: string) {
    const r = await d.api<any>('POST', '/v1/services', {
      token: aliceToken,
      body: { name, tunnel: 'none' },
    });
    expect(r.status, r.text).toBe(201);
    return r.body as { service: { port: number }; serviceToken: string };
  }

  /** `broker ready NAME` as alice, with the service token (the kernel says who asks). */
  const ready = (name: string, serviceToken: string) =>
    runAs(alice, process.execPath, [BIN, 'ready', name], {
      env: { BROKER_URL: d.url, BROKER_CA: caFile, BROKER_TOKEN: serviceToken },
    });

  async function listenAs(user: UnixUser, host: string, port: number): Promise<string> {
    const p = spawnNodeAs(user, LISTEN(host, port));
    procs.push(p);
    return lineFrom(p, (l) => l.trim().length > 0);
  }

  it('fail/LOC-4 mallory on [::1]:PORT before alice confirms: ready is refused, naming her', async () => {
    const reg = await register('first');
    expect(await listenAs(mallory, '::1', reg.service.port)).toBe('up');
    expect(await listenAs(alice, '127.0.0.1', reg.service.port)).toBe('up');
    const r = await ready('first', reg.serviceToken);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      new RegExp(`^broker: service_not_ready: .* is held by another user \\(uid ${mallory.uid}\\)`),
    );
  });

  it('fail/LOC-4 mallory takes [::1]:PORT of a ready service: it goes offline, its keys are revoked, the audit names her', async () => {
    const reg = await register('second');
    expect(await listenAs(alice, '127.0.0.1', reg.service.port)).toBe('up');
    const r = await ready('second', reg.serviceToken);
    expect(r.code, r.stderr).toBe(0);
    const key = (
      await d.api<any>('POST', '/v1/services/bt-alice/second/keys', { token: aliceToken, body: {} })
    ).body.key as string;
    expect(await listenAs(mallory, '::1', reg.service.port)).toBe('up');
    await until(
      async () =>
        (await d.api<any>('GET', '/v1/services/bt-alice/second')).body.service.status === 'offline',
      15_000,
      'offline after the squat',
    );
    const v = await d.api<any>('POST', '/v1/verify', { token: reg.serviceToken, body: { key } });
    expect(v.body.valid).toBe(false);
    const events = (await d.api<any>('GET', '/v1/audit?limit=200')).body.events;
    expect(
      events.find((e: any) => e.action === 'port.squatted' && e.target === 'bt-alice/second'),
    ).toMatchObject({ details: { uid: mallory.uid, port: reg.service.port } });
  });

  it('ok/listenOnLoopback holds both addresses, so there is no twin to take; a twin already taken is refused', async () => {
    const server = createServer((c) => c.end('ok\n'));
    const reg = await register('third');
    expect(await listenOnLoopback(server, reg.service.port)).toBe('::1');
    try {
      expect(await listenAs(mallory, '::1', reg.service.port)).toBe('EADDRINUSE');
    } finally {
      server.close();
    }
    const fourth = await register('fourth');
    expect(await listenAs(mallory, '::1', fourth.service.port)).toBe('up');
    const late = createServer();
    await expect(listenOnLoopback(late, fourth.service.port)).rejects.toMatchObject({
      code: 'port_unavailable',
    });
    expect(late.listening).toBe(false);
  });
});

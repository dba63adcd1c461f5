/**
 * SSH-4 / LOC-5 as the attacker (found by a penetration test of issue 11): the gateway's channel
 * cap (`sshMaxChannels`, 4096) was one pool for everybody. bt-mallory, a second real Unix user
 * with an ordinary broker account, registers a service of her own, holds its reverse tunnel and
 * opens 64 × 64 forwards to it, which she never closes. Each principal now has a share of
 * channels (`sshMaxChannelsPerPrincipal`, 512) and of connections (128): she fills only hers. A
 * published port's connections come out of its owner's share when the owner's own Unix user
 * makes them, and out of a pool capped per connecting user and per service otherwise
 * (published-port-shares.test.ts).
 */
import type { ChildProcess } from 'node:child_process';
import { connect as netConnect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon, ROOT } from '../helpers/daemon.js';
import {
  closeSshResources,
  echoes,
  forward,
  gatewayOf,
  portRange,
  register,
  sshConnect,
  tunnelledEcho,
  type Gw,
} from '../helpers/ssh.js';
import { announceSkip, killAs, spawnAs, unixUser, type UnixUser } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('LOC-5 gateway shares (a second Unix user is the attacker)');

/** mallory: her service's tunnel holds every channel; 64 connections × 64 forwards to it. */
const hog = (gw: number, svcPort: number) => `import ssh2 from 'ssh2';
const conn = (password) => new Promise((resolve, reject) => {
  const c = new ssh2.Client();
  c.once('ready', () => resolve(c));
  c.once('error', reject);
  c.connect({ host: '127.0.0.1', port: ${gw}, username: 'bt-mallory', password,
    tryKeyboard: false, readyTimeout: 10000, hostVerifier: () => true });
});
const server = await conn(process.env.SERVICE_TOKEN);
server.on('tcp connection', (_i, accept) => { const ch = accept(); ch.on('error', () => {}); ch.resume(); });
await new Promise((resolve, reject) => server.forwardIn('127.0.0.1', 0, (e) => (e ? reject(e) : resolve())));
let held = 0, refused = 0;
for (let i = 0; i < 64; i++) {
  const c = await conn(process.env.USER_TOKEN);
  await Promise.all(Array.from({ length: 64 }, () => new Promise((resolve) =>
    c.forwardOut('127.0.0.1', 1, '127.0.0.1', ${svcPort}, (err, ch) => {
      if (err) refused++; else { held++; ch.on('error', () => {}); }
      resolve();
    }))));
}
console.log(JSON.stringify({ held, refused }));
setInterval(() => {}, 1000);`;

describe.skipIf(skip)('LOC-5: one principal cannot hold every gateway channel', () => {
  let d: Daemon;
  let gw: Gw;
  let mallory: UnixUser;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    d = await Daemon.start({ portRange: portRange() });
    gw = await gatewayOf(d);
  });
  afterAll(async () => {
    for (const p of procs) killAs(p);
    closeSshResources();
    await d.stop();
  });

  /** A client of the published port (no gate behind tunnelledEcho: the echo answers). */
  const dial = (port: number) =>
    new Promise<string>((resolve) => {
      const s = netConnect({ host: '127.0.0.1', port });
      let got = '';
      s.on('connect', () => s.write('ping\n'));
      s.on('data', (c) => {
        got += c.toString();
        s.end();
      });
      s.on('error', (e: NodeJS.ErrnoException) => (got += `[${e.code}]`));
      s.on('close', () => resolve(got));
      setTimeout(() => s.destroy(), 2000);
    });

  it('fail/LOC-5 while mallory holds her channels, alice still opens a forward and clients still reach her published port', async () => {
    const alice = await d.addUser('alice');
    const svc = await tunnelledEcho(d, gw, 'alice', alice, 'echo');
    const before = await sshConnect(gw, 'alice', alice);
    expect(await echoes(await forward(before, '127.0.0.1', svc.port), 'before\n')).toBe(true);
    before.end();
    expect(await dial(svc.port)).toBe('ping\n');

    const userToken = await d.addUser('bt-mallory');
    const sink = await register(d, userToken, { name: 'sink', tunnel: 'ssh' });
    const m = spawnAs(
      mallory,
      process.execPath,
      ['--input-type=module', '-e', hog(gw.port, sink.service.port)],
      {
        env: { USER_TOKEN: userToken, SERVICE_TOKEN: sink.serviceToken },
        cwd: ROOT,
      },
    );
    procs.push(m);
    let held: { held: number; refused: number } | null = null;
    m.stdout!.on('data', (c: Buffer) => {
      const l = c
        .toString()
        .split('\n')
        .find((x) => x.startsWith('{'));
      if (l) held = JSON.parse(l) as { held: number; refused: number };
    });
    await until(() => held !== null, 60_000, 'mallory to open her channels');

    const c = await sshConnect(gw, 'alice', alice);
    const ch = await forward(c, '127.0.0.1', svc.port).then(
      (x) => x,
      (e: Error) => e,
    );
    const aliceForward = ch instanceof Error ? `refused: ${ch.message}` : 'open';
    const published = await dial(svc.port);
    console.log(
      `[attack] mallory holds ${JSON.stringify(held)} channels to her own service; alice's forward: ${aliceForward}; a client of alice's published port got: ${JSON.stringify(published)}`,
    );
    expect({ aliceForward, published }).toEqual({ aliceForward: 'open', published: 'ping\n' });
    expect(held!.held).toBeLessThanOrEqual(512); // her share, and not one channel more
  }, 90_000);
});

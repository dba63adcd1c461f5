/**
 * LOC-4 / LOC-5 as the attacker: bt-mallory, a real second Unix user on the broker host, tries to
 * take a service's port — before its tunnel attaches, during a tunnel gap, while the broker
 * restarts, after a `tunnel: none` server died — to answer like the service and collect the keys
 * clients send. A port the broker allocated is never free while its service lives; where the host
 * cannot guarantee that (an unprotected range during a restart) the broker finds the squatter
 * before any collected key could be verified, and revokes the keys.
 */
import { execFile, spawn } from 'node:child_process';
import { connect as netConnect } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';
import {
  audit,
  closeSshResources,
  echoes,
  gatewayOf,
  portRange,
  register,
  sleep,
  sshConnect,
  type Gw,
} from '../helpers/ssh.js';
import {
  announceSkip,
  killAs,
  lineFrom,
  nodeAs,
  spawnNodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';
import type { ChildProcess } from 'node:child_process';

const run = promisify(execFile);
const skip = announceSkip('LOC-4/LOC-5 held-port tests (a second Unix user is the attacker)');
const children: ChildProcess[] = [];
const daemons: Daemon[] = [];

afterAll(async () => {
  for (const c of children) killAs(c);
  closeSshResources();
  for (const d of daemons) await d.stop().catch(() => undefined);
});

/** mallory tries to bind `port` on 127.0.0.1 and ::1; returns each attempt's outcome. */
async function tryBind(mallory: UnixUser, port: number, wrap: string[] = []) {
  const source = `
    import net from 'node:net';
    const out = {};
    for (const host of ['127.0.0.1', '::1']) {
      out[host] = await new Promise((resolve) => {
        const s = net.createServer();
        s.once('error', (e) => resolve(e.code));
        s.listen({ port: ${port}, host, ipv6Only: host === '::1' }, () => s.close(() => resolve('bound')));
      });
    }
    console.log(JSON.stringify(out));`;
  if (wrap.length === 0) return JSON.parse((await nodeAs(mallory, source)).stdout);
  const { stdout } = await run(wrap[0]!, [
    ...wrap.slice(1),
    'runuser',
    '-u',
    mallory.name,
    '--',
    process.execPath,
    '--input-type=module',
    '-e',
    source,
  ]);
  return JSON.parse(stdout);
}

/** mallory's fake service on 127.0.0.1:`port`: prints every line a client sends, answers OK. */
function squat(mallory: UnixUser, port: number): ChildProcess {
  const p = spawnNodeAs(
    mallory,
    `import net from 'node:net';
     net.createServer((s) => { s.on('data', (b) => console.log('GOT ' + b.toString().trim())); s.write('OK\\n'); })
       .listen(${port}, '127.0.0.1', () => console.log('LISTENING'));`,
  );
  children.push(p);
  return p;
}

/** Attach a reverse tunnel for a service token; an echo answers behind it. */
async function attach(gw: Gw, owner: string, serviceToken: string) {
  const c = await sshConnect(gw, owner, serviceToken);
  c.on('tcp connection', (_i, accept) => {
    const ch = accept();
    ch.on('error', () => ch.destroy());
    ch.pipe(ch);
  });
  const port = await new Promise<number>((resolve, reject) =>
    c.forwardIn('127.0.0.1', 0, (err, p) => (err ? reject(err) : resolve(p))),
  );
  return { c, port };
}

/** Connect to 127.0.0.1:port, write a line; resolves with what came back and how it ended. */
function dial(port: number, line: string): Promise<{ got: string; how: string; ms: number }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = netConnect({ host: '127.0.0.1', port });
    let got = '';
    let how = 'closed';
    s.on('data', (b) => (got += b.toString()));
    s.on('error', (e: NodeJS.ErrnoException) => (how = e.code ?? 'error'));
    s.once('connect', () => s.write(line));
    s.once('close', () => resolve({ got, how, ms: Date.now() - t0 }));
    setTimeout(() => s.destroy(), 1500);
  });
}

describe.skipIf(skip)(
  "LOC-4: a tunnelled service's port is the broker's for the whole lease",
  () => {
    let d: Daemon;
    let gw: Gw;
    let mallory: UnixUser;
    let owner: string;

    beforeAll(async () => {
      mallory = unixUser('bt-mallory');
      d = await Daemon.start({ portRange: portRange() });
      daemons.push(d);
      gw = await gatewayOf(d);
      owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    });

    it('fail/LOC-4 mallory cannot bind it before the tunnel attaches, during a tunnel gap, or after; clients are reset, never answered by anyone else', async () => {
      const reg = await register(d, d.adminToken, { name: 'held', tunnel: 'ssh' });
      const port = reg.service.port;
      // Registered, tunnel not yet attached.
      expect(await tryBind(mallory, port)).toEqual({
        '127.0.0.1': 'EADDRINUSE',
        '::1': 'EADDRINUSE',
      });
      const early = await dial(port, 'hello\n');
      expect(early.got).toBe('');
      expect(early.ms).toBeLessThan(500);
      // Attached: data flows.
      const t = await attach(gw, owner, reg.serviceToken);
      expect(t.port).toBe(port);
      const s = netConnect({ host: '127.0.0.1', port });
      expect(await echoes(s as never, 'through\n')).toBe(true);
      s.destroy();
      // A tunnel gap (the server's connection drops): the port stays held, clients are reset.
      t.c.end();
      await until(
        async () =>
          (await d.api('GET', `/v1/services/${owner}/held`)).body.service.status === 'offline',
        5000,
        'offline after the tunnel dropped',
      );
      expect(await tryBind(mallory, port)).toEqual({
        '127.0.0.1': 'EADDRINUSE',
        '::1': 'EADDRINUSE',
      });
      const gap = await dial(port, 'bkk_secret-would-go-here\n');
      expect(gap).toMatchObject({ got: '', how: 'ECONNRESET' });
      // The server comes back on the same port.
      const again = await attach(gw, owner, reg.serviceToken);
      expect(again.port).toBe(port);
      again.c.end();
    });

    it('fail/LOC-4 a port mallory took while the broker was down is found at start: the squatter named, the keys it may have collected revoked, the service moved', async () => {
      const reg = await register(d, d.adminToken, { name: 'restart', tunnel: 'ssh' });
      const port = reg.service.port;
      const t = await attach(gw, owner, reg.serviceToken);
      const k = await d.api('POST', `/v1/services/${owner}/restart/keys`, { body: {} });
      expect(k.status).toBe(201);
      t.c.end();
      await d.stop();
      // The window an unprotected range leaves open: mallory binds, a client sends its key.
      const m = squat(mallory, port);
      await lineFrom(m, (l) => l === 'LISTENING');
      const got = lineFrom(m, (l) => l.startsWith('GOT '));
      await dial(port, `${k.body.key}\n`);
      expect(await got).toBe(`GOT ${k.body.key}`);
      // The broker comes back: the squat is found before it answers anything.
      await d.launch();
      const health = await d.api('GET', '/v1/health', { token: null });
      expect(health.body.ports.protected).toBe(false);
      const moved = (await d.api('GET', `/v1/services/${owner}/restart`)).body.service;
      expect(moved.port).not.toBe(port);
      const replay = await d.api('POST', '/v1/verify', {
        token: reg.serviceToken,
        body: { key: k.body.key },
      });
      expect(replay.body).toEqual({ valid: false });
      const events = await audit(d);
      const squatted = events.find(
        (e) => e.action === 'port.squatted' && e.target === `${owner}/restart`,
      );
      expect(squatted?.details).toMatchObject({ port, uids: [mallory.uid], keysRevoked: 1 });
      // The server reattaches (asking for port 0) and gets the new port, held by the broker.
      gw = await gatewayOf(d);
      const back = await attach(gw, owner, reg.serviceToken);
      expect(back.port).toBe(moved.port);
      expect(await tryBind(mallory, moved.port)).toEqual({
        '127.0.0.1': 'EADDRINUSE',
        '::1': 'EADDRINUSE',
      });
      back.c.end();
      killAs(m);
    });
  },
);

describe.skipIf(skip)('LOC-4 / LOC-5: tunnel "none" services on the broker host', () => {
  let d: Daemon;
  let mallory: UnixUser;
  let owner: string;

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    d = await Daemon.start({
      portRange: portRange(),
      config: { heartbeatGraceSeconds: 3, reapIntervalSeconds: 1 },
    });
    daemons.push(d);
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });

  it('fail/LOC-5 ready refuses a listener of another Unix user and names it', async () => {
    const reg = await register(d, d.adminToken, { name: 'taken', tunnel: 'none' });
    const m = squat(mallory, reg.service.port);
    await lineFrom(m, (l) => l === 'LISTENING');
    const r = await d.api('POST', `/v1/services/${owner}/taken/ready`, {
      token: reg.serviceToken,
      body: {},
    });
    expect(r.status).toBe(409);
    expect(r.body.error.code).toBe('service_not_ready');
    expect(r.body.error.message).toContain(`uid ${mallory.uid}`);
    expect((await d.api('GET', `/v1/services/${owner}/taken`)).body.service.status).toBe('pending');
    killAs(m);
  });

  it('fail/LOC-4 a server that dies without a heartbeat goes offline within the grace and its keys go; mallory who binds the port next collects nothing that verifies', async () => {
    const reg = await register(d, d.adminToken, { name: 'dies', tunnel: 'none' });
    const port = reg.service.port;
    // The owner's server (this test process's user, who also calls ready).
    const srv = spawn(process.execPath, [
      '-e',
      `require('node:net').createServer((s) => s.pipe(s)).listen(${port}, '127.0.0.1', () => console.log('UP'))`,
    ]);
    children.push(srv);
    await lineFrom(srv, (l) => l === 'UP');
    const ready = await d.api('POST', `/v1/services/${owner}/dies/ready`, {
      token: reg.serviceToken,
      body: {},
    });
    expect(ready.status, ready.text).toBe(200);
    const k = await d.api('POST', `/v1/services/${owner}/dies/keys`, { body: {} });
    srv.kill('SIGKILL');
    const t0 = Date.now();
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/dies`)).body.service.status === 'offline',
      6000,
      'offline within the grace',
    );
    expect(Date.now() - t0).toBeLessThan(4000);
    const m = squat(mallory, port);
    await lineFrom(m, (l) => l === 'LISTENING');
    const got = lineFrom(m, (l) => l.startsWith('GOT '));
    await dial(port, `${k.body.key}\n`);
    expect(await got).toBe(`GOT ${k.body.key}`);
    // What mallory collected is worth nothing.
    const replay = await d.api('POST', '/v1/verify', {
      token: reg.serviceToken,
      body: { key: k.body.key },
    });
    expect(replay.body).toEqual({ valid: false });
    killAs(m);
  });
});

const NS = `bt-ports-${process.pid}`;
const inNs = ['ip', 'netns', 'exec', NS];

describe.skipIf(skip)('LOC-4: a protected port range (below ip_unprivileged_port_start)', () => {
  let d: Daemon;
  let mallory: UnixUser;

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    await run('ip', ['netns', 'add', NS]);
    await run('ip', ['netns', 'exec', NS, 'ip', 'link', 'set', 'lo', 'up']);
    await run('ip', [
      'netns',
      'exec',
      NS,
      'sysctl',
      '-qw',
      'net.ipv4.ip_unprivileged_port_start=30000',
    ]);
    d = await Daemon.start({ portRange: '20100-20109', wrap: inNs });
    daemons.push(d);
  });

  afterAll(async () => {
    await d?.stop().catch(() => undefined);
    await run('ip', ['netns', 'delete', NS]).catch(() => undefined);
  });

  it('ok/LOC-4 mallory cannot bind a service port even while the broker is down; the broker says the range is protected', async () => {
    const env = { ...d.env(), PATH: process.env.PATH! };
    const cli = async (args: string[]) =>
      JSON.parse(
        (await run(inNs[0]!, [...inNs.slice(1), process.execPath, BIN, ...args], { env })).stdout,
      );
    const status = await cli(['status', '--json']);
    expect(status.health.ports).toEqual({ range: '20100-20109', protected: true });
    const reg = await cli(['register', 'guarded', '--tunnel', 'ssh', '--json']);
    const port = reg.service.port as number;
    expect(await tryBind(mallory, port, inNs)).toEqual({ '127.0.0.1': 'EACCES', '::1': 'EACCES' });
    await d.stop();
    // The broker is down: the port is free, and still nobody unprivileged can have it.
    expect(await tryBind(mallory, port, inNs)).toEqual({ '127.0.0.1': 'EACCES', '::1': 'EACCES' });
    await d.launch();
    expect((await cli(['query', '--json'])).services[0].port).toBe(port);
    await sleep(10);
  });
});

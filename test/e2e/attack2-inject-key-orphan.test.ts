/**
 * Pen test 2 (LOC-5): `broker tunnel --inject-key` sends the owner's key for a local connection
 * only when the kernel says the owner's UID made it (src/host/sock-diag.ts). The lookup has a
 * fallback meant for the server end of a connection: a socket with inode 0 ("not accepted yet")
 * is answered with the UID of *the listener on its address and port*. The tunnel asks about the
 * client end — and a client socket has inode 0 too once its process has closed it (an orphan in
 * FIN_WAIT). So bt-mallory binds a client socket (SO_REUSEADDR, not yet connected) to a port
 * alice will listen on later — any fixed port: a second `broker tunnel --local-port 8888`, her
 * Jupyter, or a `--tunnel none` service's next port (the broker hands ports out next-fit) — and
 * SO_REUSEADDR lets alice's listener bind there all the same. Then mallory connects from that
 * port to alice's inject-key tunnel, writes her bytes and closes at once: by the time the tunnel
 * asks, her socket is an orphan, the kernel's listener for its port is alice's, alice's key is
 * injected and mallory's bytes reach alice's service as alice's (a blind write: the answer is
 * lost, the request is not).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { registerService } from '../../src/server-sdk/service.js';
import { BIN, Daemon } from '../helpers/daemon.js';
import {
  announceSkip,
  killAs,
  lineFrom,
  spawnAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('attack2 inject-key attribution of an orphaned socket');

/** mallory: a socket bound to port Y (not connected); later, one blind write to port L. */
const MALLORY = String.raw`
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
print("bound", flush=True)
L = int(sys.stdin.readline())
s.connect(("127.0.0.1", L))
s.sendall(b"MALLORY-WRITES-AS-ALICE\n")
s.close()
print("sent", flush=True)
`;

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createNetServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as AddressInfo).port;
      s.close(() => resolve(p));
    });
  });

describe.skipIf(skip)('LOC-5: --inject-key and a socket its owner has already closed', () => {
  let d: Daemon;
  let alice: UnixUser;
  let mallory: UnixUser;
  let home: string;
  const procs: ChildProcess[] = [];
  const closers: (() => unknown)[] = [];

  beforeAll(async () => {
    alice = unixUser('bt-alice');
    mallory = unixUser('bt-mallory');
    d = await Daemon.start();
  });
  afterAll(async () => {
    for (const p of procs) killAs(p);
    for (const c of closers) await Promise.resolve(c()).catch(() => undefined);
    await d?.stop();
    if (home) rmSync(home, { recursive: true, force: true });
  });

  it("fail/LOC-5 mallory's closed socket on a port alice listens on is not taken for alice's: her bytes never reach alice's service with alice's key", async () => {
    const aliceToken = await d.addUser('bt-alice');
    // alice's TCP service behind the SDK gate; it records what reaches the app.
    const got: string[] = [];
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: aliceToken, env: {} });
    const svc = await registerService({ broker, name: 'ctl', tunnel: 'none' });
    const server = createNetServer(
      svc.gate((s, who) => s.on('data', (c) => got.push(`${who.principal}: ${c.toString()}`))),
    );
    await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
    await svc.ready();
    closers.push(
      () => server.close(),
      () => svc.close(),
    );

    home = mkdtempSync('/tmp/bt2i-');
    chmodSync(home, 0o755);
    const cfg = join(home, '.config', 'broker');
    mkdirSync(cfg, { recursive: true, mode: 0o700 });
    writeFileSync(
      join(cfg, 'credentials.json'),
      JSON.stringify({ url: d.url, token: aliceToken, ca: d.ca }),
      { mode: 0o600 },
    );
    for (const p of [home, join(home, '.config'), cfg, join(cfg, 'credentials.json')])
      chownSync(p, alice.uid, alice.gid);
    const env = { HOME: home, PATH: `${process.env.PATH}`, LANG: 'C.UTF-8' };

    // mallory binds (does not connect) a socket on a port alice will listen on later.
    const y = await freePort();
    const m = spawnAs(mallory, 'python3', ['-c', MALLORY, String(y)]);
    procs.push(m);
    await lineFrom(m, (l) => l === 'bound');

    // alice: her inject-key tunnel, and (any time later) some server of hers on port y.
    const t = spawnAs(alice, process.execPath, [BIN, 'tunnel', 'ctl', '--inject-key', '--json'], {
      env,
      cwd: home,
    });
    procs.push(t);
    let tOut = '';
    let tErr = '';
    t.stdout!.on('data', (b: Buffer) => (tOut += b.toString()));
    t.stderr!.on('data', (b: Buffer) => (tErr += b.toString()));
    await until(() => tOut.trim().endsWith('}'), 15_000, `broker tunnel: ${tErr}`);
    const local = JSON.parse(tOut).localPort as number;
    const other = spawnAs(
      alice,
      'python3',
      ['-m', 'http.server', String(y), '--bind', '127.0.0.1'],
      { cwd: home },
    );
    procs.push(other);
    await until(
      () =>
        new Promise<boolean>((resolve) => {
          const c = spawn('python3', [
            '-c',
            `import socket; socket.create_connection(("127.0.0.1", ${y}), 1)`,
          ]);
          c.on('exit', (code) => resolve(code === 0));
        }),
      10_000,
      `alice's server on ${y}`,
    );

    // mallory: connect from port y to alice's tunnel, write, close.
    m.stdin!.write(`${local}\n`);
    await lineFrom(m, (l) => l === 'sent');
    await new Promise((r) => setTimeout(r, 2000));
    console.log({ reachedApp: got, tunnelStderr: tErr.trim() });

    // LOC-5: only alice's own processes get her key injected; mallory's bytes reach nothing.
    expect(got.join(''), "what reached alice's app").not.toContain('MALLORY-WRITES-AS-ALICE');
    expect(tErr).toMatch(
      new RegExp(`refused a connection from uid ${mallory.uid}|could not attribute`),
    );
  }, 60_000);
});

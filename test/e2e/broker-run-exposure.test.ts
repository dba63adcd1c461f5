/**
 * LOC-3 (issue 11): the app behind `broker run`, attacked by another real Unix user (bt-mallory)
 * on the same node. A socket in the 0700 directory: no way in. `{app_port}` with nothing else:
 * mallory gets in — and broker run says so loudly, registers exposure `open`, the broker audits
 * it. `--app-auth`: the app refuses mallory without the credential, which is on no command line.
 * `--isolate`: the port is not even there from the host. A port mallory squats before a slow app
 * binds it: broker run never goes up, names mallory's UID, and no client byte reaches her. A port
 * she takes while broker run is up (the app dropped its listener): every upstream connection is
 * attributed before a byte goes through, so the first one that reaches her stops the app.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localhostLookup } from '../../src/client/broker-client.js';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import {
  announceSkip,
  lineFrom,
  nodeAs,
  spawnNodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const ECHO = join(ROOT, 'examples', 'python-echo', 'echo_server.py');
const skip = announceSkip('broker run against another local user');

/** Every process's command line (what any user can read in /proc). */
function cmdlines(): { pid: number; cmd: string }[] {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map((p) => {
      try {
        return { pid: Number(p), cmd: readFileSync(`/proc/${p}/cmdline`, 'utf8') };
      } catch {
        return { pid: Number(p), cmd: '' };
      }
    });
}

/** The argument after `flag` in the command line of the process whose cmdline has `marker`. */
function argOf(marker: string, flag: string): string | undefined {
  const p = cmdlines().find((c) => c.cmd.includes(marker) && !c.cmd.includes('bin/broker'));
  if (!p) return undefined;
  const args = p.cmd.split('\0');
  return args[args.indexOf(flag) + 1];
}

/** The app port: the argument before `marker` in the app's command line. */
function appPortOf(marker: string): number {
  const p = cmdlines().find((c) => c.cmd.includes(marker) && !c.cmd.includes('bin/broker'));
  const args = p?.cmd.split('\0') ?? [];
  return Number(args[args.indexOf(marker) - 1]);
}

/** mallory connects to `target` (a port on 127.0.0.1, or a socket path), sends `send`. */
function malloryTries(m: UnixUser, target: number | string, send = 'hi\n') {
  return nodeAs(
    m,
    `import { connect } from 'node:net';
     const t = ${JSON.stringify(target)};
     const s = typeof t === 'number' ? connect({ host: '127.0.0.1', port: t }) : connect(t);
     let got = '';
     s.on('connect', () => s.write(${JSON.stringify(send)}));
     s.on('data', (c) => { got += c; setTimeout(() => s.destroy(), 200); });
     s.on('close', () => console.log(JSON.stringify({ got })));
     s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
     setTimeout(() => s.destroy(), 3000).unref();`,
  ).then(
    (r) =>
      JSON.parse(r.stdout.trim().split('\n').pop() || '{}') as { got?: string; error?: string },
  );
}

describe.skipIf(skip)('broker run: another local user tries the app (LOC-3)', () => {
  let d: Daemon;
  let owner: string;
  let mallory: UnixUser;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    mallory = unixUser('bt-mallory');
  });
  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    await d.stop();
  });

  function run(name: string, args: string[]) {
    const p = spawn(process.execPath, [BIN, 'run', name, ...args], {
      env: d.env(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    p.stdout!.resume();
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    procs.push(p);
    return { p, exited, err: () => err };
  }
  const service = async (name: string) =>
    (await d.api('GET', `/v1/services/${owner}/${name}`)).body.service as
      { status: string; port: number; exposure: string | null } | undefined;
  const ready = (name: string) =>
    until(async () => (await service(name))?.status === 'ready', 20_000, `${name} ready`);
  const key = async (name: string) =>
    (await d.api('POST', `/v1/services/${owner}/${name}/keys`, { body: {} })).body as {
      key: string;
      service: { port: number; hostname: string };
    };
  const talk = (port: number, payload: string) =>
    new Promise<string>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port });
      let out = '';
      s.on('data', (c) => {
        out += c.toString();
        if (out.includes('echo:') || out === 'DENIED\n') setTimeout(() => s.destroy(), 50);
      });
      s.on('close', () => resolve(out));
      s.on('error', () => resolve(out));
      s.write(payload);
      setTimeout(() => s.destroy(), 3000);
    });
  const get = (
    svc: { port: number; hostname: string },
    path: string,
    headers: Record<string, string> = {},
  ) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = httpsRequest(
        `https://${svc.hostname}:${svc.port}${path}`,
        { ca: d.ca, agent: false, headers, lookup: localhostLookup },
        (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        },
      );
      req.on('error', reject);
      req.end();
    });

  it('fail/{app_socket}: mallory cannot connect to the socket (EACCES); exposure unix-socket', async () => {
    const marker = `sock-${process.pid}`;
    const r = run('echo-sock', [
      '--',
      'python3',
      ECHO,
      '--unix-socket',
      '{app_socket}',
      '--count-file',
      `/tmp/${marker}`,
    ]);
    await ready('echo-sock');
    expect((await service('echo-sock'))!.exposure).toBe('unix-socket');
    const k = await key('echo-sock');
    expect(await talk(k.service.port, `${k.key}\nping`)).toBe('OK\necho:ping');
    const path = argOf(marker, '--unix-socket')!;
    expect(path).toMatch(/app\.sock$/);
    expect((await malloryTries(mallory, path)).error).toBe('EACCES');
    // The app was given a socket only: no port in its environment either.
    const app = cmdlines().find((c) => c.cmd.includes(marker) && !c.cmd.includes('bin/broker'))!;
    const environ = readFileSync(`/proc/${app.pid}/environ`, 'utf8').split('\0');
    expect(environ).toContain(`BROKER_APP_SOCKET=${path}`);
    expect(environ.some((e) => e.startsWith('BROKER_APP_PORT='))).toBe(false);
    expect(r.err()).not.toMatch(/WARNING/);
    r.p.kill('SIGTERM');
    await r.exited;
  });

  it('ok/{app_port} with nothing else: mallory gets in, and broker run warns, registers exposure open, the broker audits it', async () => {
    const r = run('echo-open', ['--', 'python3', ECHO, '--port', '{app_port}']);
    await ready('echo-open');
    const port = Number(/127\.0\.0\.1:(\d+) without a key/.exec(r.err())?.[1]);
    expect(r.err()).toMatch(
      /WARNING: any local user can reach this app on 127\.0\.0\.1:\d+ without a key/,
    );
    expect(r.err()).toMatch(/--isolate/);
    expect((await malloryTries(mallory, port)).got).toBe('echo:hi\n'); // the hole, named
    expect((await service('echo-open'))!.exposure).toBe('open');
    const events = (await d.api('GET', '/v1/audit?limit=200')).body.events as {
      action: string;
      target: string;
      details: { exposure?: string } | null;
    }[];
    const reg = events.find(
      (e) => e.action === 'service.register' && e.target === `${owner}/echo-open`,
    );
    expect(reg?.details?.exposure).toBe('open');
    r.p.kill('SIGTERM');
    await r.exited;
  });

  it('fail/--app-auth bearer: the app refuses mallory on its port; the front presents the credential; it is on no command line', async () => {
    // An app that checks the credential broker run gives it (from the 0600 file named in its
    // environment) and shows which headers it got.
    const app = `import { createServer } from 'node:http';
      import { readFileSync } from 'node:fs';
      const want = 'Bearer ' + readFileSync(process.env.BROKER_APP_TOKEN_FILE, 'utf8').trim();
      createServer((req, res) => {
        if (req.headers.authorization !== want) { res.writeHead(401); return res.end('no'); }
        res.end('hello ' + req.headers['x-forwarded-user']);
      }).listen(Number(process.argv[1]), '127.0.0.1');`;
    const r = run('cred', [
      '--mode',
      'https',
      '--app-auth',
      'bearer',
      '--',
      process.execPath,
      '--input-type=module',
      '-e',
      app,
      '{app_port}',
    ]);
    await ready('cred');
    expect((await service('cred'))!.exposure).toBe('app-credential');
    expect(r.err()).not.toMatch(/WARNING/);
    const k = await key('cred');
    expect(await get(k.service, '/', { Authorization: `Bearer ${k.key}` })).toEqual({
      status: 200,
      body: `hello ${owner}`,
    });
    // mallory, straight at the app's port (which she can read in its command line).
    const appProc = cmdlines().find(
      (c) => c.cmd.includes('BROKER_APP_TOKEN_FILE') && !c.cmd.includes('bin/broker'),
    )!;
    const port = Number(appProc.cmd.split('\0').filter(Boolean).pop());
    const direct = await malloryTries(
      mallory,
      port,
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(direct.got).toMatch(/^HTTP\/1\.1 401/);
    // The credential: in the app's environment (readable by its own user only), on no cmdline.
    const environ = readFileSync(`/proc/${appProc.pid}/environ`, 'utf8').split('\0');
    const secret = environ.find((e) => e.startsWith('BROKER_APP_TOKEN='))!.slice(17);
    expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/); // 256 bits
    for (const c of cmdlines()) expect(c.cmd.includes(secret)).toBe(false);
    r.p.kill('SIGTERM');
    await r.exited;
  });

  it('fail/--isolate: the app port is not there from the host (mallory: connection refused); the front reaches it', async () => {
    const dir = `/tmp/broker-isolate-${process.pid}`;
    const { mkdirSync } = await import('node:fs');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'hello.txt'), 'isolated hello\n');
    const p = spawn(
      process.execPath,
      [BIN, 'run', 'iso', '--mode', 'https', '--isolate', '--']
        .concat(['python3', '-m', 'http.server', '{app_port}', '--bind', '127.0.0.1'])
        .concat(['--directory', dir]),
      { env: d.env(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    procs.push(p);
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    await until(
      async () => (await service('iso'))?.status === 'ready',
      20_000,
      `iso ready: ${err}`,
    );
    expect((await service('iso'))!.exposure).toBe('private-network');
    const k = await key('iso');
    expect(await get(k.service, '/hello.txt', { Authorization: `Bearer ${k.key}` })).toEqual({
      status: 200,
      body: 'isolated hello\n',
    });
    const port = Number(argOf(dir, 'http.server'));
    expect(port).toBeGreaterThan(0);
    expect((await malloryTries(mallory, port)).error).toBe('ECONNREFUSED');
    expect(err).not.toMatch(/WARNING/);
    p.kill('SIGTERM');
    expect(await new Promise((r) => p.once('exit', r))).toBe(143);
  });

  it('fail/mallory squats {app_port} before a slow app binds it: never "up", her UID named, not one client byte to her', async () => {
    const marker = `slow-${process.pid}`;
    const slowApp = `import sys, time, socketserver
time.sleep(8)
class H(socketserver.BaseRequestHandler):
    def handle(self): self.request.sendall(b"echo:" + self.request.recv(100))
socketserver.TCPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()`;
    const r = run('slow', ['--', 'python3', '-c', slowApp, '{app_port}', marker]);
    // mallory reads the port in the app's command line and binds it first.
    const appCmd = () =>
      cmdlines().find((c) => c.cmd.includes(marker) && !c.cmd.includes('bin/broker'));
    await until(() => appCmd() !== undefined, 10_000, 'the app');
    const argv = appCmd()!.cmd.split('\0');
    const port = Number(argv[argv.indexOf(marker) - 1]);
    expect(port).toBeGreaterThan(0);
    const squat = spawnNodeAs(
      mallory,
      `import { createServer } from 'node:net';
       createServer((s) => { console.log('conn'); s.on('data', (c) => console.log('bytes ' + c.length)); })
         .listen(${port}, '127.0.0.1', () => console.log('listening'));`,
    );
    procs.push(squat);
    let heard = '';
    squat.stdout!.on('data', (c: Buffer) => (heard += c.toString()));
    await lineFrom(squat, (l) => l === 'listening');
    // A client tries to use the service meanwhile, as long as broker run runs.
    let done = false;
    void r.exited.then(() => (done = true));
    while (!done) {
      const s = await service('slow');
      if (s?.status === 'ready') {
        const k = await key('slow');
        await talk(k.service.port, `${k.key}\nsecret client data`);
      }
      await new Promise((res) => setTimeout(res, 200));
    }
    expect(await r.exited).toBe(1);
    expect(r.err()).not.toMatch(/is up/);
    expect(r.err()).toMatch(
      new RegExp(`port_unavailable: port ${port} is held by UID ${mallory.uid} \\(bt-mallory\\)`),
    );
    expect((await d.api('GET', `/v1/services/${owner}/slow`)).status).toBe(404);
    expect(heard).not.toMatch(/bytes/);
    expect(heard).not.toMatch(/conn/); // not even a probe
    // The slow app was stopped too.
    await until(() => !cmdlines().some((c) => c.cmd.includes(marker)), 5000, 'the app to go');
    squat.kill('SIGTERM');
  });

  it('fail/the app drops its listener and mallory takes the port: after the failed connection broker run checks again, stops, and she gets nothing', async () => {
    const marker = `restart-${process.pid}`;
    // Echoes until told "restart", then closes its listener (a restart, or a crash of the
    // listener) and lingers.
    const app = `import sys, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    d = c.recv(100)
    if b"restart" in d:
        c.close(); s.close(); break
    try: c.sendall(b"echo:" + d)
    except OSError: pass
    c.close()
time.sleep(60)`;
    const r = run('restart', ['--', 'python3', '-c', app, '{app_port}', marker]);
    await ready('restart');
    const argv = cmdlines()
      .find((c) => c.cmd.includes(marker) && !c.cmd.includes('bin/broker'))!
      .cmd.split('\0');
    const port = Number(argv[argv.indexOf(marker) - 1]);
    const k = await key('restart');
    expect(await talk(k.service.port, `${k.key}\nping`)).toBe('OK\necho:ping');
    await talk(k.service.port, `${k.key}\nrestart`);
    const { listenersOn } = await import('../../src/host/socket-owner.js');
    await until(async () => (await listenersOn(port)).length === 0, 5000, 'the listener to go');
    // A client in the gap: its upstream connection is refused.
    expect(await talk(k.service.port, `${k.key}\nx`)).toBe('OK\n');
    const squat = spawnNodeAs(
      mallory,
      `import { createServer } from 'node:net';
       createServer((s) => { console.log('conn'); s.on('data', (c) => console.log('bytes ' + c.length)); })
         .listen(${port}, '127.0.0.1', () => console.log('listening'));`,
    );
    procs.push(squat);
    let heard = '';
    squat.stdout!.on('data', (c: Buffer) => (heard += c.toString()));
    await lineFrom(squat, (l) => l === 'listening');
    // The next client: broker run checks the listener before connecting, finds mallory's.
    await talk(k.service.port, `${k.key}\nsecret client data`);
    expect(await r.exited).toBe(1);
    expect(r.err()).toMatch(
      new RegExp(`port_unavailable: port ${port} is held by UID ${mallory.uid} \\(bt-mallory\\)`),
    );
    expect(heard).not.toMatch(/conn|bytes/);
    expect((await d.api('GET', `/v1/services/${owner}/restart`)).status).toBe(404);
    squat.kill('SIGTERM');
  });

  /** An app that echoes until told "restart", then closes its listener and lingers. */
  const dropsItsListener = (handshake: boolean) => `import sys, socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    ${handshake ? 'c.recv(200); c.sendall(b"OK\\n")  # a --no-gate app answers the key itself' : 'pass'}
    d = c.recv(100)
    if b"restart" in d:
        c.close(); s.close(); break
    try: c.sendall(b"echo:" + d)
    except OSError: pass
    c.close()
time.sleep(60)`;

  /** mallory binds `port` and reports every connection and every byte she is sent. */
  const squat = async (port: number) => {
    const m = spawnNodeAs(
      mallory,
      `import { createServer } from 'node:net';
       createServer((s) => { console.log('conn'); s.on('data', (c) => console.log('bytes ' + c.length)); })
         .listen(${port}, '127.0.0.1', () => console.log('listening'));`,
    );
    procs.push(m);
    let heard = '';
    m.stdout!.on('data', (c: Buffer) => (heard += c.toString()));
    await lineFrom(m, (l) => l === 'listening');
    return { m, heard: () => heard };
  };

  it('fail/LOC-3 mallory takes {app_port} while broker run is up, with no failed connection to warn it: the next connection is attributed to her UID, not one byte reaches her, the app is stopped', async () => {
    const marker = `retake-${process.pid}`;
    const r = run('retake', ['--', 'python3', '-c', dropsItsListener(false), '{app_port}', marker]);
    await ready('retake');
    const port = appPortOf(marker);
    const k = await key('retake');
    expect(await talk(k.service.port, `${k.key}\nping`)).toBe('OK\necho:ping');
    await talk(k.service.port, `${k.key}\nrestart`);
    const { listenersOn } = await import('../../src/host/socket-owner.js');
    await until(async () => (await listenersOn(port)).length === 0, 5000, 'the listener to go');
    const m = await squat(port); // before any client tries: the guard has no failure to go by
    // The next client, with a valid key: the gate says OK, then the upstream connection (the
    // kernel completes it to her listener) is found to be hers and dropped before a byte.
    expect(await talk(k.service.port, `${k.key}\nsecret client data`)).toBe('OK\n');
    expect(await r.exited).toBe(1);
    expect(r.err()).toMatch(
      new RegExp(`port_unavailable: port ${port} is held by UID ${mallory.uid} \\(bt-mallory\\)`),
    );
    expect(m.heard()).not.toMatch(/bytes/);
    expect((await d.api('GET', `/v1/services/${owner}/retake`)).status).toBe(404);
    await until(() => !cmdlines().some((c) => c.cmd.includes(marker)), 5000, 'the app to go');
    m.m.kill('SIGTERM');
  });

  it('fail/LOC-3 --no-gate over the tunnel: connections reach the app on {app_port} through an attributing relay; mallory on the port gets no key', async () => {
    const marker = `nogate-${process.pid}`;
    const r = run('nogateport', [
      '--no-gate',
      '--',
      'python3',
      '-c',
      dropsItsListener(true),
      '{app_port}',
      marker,
    ]);
    await ready('nogateport');
    const port = appPortOf(marker);
    const { BrokerClient } = await import('../../src/client/broker-client.js');
    const { connect } = await import('../../src/client/tunnel.js');
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    const say = async (line: string) => {
      const ch = await connect(broker, 'nogateport');
      let got = '';
      ch.on('data', (c: Buffer) => (got += c.toString()));
      ch.end(line);
      await new Promise((res) => ch.once('close', res));
      return got;
    };
    expect(await say('ping')).toBe('echo:ping');
    await say('restart');
    const { listenersOn } = await import('../../src/host/socket-owner.js');
    await until(async () => (await listenersOn(port)).length === 0, 5000, 'the listener to go');
    const m = await squat(port);
    await expect(say('secret')).rejects.toThrow(/closed the connection before answering the key/);
    expect(await r.exited).toBe(1);
    expect(r.err()).toMatch(
      new RegExp(`port_unavailable: port ${port} is held by UID ${mallory.uid} \\(bt-mallory\\)`),
    );
    expect(m.heard()).not.toMatch(/bytes/); // not the client's key
    broker.close();
    m.m.kill('SIGTERM');
  });
});

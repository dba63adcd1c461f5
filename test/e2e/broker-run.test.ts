/**
 * `broker run` (issue 5, TCP): an unmodified Python echo server behind the key gate, through the
 * reverse tunnel and with tunnel none; nothing without a valid key reaches the app; signals, exit
 * codes and unregistering; no secret on any command line.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { request as httpsRequest } from 'node:https';
import { connect as tlsConnect } from 'node:tls';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localhostLookup } from '../../src/client/broker-client.js';
import { BIN, Daemon, ROOT, issuedSecrets } from '../helpers/daemon.js';
import { loginWith } from '../helpers/login.js';
import { until } from '../helpers/wait.js';

/**
 * SIGTERM first: `broker run` passes it to its app and unregisters, where SIGKILL would orphan
 * the app (a test that failed midway used to leave its app running). SIGKILL after 3 s.
 */
async function stopAll(procs: ChildProcess[]): Promise<void> {
  await Promise.all(
    procs.map(async (p) => {
      if (p.exitCode !== null || p.signalCode !== null) return;
      const gone = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(timer);
    }),
  );
}

const ECHO = join(ROOT, 'examples', 'python-echo', 'echo_server.py');
const tmp = mkdtempSync(join(tmpdir(), 'broker-run-'));

function talk(port: number, payload: string, ms = 2500): Promise<string> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    let out = '';
    const done = () => {
      s.destroy();
      resolve(out);
    };
    const t = setTimeout(done, ms);
    s.on('data', (c) => {
      out += c.toString();
      if (out.includes('echo:') || out === 'DENIED\n') {
        clearTimeout(t);
        setTimeout(done, 50);
      }
    });
    s.on('error', done);
    s.on('close', () => {
      clearTimeout(t);
      resolve(out);
    });
    s.write(payload);
  });
}

describe('broker run', () => {
  let d: Daemon;
  let owner: string;
  const procs: ChildProcess[] = [];

  function run(name: string, args: string[], countFile: string, extra: string[] = []) {
    const p = spawn(
      process.execPath,
      [BIN, 'run', name, ...extra, '--', 'python3', ECHO, ...args, '--count-file', countFile],
      {
        env: d.env(),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    procs.push(p);
    return { p, exited, err: () => err };
  }
  const count = (f: string) => (existsSync(f) ? Number(readFileSync(f, 'utf8')) : 0);
  const status = async (name: string) =>
    (await d.api('GET', `/v1/services/${owner}/${name}`)).body.service?.status;
  const key = async (name: string, body: object = {}) =>
    (await d.api('POST', `/v1/services/${owner}/${name}/keys`, { body })).body as {
      key: string;
      keyId: string;
      service: { port: number };
    };

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    await stopAll(procs);
    await d.stop();
  });

  it('ok/tcp + ssh: the key gets through to the app; no key, a wrong key or a revoked key never reach it', async () => {
    const countFile = join(tmp, 'ssh.count');
    const r = run('echo-ssh', ['--port', '{app_port}'], countFile);
    await until(async () => (await status('echo-ssh')) === 'ready', 20_000, 'ready');
    const k = await key('echo-ssh');
    expect(await talk(k.service.port, `${k.key}\nping`)).toBe('OK\necho:ping');
    const reached = count(countFile);
    // SES-2: a connection open when its key is revoked ends within the gate's 5 s re-check.
    const k2 = await key('echo-ssh');
    const open = createConnection({ host: '127.0.0.1', port: k.service.port });
    open.on('error', () => undefined);
    open.write(`${k2.key}\nhold\n`);
    await new Promise((r) => open.once('data', r));
    const ended = new Promise((r) => open.once('close', r));
    const t0 = Date.now();
    await d.api('DELETE', `/v1/keys/${k2.keyId}`);
    await ended;
    expect(Date.now() - t0).toBeLessThan(6500);
    expect(await talk(k.service.port, 'bkk_' + 'w'.repeat(43) + '\nping')).toBe('DENIED\n');
    expect(await talk(k.service.port, 'no key at all\nping')).toBe('DENIED\n');
    await d.api('DELETE', `/v1/keys/${k.keyId}`);
    expect(await talk(k.service.port, `${k.key}\nping`)).toBe('DENIED\n');
    expect(count(countFile)).toBe(reached + 1); // the app saw none of them (but k2's own)
    // /proc/<pid>/cmdline of every process holds no token or key (FS-4).
    const cmdlines = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .map((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8');
        } catch {
          return '';
        }
      })
      .filter((c) => c.includes('echo_server.py') || c.includes(' run '));
    expect(cmdlines.length).toBeGreaterThan(0);
    for (const c of cmdlines) for (const s of issuedSecrets) expect(c.includes(s)).toBe(false);
    expect(cmdlines.join('\n')).not.toMatch(/bk[usk]_[A-Za-z0-9_-]{43}/);
    // SIGTERM stops the app and unregisters.
    r.p.kill('SIGTERM');
    expect(await r.exited).toBe(143);
    expect((await d.api('GET', `/v1/services/${owner}/echo-ssh`)).status).toBe(404);
  });

  it('ok/tcp + tunnel none: the gate listens on the service port; the app exiting by itself unregisters and passes its code on', async () => {
    const countFile = join(tmp, 'none.count');
    const r = run('echo-none', ['--port', '{app_port}'], countFile, ['--tunnel', 'none']);
    await until(async () => (await status('echo-none')) === 'ready', 20_000, 'ready');
    const k = await key('echo-none');
    expect(await talk(k.service.port, `${k.key}\nhello`)).toBe('OK\necho:hello');
    // The app dies on its own (kill -9): broker run notices, unregisters, exits 128+9.
    const app = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .find((p) => {
        try {
          const c = readFileSync(`/proc/${p}/cmdline`, 'utf8');
          return c.includes(countFile) && !c.includes('bin/broker'); // the app, not broker run itself
        } catch {
          return false;
        }
      });
    expect(app).toBeDefined();
    process.kill(Number(app), 'SIGKILL');
    expect(await r.exited).toBe(137);
    expect(r.err()).toMatch(/exited with 137; unregistering/);
    expect((await d.api('GET', `/v1/services/${owner}/echo-none`)).status).toBe(404);
  });

  it('ok/an app that exits with a status: broker run exits with the same status', async () => {
    const p = spawn(
      process.execPath,
      [BIN, 'run', 'short', '--', 'python3', '-c', 'import sys; sys.exit(3)'],
      { env: d.env(), stdio: 'ignore' },
    );
    procs.push(p);
    expect(await new Promise((r) => p.once('exit', r))).toBe(3);
    expect((await d.api('GET', `/v1/services/${owner}/short`)).status).toBe(404);
  });

  it('fail/a command that does not exist: one clear line, exit 127, nothing left registered', async () => {
    const p = spawn(process.execPath, [BIN, 'run', 'nocmd', '--', 'no-such-command-xyz'], {
      env: d.env(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    procs.push(p);
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    expect(await new Promise((r) => p.once('exit', r))).toBe(127);
    expect(err).toMatch(/^broker run: cannot start no-such-command-xyz: .*ENOENT/m);
    expect((await d.api('GET', `/v1/services/${owner}/nocmd`)).status).toBe(404);
  });

  it('ok/--no-gate: the app gets the service token in a 0600 file, never in its arguments or environment', async () => {
    const out = join(tmp, 'nogate.txt');
    const script = `import os,stat; p=os.environ['BROKER_TOKEN_FILE']; open(${JSON.stringify(out)},'w').write('%o %s %s' % (stat.S_IMODE(os.stat(p).st_mode), open(p).read().strip()[:4], 'BROKER_TOKEN' in os.environ))`;
    const p = spawn(
      process.execPath,
      [BIN, 'run', 'nogate', '--no-gate', '--', 'python3', '-c', script],
      { env: { ...d.env(), BROKER_TOKEN: d.adminToken }, stdio: 'ignore' },
    );
    procs.push(p);
    expect(await new Promise((r) => p.once('exit', r))).toBe(0);
    expect(readFileSync(out, 'utf8')).toBe('600 bks_ False');
  });
});

describe('broker run --mode https', () => {
  let d: Daemon;
  let owner: string;
  let caFile: string;
  const procs: ChildProcess[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'broker-run-https-'));

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    caFile = join(dir, 'ca.pem');
    writeFileSync(caFile, d.ca);
  });
  afterAll(async () => {
    await stopAll(procs);
    await d.stop();
  });

  function curl(args: string[]): Promise<string> {
    return new Promise((resolve) =>
      execFile('curl', ['-sS', '--cacert', caFile, ...args], (_e, out) => resolve(out)),
    );
  }

  it('ok/python -m http.server behind the HTTPS gate (reverse tunnel): key → 200, none → 401, login URL → cookie', async () => {
    writeFileSync(join(dir, 'hello.txt'), 'file content\n');
    const p = spawn(
      process.execPath,
      [
        BIN,
        'run',
        'files',
        '--mode',
        'https',
        '--',
        'python3',
        '-m',
        'http.server',
        '{app_port}',
        '--bind',
        '127.0.0.1',
      ],
      {
        env: d.env(),
        cwd: dir,
        stdio: 'ignore',
      },
    );
    procs.push(p);
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/files`)).body.service?.status === 'ready',
      20_000,
      'ready',
    );
    const { key, service } = (await d.api('POST', `/v1/services/${owner}/files/keys`, { body: {} }))
      .body;
    const base = `https://${service.hostname}:${service.port}`;
    expect(await curl(['-H', `Authorization: Bearer ${key}`, `${base}/hello.txt`])).toBe(
      'file content\n',
    );
    expect(await curl(['-o', '/dev/null', '-w', '%{http_code}', `${base}/hello.txt`])).toBe('401');
    // For a tunnelled service `broker open` opens a local tunnel and stays in the foreground.
    const open = spawn(process.execPath, [BIN, 'open', 'files', '--json'], {
      env: d.env(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    procs.push(open);
    let out = '';
    open.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await until(() => out.trim().endsWith('}'), 15_000, 'broker open');
    const url = JSON.parse(out).url as string;
    expect(url).toMatch(/^https:\/\/files\.[a-z0-9-]+\.localhost:\d+\/\?broker_key=bkk_/);
    const login = await loginWith(url, caFile);
    expect(login.attributes).toBe('HttpOnly; Secure; SameSite=Strict; Path=/');
    expect(await curl(['-H', `Cookie: ${login.cookie}`, `${login.origin}/hello.txt`])).toBe(
      'file content\n',
    );
    open.kill('SIGTERM');
    p.kill('SIGTERM');
  });

  it('ok/a WebSocket upgrade passes the gate with a key and is refused without', async () => {
    const p = spawn(
      process.execPath,
      [
        BIN,
        'run',
        'wsapp',
        '--mode',
        'https',
        '--tunnel',
        'none',
        '--',
        process.execPath,
        join(ROOT, 'test', 'fixtures', 'ws-app.mjs'),
        '{app_port}',
      ],
      {
        env: d.env(),
        stdio: 'ignore',
      },
    );
    procs.push(p);
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/wsapp`)).body.service?.status === 'ready',
      20_000,
      'ready',
    );
    const { key, service } = (await d.api('POST', `/v1/services/${owner}/wsapp/keys`, { body: {} }))
      .body;
    const upgrade = (auth?: string) =>
      new Promise<string>((resolve, reject) => {
        const req = httpsRequest(`https://${service.hostname}:${service.port}/ws`, {
          ca: d.ca,
          lookup: localhostLookup,
          headers: {
            Connection: 'Upgrade',
            Upgrade: 'websocket',
            ...(auth ? { Authorization: `Bearer ${auth}` } : {}),
          },
        });
        req.on('upgrade', (_res, socket) => {
          socket.once('data', (c) => {
            socket.destroy();
            resolve(`101 ${c}`);
          });
          socket.write('ping');
        });
        req.on('response', (res) => {
          res.resume();
          resolve(String(res.statusCode));
        });
        req.on('error', reject);
        req.end();
      });
    expect(await upgrade()).toBe('401');
    expect(await upgrade(key)).toBe('101 ws-echo:ping');
    expect(
      await curl([
        '-H',
        `Authorization: Bearer ${key}`,
        `https://${service.hostname}:${service.port}/x?y=1`,
      ]),
    ).toBe('app saw /x?y=1');
    p.kill('SIGTERM');
  });

  it('ok/a client that leaves mid-response, or right after asking for an upgrade, frees the app', async () => {
    // pipe() passed on neither: the app's response stayed open, blocked, forever; an upgrade
    // whose client left during the verify still got an app connection, never closed.
    const p = spawn(
      process.execPath,
      [BIN, 'run', 'leaver', '--mode', 'https', '--tunnel', 'none', '--'].concat([
        process.execPath,
        join(ROOT, 'test', 'fixtures', 'ws-app.mjs'),
        '{app_port}',
      ]),
      { env: d.env(), stdio: ['ignore', 'pipe', 'ignore'] },
    );
    procs.push(p);
    const lines: string[] = [];
    p.stdout!.on('data', (c: Buffer) => lines.push(...c.toString().trim().split('\n')));
    const conns = () =>
      Number(
        lines
          .filter((l) => l.startsWith('conns '))
          .pop()
          ?.slice(6) ?? 0,
      );
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/leaver`)).body.service?.status === 'ready',
      20_000,
      'ready',
    );
    const { key, service } = (
      await d.api('POST', `/v1/services/${owner}/leaver/keys`, { body: { ttlSeconds: 600 } })
    ).body;
    await until(() => conns() === 0, 5000, 'the readiness probe to close');
    // Mid-response: read 1 MiB of an endless body, then hang up.
    await new Promise<void>((resolve, reject) => {
      const req = httpsRequest(`https://${service.hostname}:${service.port}/inf`, {
        ca: d.ca,
        lookup: localhostLookup,
        agent: false,
        headers: { Authorization: `Bearer ${key}` },
      });
      req.on('response', (res) => {
        let n = 0;
        res.on('data', (c: Buffer) => {
          if ((n += c.length) < 1 << 20) return;
          req.destroy();
          resolve();
        });
      });
      req.on('error', (e) => (req.destroyed ? undefined : reject(e)));
      req.end();
    });
    await until(
      () => lines.includes('closed /inf finished=false'),
      5000,
      "the app's response to close",
    );
    await until(() => conns() === 0, 5000, "the app's connection to close");
    // The other way round: an app that dies mid-response leaves curl with an error, not a
    // truncated 200 it cannot tell from a whole one, nor a transfer that never ends.
    const died = await new Promise<{ code: number | null; bytes: string }>((resolve) =>
      execFile(
        'curl',
        [
          '-sS',
          '--max-time',
          '10',
          '--cacert',
          caFile,
          '-H',
          `Authorization: Bearer ${key}`,
        ].concat([
          '-o',
          '/dev/null',
          '-w',
          '%{size_download}',
          `https://${service.hostname}:${service.port}/die`,
        ]),
        (e, out) => resolve({ code: e ? Number(e.code) : 0, bytes: out }),
      ),
    );
    expect(died.code).not.toBe(0);
    expect(died.code).not.toBe(28); // not a timeout: the failure reached the client
    expect(Number(died.bytes)).toBeLessThan(10 << 20);
    // Upgrades whose client is gone before the gate has verified the key.
    for (let i = 0; i < 5; i++) {
      const s = tlsConnect({
        host: '127.0.0.1',
        port: service.port,
        ca: d.ca,
        servername: service.hostname,
      });
      s.on('error', () => {});
      await new Promise((resolve) => s.once('secureConnect', resolve));
      s.write(
        `GET /ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n`,
      );
      setImmediate(() => s.destroy());
      await new Promise((r) => setTimeout(r, 100));
    }
    await until(() => conns() === 0, 5000, 'every app connection to close');
    p.kill('SIGTERM');
  });
});

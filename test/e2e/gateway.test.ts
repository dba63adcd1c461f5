/**
 * Issue 4 end to end: the SSH gateway with the SDK's reverse tunnel, the CLI's tunnel and
 * connect, and stock OpenSSH (`ssh -N -L`, `ssh -N -R`, ProxyCommand) — real processes only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { connect } from '../../src/client/tunnel.js';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

const tmp = mkdtempSync(join(tmpdir(), 'broker-gw-'));
const askpass = join(tmp, 'askpass');
writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$BROKER_SSH_PASSWORD"\n');
chmodSync(askpass, 0o700);

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

/** Connect, optionally present a key, send `msg`, return what comes back within `ms`. */
function exchange(port: number, msg: string, key?: string, ms = 3000): Promise<string> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    let out = '';
    const end = () => {
      s.destroy();
      resolve(out);
    };
    const timer = setTimeout(end, ms);
    s.on('data', (c) => {
      out += c.toString();
      if (out.includes('echo:')) {
        clearTimeout(timer);
        setTimeout(end, 50);
      }
    });
    s.on('error', end);
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.write(key ? `${key}\n${msg}` : msg);
  });
}

describe('SSH gateway end to end', () => {
  let d: Daemon;
  let apiPort: number;
  let sshPort: number;
  let caFile: string;
  let owner: string;
  let knownHosts: string;
  const children: ChildProcess[] = [];
  const servers: Server[] = [];

  const userEnv = () => ({ BROKER_URL: d.url, BROKER_CA: caFile, BROKER_TOKEN: d.adminToken });
  const sshBase = () => [
    '-N',
    '-p',
    String(sshPort),
    '-o',
    `UserKnownHostsFile=${knownHosts}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'PreferredAuthentications=password',
    '-o',
    'PubkeyAuthentication=no',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'BatchMode=no',
  ];
  function stockSsh(args: string[], password: string): ChildProcess {
    const c = spawn('ssh', args, {
      env: {
        PATH: process.env.PATH,
        HOME: tmp,
        BROKER_SSH_PASSWORD: password,
        SSH_ASKPASS: askpass,
        SSH_ASKPASS_REQUIRE: 'force',
        DISPLAY: 'none',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    children.push(c);
    return c;
  }
  function sdkServer(
    name: string,
    extraEnv: Record<string, string> = {},
  ): { proc: ChildProcess; lines: string[] } {
    const proc = spawn(process.execPath, [join(ROOT, 'test', 'fixtures', 'sdk-server.mjs')], {
      env: { PATH: process.env.PATH, HOME: tmp, NAME: name, ...userEnv(), ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const lines: string[] = [];
    proc.stdout!.on('data', (c: Buffer) => lines.push(...c.toString().trim().split('\n')));
    children.push(proc);
    return { proc, lines };
  } /** An SDK server that has reported `state ready`. */
  async function readySdkServer(
    name: string,
    extraEnv: Record<string, string>,
  ): Promise<{ proc: ChildProcess; lines: string[] }> {
    const srv = sdkServer(name, extraEnv);
    await until(() => srv.lines.includes('state ready'), 15_000, `${name} ready`);
    return srv;
  }

  /** `broker tunnel NAME --inject-key --json` on a free local port, once it says where. */
  async function brokerTunnel(
    name: string,
  ): Promise<{ proc: ChildProcess; port: number; printed: { localPort: number } }> {
    const port = await freePort();
    const proc = spawn(
      process.execPath,
      [BIN, 'tunnel', name, '--local-port', String(port), '--inject-key', '--json'],
      {
        env: { PATH: process.env.PATH, HOME: tmp, ...userEnv() },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    children.push(proc);
    let out = '';
    proc.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await until(() => out.includes('localPort'), 10_000, 'the tunnel');
    return { proc, port, printed: JSON.parse(out) };
  }

  beforeAll(async () => {
    apiPort = await freePort();
    sshPort = await freePort();
    d = await Daemon.start({
      extraArgs: ['--listen', `127.0.0.1:${apiPort}`, '--ssh-listen', `127.0.0.1:${sshPort}`],
    });
    caFile = join(tmp, 'ca.pem');
    writeFileSync(caFile, d.ca);
    const health = await d.api('GET', '/v1/health', { token: null });
    expect(health.body.gateway).toMatchObject({
      port: sshPort,
      fingerprint: expect.stringMatching(/^SHA256:/),
    });
    knownHosts = join(tmp, 'known_hosts');
    writeFileSync(knownHosts, `[127.0.0.1]:${sshPort} ${health.body.gateway.hostKey}\n`);
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });

  afterAll(async () => {
    for (const c of children) {
      try {
        if (c.pid) process.kill(c.detached ? -c.pid : c.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const s of servers) s.close();
    await d?.stop();
  });

  it('ok/SDK reverse tunnel → ready; broker connect carries data after the key handshake', async () => {
    const { lines } = sdkServer('sdkecho');
    await until(() => lines.includes('state ready'), 15_000, 'the SDK tunnel');
    expect((await d.api('GET', `/v1/services/${owner}/sdkecho`)).body.service.status).toBe('ready');
    const r = await d.cli(['connect', 'sdkecho'], { env: userEnv(), input: 'hello' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe(`echo:hello|${owner}`);
  });

  it('ok/SDK connect() returns a stream after the handshake', async () => {
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    const s = await connect(broker, 'sdkecho');
    const got = await new Promise<string>((resolve) => {
      s.once('data', (c) => resolve(c.toString()));
      s.write('x');
    });
    s.destroy();
    broker.close();
    expect(got).toBe(`echo:x|${owner}`);
  });

  it('ok/half-close: a client that ends right after writing still gets its answer (×20)', async () => {
    // Regression: ssh2 closed server-side channels on EOF, so the echo was lost ~29 times in 30.
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    for (let i = 0; i < 20; i++) {
      const s = await connect(broker, 'sdkecho');
      const out = await new Promise<string>((resolve) => {
        let o = '';
        s.on('data', (c) => (o += c));
        s.once('close', () => resolve(o));
        s.end(`m${i}`);
      });
      expect(out).toBe(`echo:m${i}|${owner}`);
    }
    broker.close();
  });

  it('ok/broker tunnel --inject-key: a key-unaware client just connects', async () => {
    const t = await brokerTunnel('sdkecho');
    expect(t.printed.localPort).toBe(t.port);
    expect(await exchange(t.port, 'plain')).toBe(`echo:plain|${owner}`);
    t.proc.kill('SIGTERM');
  });

  it('ok/bulk, then half-close: 24 MiB each way arrive whole and in order, through broker tunnel and through the published port', async () => {
    // The SSH windows are 2 MiB, so every channel stalls and resumes a dozen times, and the
    // writes that each WINDOW_ADJUST releases go out from ssh2's read path. The client shuts down its
    // sending side right after the last byte, while most of the echo is still on its way: no
    // socket on the path may end its own writable side then (splice sets allowHalfOpen; without
    // it 8–20 MiB came back).
    const srv = await readySdkServer('sdkbulk', { MODE: 'bytes' });
    const t = await brokerTunnel('sdkbulk');
    const data = randomBytes(24 * 1024 * 1024);
    const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
    const echo = (port: number, key?: string) =>
      new Promise<Buffer>((resolve, reject) => {
        const s = createConnection({ host: '127.0.0.1', port });
        const parts: Buffer[] = [];
        s.on('data', (c: Buffer) => parts.push(c));
        s.on('end', () => resolve(Buffer.concat(parts)));
        s.on('error', reject);
        if (key) s.write(`${key}\n`);
        // Uneven slices, then the half-close.
        let off = 0;
        const write = () => {
          while (off < data.length) {
            const n = Math.min(data.length - off, 1000 + ((off * 7919) % 300_000));
            const ok = s.write(data.subarray(off, (off += n)));
            if (!ok) return void s.once('drain', write);
          }
          s.end();
        };
        write();
      });
    const viaTunnel = await echo(t.port);
    expect(viaTunnel.length).toBe(data.length);
    expect(sha(viaTunnel)).toBe(sha(data));
    const svc = (await d.api('GET', `/v1/services/${owner}/sdkbulk`)).body.service;
    const { key } = (await d.api('POST', `/v1/services/${owner}/sdkbulk/keys`, { body: {} })).body;
    const viaPort = await echo(svc.port, key);
    expect(viaPort.subarray(0, 3).toString()).toBe('OK\n');
    expect(viaPort.length - 3).toBe(data.length);
    expect(sha(viaPort.subarray(3))).toBe(sha(data));
    t.proc.kill('SIGTERM');
    srv.proc.kill('SIGTERM');
  }, 90_000);

  it('ok/the server answers and shuts down its side first: all 8 MiB the client sends afterwards still arrive (SDK connect())', async () => {
    // The gateway used to destroy the upstream channel together with the client's SSH
    // connection, which the SDK ends as soon as its channel closes — while the tail of the upload
    // was still queued for the server's window: 5.3–7.4 of 8.4 MB arrived, in half the runs.
    const srv = await readySdkServer('sdkfirst', { MODE: 'answer-first' });
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} });
    const data = randomBytes(8 * 1024 * 1024);
    for (let i = 0; i < 3; i++) {
      const s = await connect(broker, 'sdkfirst');
      let answer = '';
      s.on('data', (c: Buffer) => (answer += c.toString()));
      await until(() => answer === 'hello\n', 5000, 'the answer');
      s.end(data);
      await new Promise((resolve) => s.once('close', resolve));
      const line = `rx ${data.length} ${createHash('sha256').update(data).digest('hex')}`;
      await until(
        () => srv.lines.filter((l) => l.startsWith('rx ')).length === i + 1,
        10_000,
        'rx',
      );
      expect(srv.lines.filter((l) => l.startsWith('rx '))[i]).toBe(line);
    }
    broker.close();
    srv.proc.kill('SIGTERM');
  }, 60_000);

  it('fail/a server that resets mid-upload: the client is cut off within seconds, and no gateway channel stays open', async () => {
    // A closed channel used to count as a clean half-close: the client saw EOF, its upload hung
    // forever, and the gateway's channel (and its cap) leaked.
    const open = async () => {
      const text = (await d.api<string>('GET', '/metrics', { token: null })).body;
      return Number(/^broker_gateway_channels_open (\d+)/m.exec(text)?.[1]);
    };
    const before = await open();
    const srv = await readySdkServer('sdkrst', { MODE: 'rst-after' });
    const t = await brokerTunnel('sdkrst');
    const ended = await new Promise<{ sent: number; how: string }>((resolve) => {
      const s = createConnection({ host: '127.0.0.1', port: t.port });
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const timer = setTimeout(() => resolve({ sent, how: 'still open after 10 s' }), 10_000);
      s.on('error', () => {});
      s.on('close', () => {
        clearTimeout(timer);
        resolve({ sent, how: 'closed' });
      });
      const write = () => {
        while (sent < 64 * 1024 * 1024 && !s.destroyed) {
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', write);
        }
      };
      write();
    });
    expect(ended.how).toBe('closed');
    expect(ended.sent).toBeLessThan(64 * 1024 * 1024);
    await until(async () => (await open()) === before, 5000, 'the channels to close');
    t.proc.kill('SIGKILL');
    srv.proc.kill('SIGTERM');
  }, 60_000);

  it('ok/broker connect whose stdout reader goes away stops quietly (no EPIPE crash)', async () => {
    const srv = await readySdkServer('sdkpipe', { MODE: 'bytes' });
    const c = spawn(process.execPath, [BIN, 'connect', 'sdkpipe'], {
      env: { PATH: process.env.PATH, HOME: tmp, ...userEnv() },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    children.push(c);
    let err = '';
    c.stderr!.on('data', (x: Buffer) => (err += x.toString()));
    c.stdin!.on('error', () => {});
    const exited = new Promise<number | null>((resolve) => c.once('exit', resolve));
    // Keep the echo coming; drop stdout after its first bytes, like `broker connect … | head -c1`.
    const chunk = Buffer.alloc(256 * 1024, 97);
    const feed = setInterval(() => c.stdin!.writable && c.stdin!.write(chunk), 20);
    await new Promise((resolve) => c.stdout!.once('data', resolve));
    c.stdout!.destroy();
    const code = await Promise.race([
      exited,
      new Promise((r) => setTimeout(() => r('hung'), 10_000)),
    ]);
    clearInterval(feed);
    expect(code).toBe(0);
    expect(err).not.toMatch(/EPIPE|Error|at /);
    srv.proc.kill('SIGTERM');
  }, 30_000);

  it('ok/stock ssh -N -L with a user token as password; data flows after the key handshake', async () => {
    const reg = await d.api('GET', `/v1/services/${owner}/sdkecho`);
    const port = reg.body.service.port;
    const lp = await freePort();
    stockSsh([...sshBase(), '-L', `${lp}:127.0.0.1:${port}`, `${owner}@127.0.0.1`], d.adminToken);
    const { key } = (await d.api('POST', `/v1/services/${owner}/sdkecho/keys`, { body: {} })).body;
    await until(
      async () => (await exchange(lp, 'probe', key, 500)).includes('echo:'),
      15_000,
      'ssh -L',
    );
    expect(await exchange(lp, 'via-openssh', key)).toBe(`OK\necho:via-openssh|${owner}`);
    expect(await exchange(lp, 'no-key', 'bkk_' + 'n'.repeat(43))).toBe('DENIED\n');
  });

  it('ok/stock ssh -N -R with a service token publishes a server; fail/ with a user token it is refused', async () => {
    // The app behind the reverse tunnel is a gated echo server written with the SDK's gate().
    const reg = await d.api('POST', '/v1/services', { body: { name: 'stockr' } });
    const { serviceToken, service } = reg.body;
    const svcClient = new BrokerClient({ url: d.url, ca: d.ca, token: serviceToken, env: {} });
    const { gate } = await import('../../src/server-sdk/gate.js');
    const app = createServer(
      gate((s) => s.on('data', (c) => s.write(`echo:${c}`)), {
        verify: (k) => svcClient.verify(k),
      }),
    );
    servers.push(app);
    await new Promise<void>((r) => app.listen(0, '127.0.0.1', r));
    const appPort = (app.address() as { port: number }).port;
    const bad = stockSsh(
      [...sshBase(), '-R', `0:127.0.0.1:${appPort}`, `${owner}@127.0.0.1`],
      d.adminToken,
    );
    const badExit = await new Promise<number | null>((r) => bad.once('exit', r));
    expect(badExit).not.toBe(0);
    const r = stockSsh(
      [...sshBase(), '-R', `0:127.0.0.1:${appPort}`, `${owner}@127.0.0.1`],
      serviceToken,
    );
    let err = '';
    r.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/stockr`)).body.service.status === 'ready',
      15_000,
      'ssh -R',
    );
    expect(err).toContain(`Allocated port ${service.port}`);
    const { key } = (await d.api('POST', `/v1/services/${owner}/stockr/keys`, { body: {} })).body;
    // On the broker host the service is published on 127.0.0.1:<port> and still gated.
    expect(await exchange(service.port, 'r1', key)).toBe('OK\necho:r1');
    expect(await exchange(service.port, 'r2', 'bkk_' + 'w'.repeat(43))).toBe('DENIED\n');
    r.kill('SIGTERM');
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/stockr`)).body.service.status === 'offline',
      5000,
      'offline',
    );
    svcClient.close();
  });

  it('ok/publickey auth with a key registered by `broker user add-key`; fail/ wrong principal, private key, duplicate', async () => {
    const keyFile = join(tmp, 'id_ed25519');
    await new Promise<void>((resolve, reject) =>
      spawn('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test key', '-f', keyFile]).once(
        'exit',
        (c) => (c === 0 ? resolve() : reject(new Error(`ssh-keygen ${c}`))),
      ),
    );
    const add = await d.cli(['user', 'add-key', owner, `${keyFile}.pub`], { env: userEnv() });
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout).toMatch(/^added SHA256:/);
    expect(
      (await d.cli(['user', 'add-key', owner, `${keyFile}.pub`], { env: userEnv() })).stderr,
    ).toMatch(/^broker: ssh_key_exists: /);
    expect((await d.cli(['user', 'add-key', owner, keyFile], { env: userEnv() })).stderr).toMatch(
      /private key/,
    );
    const listed = JSON.parse(
      (await d.cli(['user', 'keys', owner, '--json'], { env: userEnv() })).stdout,
    ).keys;
    expect(listed).toHaveLength(1);
    const port = (await d.api('GET', `/v1/services/${owner}/sdkecho`)).body.service.port;
    const keyAuth = (user: string, lp: number) => {
      const c = spawn(
        'ssh',
        [
          '-N',
          '-p',
          String(sshPort),
          '-i',
          keyFile,
          '-o',
          'IdentitiesOnly=yes',
          '-o',
          `UserKnownHostsFile=${knownHosts}`,
          '-o',
          'StrictHostKeyChecking=yes',
          '-o',
          'PreferredAuthentications=publickey',
          '-o',
          'BatchMode=yes',
          '-o',
          'ExitOnForwardFailure=yes',
          '-L',
          `${lp}:127.0.0.1:${port}`,
          `${user}@127.0.0.1`,
        ],
        {
          env: { PATH: process.env.PATH, HOME: tmp },
          stdio: ['ignore', 'pipe', 'pipe'],
          detached: true,
        },
      );
      children.push(c);
      return c;
    };
    const other = await d.addUser('keyless');
    expect(other).toMatch(/^bku_/);
    const wrong = keyAuth('keyless', await freePort());
    expect(await new Promise((r) => wrong.once('exit', r))).not.toBe(0);
    const lp = await freePort();
    keyAuth(owner, lp);
    const { key } = (await d.api('POST', `/v1/services/${owner}/sdkecho/keys`, { body: {} })).body;
    await until(
      async () => (await exchange(lp, 'probe', key, 500)).includes('echo:'),
      15_000,
      'ssh -i',
    );
    expect(await exchange(lp, 'by-key', key)).toBe(`OK\necho:by-key|${owner}`);
    const rm = await d.cli(['user', 'remove-key', owner, listed[0].fingerprint], {
      env: userEnv(),
    });
    expect(rm.code, rm.stderr).toBe(0);
  });

  it('ok/ProxyCommand="broker connect NAME" carries an SSH session', async () => {
    // The service is an SSH server (here: the broker's own gateway behind a gate), reached with
    // stock ssh whose transport is `broker connect`.
    const reg = await d.api('POST', '/v1/services', { body: { name: 'sshsvc' } });
    const { serviceToken } = reg.body;
    const svcClient = new BrokerClient({ url: d.url, ca: d.ca, token: serviceToken, env: {} });
    const { gate } = await import('../../src/server-sdk/gate.js');
    const front = createServer(
      gate(
        (s) => {
          const up = createConnection({ host: '127.0.0.1', port: sshPort });
          s.pipe(up).pipe(s);
          up.on('error', () => s.destroy());
        },
        { verify: (k) => svcClient.verify(k) },
      ),
    );
    servers.push(front);
    await new Promise<void>((r) => front.listen(0, '127.0.0.1', r));
    const { registerService } = await import('../../src/server-sdk/service.js');
    const svc = await registerService({
      broker: new BrokerClient({ url: d.url, ca: d.ca, token: d.adminToken, env: {} }),
      name: 'sshsvc',
      existing: { service: reg.body.service, serviceToken },
      target: { port: (front.address() as { port: number }).port },
    });
    await until(() => svc.state === 'ready', 10_000, 'sshsvc tunnel');
    const sdk = await d.api('GET', `/v1/services/${owner}/sdkecho`);
    const lp = await freePort();
    const proxy = `${process.execPath} ${BIN} connect sshsvc`;
    const env = { ...userEnv() };
    const c = spawn(
      'ssh',
      [
        ...sshBase(),
        '-o',
        `ProxyCommand=${proxy}`,
        '-o',
        `HostKeyAlias=[127.0.0.1]:${sshPort}`,
        '-L',
        `${lp}:127.0.0.1:${sdk.body.service.port}`,
        `${owner}@inner`,
      ],
      {
        env: {
          PATH: process.env.PATH,
          HOME: tmp,
          BROKER_SSH_PASSWORD: d.adminToken,
          SSH_ASKPASS: askpass,
          SSH_ASKPASS_REQUIRE: 'force',
          DISPLAY: 'none',
          ...env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      },
    );
    children.push(c);
    const { key } = (await d.api('POST', `/v1/services/${owner}/sdkecho/keys`, { body: {} })).body;
    await until(
      async () => (await exchange(lp, 'probe', key, 500)).includes('echo:'),
      20_000,
      'ssh over ProxyCommand',
    );
    expect(await exchange(lp, 'proxied', key)).toBe(`OK\necho:proxied|${owner}`);
    await svc.close();
    svcClient.close();
  });

  it('DUR-4: the SDK reattaches after a broker restart; kill -9 of the server → offline', async () => {
    const { proc, lines } = sdkServer('survivor');
    await until(() => lines.includes('state ready'), 15_000, 'first attach');
    await d.stop();
    await d.launch();
    // After the restart the service is offline until its tunnel reattaches, then ready again.
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/survivor`)).body.service?.status === 'ready',
      30_000,
      'reattach',
    );
    expect(lines.filter((l) => l === 'state ready').length).toBeGreaterThanOrEqual(2);
    const r = await d.cli(['connect', 'survivor'], {
      env: { ...userEnv(), BROKER_TOKEN: d.adminToken },
      input: 'again',
    });
    expect(r.stdout).toBe(`echo:again|${owner}`);
    proc.kill('SIGKILL');
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/survivor`)).body.service.status === 'offline',
      10_000,
      'offline',
    );
  });
});

/**
 * The original LLNL flow end to end with real parts: a real daemon, the CLI spawned through
 * bin/broker, a TCP server behind the SDK's gate() that verifies the key line with the broker,
 * and raw sockets as clients (DESIGN §7).
 */
import { createConnection, createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { gate } from '../../src/server-sdk/gate.js';
import { Daemon, findLeaks } from '../helpers/daemon.js';

/** Connect, send `payload`, collect everything until the server closes or `ms` passes. */
function talk(port: number, payload: string, ms = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = createConnection({ host: '127.0.0.1', port });
    let out = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve(out);
    }, ms);
    s.on('data', (c) => {
      out += c.toString();
      if (out.includes('ECHO:ping')) {
        clearTimeout(timer);
        s.destroy();
        resolve(out);
      }
    });
    s.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    s.on('error', reject);
    s.write(payload);
  });
}

describe('four verbs end to end (tcp, tunnel none)', () => {
  let d: Daemon;
  let env: Record<string, string>;
  let server: Server;
  let accepted = 0;
  let serviceToken: string;
  let port: number;

  beforeAll(async () => {
    d = await Daemon.start();
    // register (server side), in the job-script form
    const reg = await d.cli(['register', 'viz', '--tunnel', 'none', '--format', 'env']);
    expect(reg.code, reg.stderr).toBe(0);
    env = Object.fromEntries(
      reg.stdout
        .trim()
        .split('\n')
        .map((l) => /^export (\w+)=(.*)$/.exec(l)!.slice(1, 3) as [string, string])
        .map(([k, v]) => [k, v.replace(/^'(.*)'$/, '$1')]),
    );
    serviceToken = env.BROKER_TOKEN!;
    port = Number(env.BROKER_PORT);
    expect(serviceToken).toMatch(/^bks_[A-Za-z0-9_-]{43}$/);
    // the server: gate() in front of an echo handler, verifying with the service token
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: serviceToken, env: {} });
    server = createServer(
      gate(
        (socket, who) => {
          accepted++;
          socket.on('data', (c) => socket.write(`ECHO:${c.toString()}|${who.principal}`));
        },
        { verify: (k) => broker.verify(k) },
      ),
    );
    await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
    const ready = await d.cli(['ready', 'viz', '--json'], { env: { BROKER_TOKEN: serviceToken } });
    expect(ready.code, ready.stderr).toBe(0);
    expect(JSON.parse(ready.stdout).service.status).toBe('ready');
  });

  afterAll(async () => {
    server?.close();
    await d?.stop();
  });

  it('ok/right key: load → present → OK and data flows', async () => {
    const load = await d.cli(['load', 'viz', '--json']);
    expect(load.code, load.stderr).toBe(0);
    const res = JSON.parse(load.stdout);
    expect(res.key).toMatch(/^bkk_[A-Za-z0-9_-]{43}$/);
    expect(res.connect.port).toBe(port);
    expect(res.connect.ssh).toContain(`-L ${port}:`);
    const before = accepted;
    const out = await talk(port, `${res.key}\nping`);
    expect(out.startsWith('OK\n')).toBe(true);
    expect(out).toContain('ECHO:ping');
    expect(accepted).toBe(before + 1);
  });

  it('fail/wrong key → DENIED and the app never sees the connection (LOC-1)', async () => {
    const before = accepted;
    const out = await talk(port, 'bkk_' + 'x'.repeat(43) + '\nping');
    expect(out).toBe('DENIED\n');
    expect(await talk(port, 'not a key at all\nping')).toBe('DENIED\n');
    expect(accepted).toBe(before);
  });

  it('fail/a key line over 512 bytes → DENIED', async () => {
    const before = accepted;
    expect(await talk(port, 'a'.repeat(600))).toBe('DENIED\n');
    expect(accepted).toBe(before);
  });

  it('verify (CLI): key on stdin → exit 0 valid; wrong key → exit 1; JSON shape', async () => {
    const load = JSON.parse((await d.cli(['load', 'viz', '--json'])).stdout);
    const ok = await d.cli(['verify', 'viz', '--json'], {
      env: { BROKER_TOKEN: serviceToken },
      input: load.key + '\n',
    });
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ valid: true, keyId: load.keyId });
    const bad = await d.cli(['verify', 'viz'], {
      env: { BROKER_TOKEN: serviceToken },
      input: 'bkk_' + 'y'.repeat(43),
    });
    expect(bad.code).toBe(1);
    expect(bad.stdout.trim()).toBe('invalid');
  });

  it('--once keys work for exactly one connection', async () => {
    const load = JSON.parse((await d.cli(['load', 'viz', '--once', '--json'])).stdout);
    expect(load.once).toBe(true);
    expect(await talk(port, `${load.key}\nping`)).toContain('OK\n');
    expect(await talk(port, `${load.key}\nping`)).toBe('DENIED\n');
  });

  it('query lists the service; unregister revokes its keys at once', async () => {
    const load = JSON.parse((await d.cli(['load', 'viz', '--json'])).stdout);
    const q = await d.cli(['query', '--json']);
    expect(JSON.parse(q.stdout).services.map((s: { name: string }) => s.name)).toContain('viz');
    const un = await d.cli(['unregister', 'viz']);
    expect(un.code, un.stderr).toBe(0);
    expect(await talk(port, `${load.key}\nping`)).toBe('DENIED\n');
    const gone = await d.cli(['load', 'viz']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/^broker: service_not_found: /);
    expect(gone.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('no secret reached the logs or the database (KEY-2, LOG-1)', async () => {
    await d.stop();
    const leaks = findLeaks([`${d.dataDir}/broker.db`, `${d.dataDir}/broker.db-wal`, d.logPath]);
    expect(leaks).toEqual([]);
  });
});

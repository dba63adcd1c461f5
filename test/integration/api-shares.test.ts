/**
 * NET-3 / LOC-5 as the attacker (found by a penetration test of issue 11): the HTTPS API had one
 * connection cap for everybody (`maxConnections`, 1024). bt-mallory, a second real Unix user with
 * *no broker account at all*, opened 1024 TLS connections on loopback and kept each alive with a
 * `GET /v1/health` every 3 s; every new connection was dropped, so no user could load a key and
 * every gate's verify failed. Connections are now attributed to their local Unix user and each
 * holds at most `maxConnectionsPerSource` (128); at the overall cap a newcomer takes the oldest
 * connection of whoever holds the most.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon } from '../helpers/daemon.js';
import { announceSkip, killAs, spawnNodeAs, unixUser, type UnixUser } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('LOC-5 API connection shares (a second Unix user is the attacker)');

const ECHO = `import net from 'node:net';
net.createServer((s) => s.on('data', (c) => s.write('echo:' + c))).listen(process.argv[2]);`;

/**
 * mallory: 1100 TLS connections (the cap is 1024), each asking for /v1/health every 3 s, and a
 * steady trickle of new ones that takes any slot freed by someone else.
 */
const flood = (host: string, port: number) => `import tls from 'node:tls';
const REQ = 'GET /v1/health HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n';
let open = 0;
const socks = [];
const one = () => new Promise((resolve) => {
  const s = tls.connect({ host: '${host}', port: ${port}, rejectUnauthorized: false, servername: 'localhost' });
  let up = false;
  s.on('secureConnect', () => { up = true; open++; s.write(REQ); resolve(); });
  s.on('data', () => {});
  s.on('error', () => {});
  s.on('close', () => { if (up) open--; resolve(); });
  socks.push(s);
});
for (let i = 0; i < 1100; i += 50) await Promise.all(Array.from({ length: 50 }, one));
// Any slot that frees up (someone's idle socket closed) is taken again at once.
let trying = 0;
setInterval(() => { if (trying < 10) { trying++; void one().then(() => trying--); } }, 5);
setInterval(() => {
  for (let i = socks.length - 1; i >= 0; i--) if (socks[i].destroyed) socks.splice(i, 1);
  for (const s of socks) s.write(REQ);
}, 3000);
setInterval(() => console.log(JSON.stringify({ open })), 500);`;

describe.skipIf(skip)('NET-3 / LOC-5: one local user cannot hold every API connection', () => {
  let d: Daemon;
  let owner: string;
  let mallory: UnixUser;
  let dir: string;
  const procs: ChildProcess[] = [];

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    dir = mkdtempSync(join(tmpdir(), 'attack-conncap-'));
    writeFileSync(join(dir, 'echo.mjs'), ECHO);
  });
  afterAll(async () => {
    for (const p of procs) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      if (p.spawnargs[0] === 'runuser') killAs(p);
      else p.kill('SIGTERM');
    }
    await new Promise((r) => setTimeout(r, 1000));
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  });

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
      setTimeout(() => s.destroy(), 5000);
    });

  it('fail/NET-3 while mallory floods, the owner still loads keys and reaches her own service', async () => {
    // The victim's gated service (broker run, tunnel none so the test talks to its port).
    const run = spawn(
      process.execPath,
      [BIN, 'run', 'echo', '--tunnel', 'none', '--'].concat([
        process.execPath,
        join(dir, 'echo.mjs'),
        '{app_socket}',
      ]),
      { env: d.env(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    procs.push(run);
    await until(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/echo`)).body.service?.status === 'ready',
      20_000,
      'echo ready',
    );
    const k = (await d.api('POST', `/v1/services/${owner}/echo/keys`, { body: {} })).body as {
      key: string;
      service: { port: number };
    };
    expect(await talk(k.service.port, `${k.key}\nbefore`)).toBe('OK\necho:before');

    const { hostname, port } = new URL(d.url);
    const m = spawnNodeAs(mallory, flood(hostname, Number(port)));
    procs.push(m);
    let open = 0;
    let reports = 0;
    const seen: number[] = [];
    m.stdout!.on('data', (c: Buffer) => {
      for (const l of c.toString().split('\n'))
        if (l.startsWith('{')) {
          open = (JSON.parse(l) as { open: number }).open;
          seen.push(open);
          reports++;
        }
    });
    // Her 1,100 connects are done and her trickle of new ones runs.
    await until(() => reports >= 6, 30_000, 'mallory to open her connections');
    // Long enough for the victims' idle keep-alive sockets to the API to be closed (5 s).
    await new Promise((r) => setTimeout(r, 7000));

    const load = await d.cli(['load', 'echo', '--format', 'env']);
    const mine = await talk(k.service.port, `${k.key}\nafter`);
    console.log(
      `[attack] mallory holds ${open} API connections (no broker account); the owner's load: exit ${load.code} ${load.stderr.trim().slice(0, 160)}; the owner's own key on her own service: ${JSON.stringify(mine)}`,
    );
    expect({ loadExit: load.code, ownKeyOnOwnService: mine }).toEqual({
      loadExit: 0,
      ownKeyOnOwnService: 'OK\necho:after',
    });
    // Her share, and not one connection more: a connection is admitted before its TLS handshake,
    // so one over her share never completes one.
    expect(Math.max(...seen)).toBeLessThanOrEqual(128);
  }, 90_000);
});

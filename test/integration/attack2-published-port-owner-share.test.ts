/**
 * Pen test 2 (LOC-5, SSH-4): the gateway charges every connection to a tunnelled service's
 * published port (127.0.0.1:PORT on the broker host) to the service *owner's* channel share
 * (`sshMaxChannelsPerPrincipal`, 512) — the fix for the first pen test's channel hog. But nothing
 * authenticates such a connection before it takes the slot: the key line is checked by the gate
 * behind the tunnel, which waits up to 10 s for it (an HTTPS front waits for TLS longer still).
 * So bt-mallory, with no broker account at all, keeps ~520 bare TCP connections to alice's
 * published port (reopening each as the gate drops it) and alice's whole share is hers: alice's
 * own `broker connect` / `broker tunnel` / `broker open` (direct forwards come out of the same
 * share) are refused with "channel limit", and so is every client of every other service of
 * alice's on the broker host.
 *
 * The test states what LOC-5 promises (one user cannot lock another out); it failed while the
 * attack worked. Connections from users other than the owner now take slots in a pool of their
 * own, capped per connecting UID (`sshMaxPublishedPerSource`) and per service
 * (`sshMaxPublishedPerService`); published-port-shares.test.ts shows the caps themselves.
 */
import type { ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import {
  announceSkip,
  killAs,
  runAs,
  spawnAs,
  spawnNodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip("attack2 published port connections take the owner's share");

/** mallory: CONNS bare TCP connections to the published port, each reopened when it closes. */
const FLOOD = `import net from 'node:net';
const PORT = Number(process.env.PORT), CONNS = 540;
let open = 0;
const one = () => {
  const s = net.connect(PORT, '127.0.0.1');
  let up = false;
  s.on('connect', () => { up = true; open++; });
  s.on('error', () => {});
  s.on('data', () => {});
  s.once('close', () => { if (up) open--; setTimeout(one, 20); });
};
for (let i = 0; i < CONNS; i++) setTimeout(one, i * 2);
setInterval(() => console.log(JSON.stringify({ open })), 500);`;

describe.skipIf(skip)(
  "LOC-5: bare connections to alice's published port take alice's share",
  () => {
    let d: Daemon;
    let alice: UnixUser;
    let mallory: UnixUser;
    let home: string;
    const procs: ChildProcess[] = [];

    beforeAll(async () => {
      alice = unixUser('bt-alice');
      mallory = unixUser('bt-mallory');
      d = await Daemon.start();
    });
    afterAll(async () => {
      for (const p of procs) killAs(p, 'SIGTERM');
      await new Promise((r) => setTimeout(r, 1000));
      for (const p of procs) killAs(p);
      await d?.stop();
      if (home) rmSync(home, { recursive: true, force: true });
    });

    it("fail/LOC-5 mallory (no account) floods alice's published port; alice's own broker connect is refused", async () => {
      const aliceToken = await d.addUser('bt-alice');
      home = mkdtempSync('/tmp/bt2p-');
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

      // The README's first broker run line, as alice: a TCP gate in front of an echo server.
      const run = spawnAs(
        alice,
        process.execPath,
        [BIN, 'run', 'echo', '--', 'python3']
          .concat([join(ROOT, 'examples/python-echo/echo_server.py'), '--unix-socket'])
          .concat(['{app_socket}']),
        { env, cwd: home },
      );
      procs.push(run);
      let runErr = '';
      run.stderr!.on('data', (c: Buffer) => (runErr += c.toString()));
      let port = 0;
      await until(
        async () => {
          const s = (await d.api('GET', '/v1/services/bt-alice/echo')).body.service as
            { status: string; port: number } | undefined;
          port = s?.port ?? 0;
          return s?.status === 'ready';
        },
        30_000,
        `broker run echo: ${runErr}`,
      );
      const connect = () =>
        runAs(alice, process.execPath, [BIN, 'connect', 'echo'], {
          env,
          cwd: home,
          input: 'hello\n',
          timeoutMs: 20_000,
        });
      const before = await connect();
      expect(before.stdout, before.stderr).toContain('hello');

      const flood = spawnNodeAs(mallory, FLOOD, { env: { PORT: String(port) } });
      procs.push(flood);
      let floodOut = '';
      flood.stdout!.on('data', (c: Buffer) => (floodOut += c.toString()));
      // The flood is on: she holds at least a hundred connections (as many as the broker lets her)
      // and keeps reopening the rest.
      await until(
        () => Number(/"open":(\d+)/.exec(floodOut.trim().split('\n').at(-1) ?? '')?.[1]) >= 100,
        20_000,
        `mallory's connections: ${floodOut.trim().split('\n').at(-1)}`,
      );
      await new Promise((r) => setTimeout(r, 1000));

      const during = await connect();
      console.log({
        mallory: floodOut.trim().split('\n').at(-1),
        aliceConnect: { code: during.code, stdout: during.stdout, stderr: during.stderr.trim() },
      });
      killAs(flood);
      // LOC-5: one user cannot lock another out — alice must still reach her own service.
      expect(during.stderr.trim(), 'alice: echo hello | broker connect echo').not.toMatch(
        /refused|channel/i,
      );
      expect(during.stdout).toContain('hello');
      // What stopped her: her own cap on connections to other users' published ports, audited.
      const a = await d.api('GET', '/v1/audit?limit=1000');
      const refusedHer = (a.body.events as { action: string; count: number; details: unknown }[])
        .filter(
          (e) =>
            e.action === 'ssh.published' &&
            (e.details as { source?: string } | null)?.source === `uid:${mallory.uid}`,
        )
        .reduce((n, e) => n + e.count, 0);
      expect(refusedHer, "mallory's refused connections in the audit").toBeGreaterThan(0);
    }, 120_000);
  },
);

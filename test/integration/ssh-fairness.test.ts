/**
 * LOC-5 / SSH-3 / SSH-4 / LOG-2 as the attacker: bt-mallory, a real second Unix user on the broker
 * host, tries to lock everyone else out of the gateway with half-open connections, to pass the
 * per-connection channel cap by opening channels concurrently, and to flood the audit trail with
 * failed logins under ever new user names. Pre-auth slots are shared per local UID (OpenSSH's
 * MaxStartups / PerSourceMaxStartups), channel slots are reserved before the asynchronous open,
 * and failed logins are one audit row per source and window, with a penalty per source
 * (OpenSSH's PerSourcePenalties).
 */
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon, ROOT } from '../helpers/daemon.js';
import {
  audit,
  closeSshResources,
  echoes,
  forward,
  gatewayOf,
  portRange,
  sshConnect,
  tunnelledEcho,
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

const skip = announceSkip('LOC-5 gateway fairness tests (a second Unix user is the attacker)');
const children: ChildProcess[] = [];
const daemons: Daemon[] = [];

afterAll(async () => {
  for (const c of children) killAs(c);
  closeSshResources();
  for (const d of daemons) await d.stop().catch(() => undefined);
});

describe.skipIf(skip)('LOC-5: one local user cannot lock the others out of the gateway', () => {
  let d: Daemon;
  let gw: Gw;
  let mallory: UnixUser;
  let alice: string;

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    d = await Daemon.start({ portRange: portRange() });
    daemons.push(d);
    gw = await gatewayOf(d);
    alice = await d.addUser('alice');
  });

  it('fail/LOC-5 mallory holding 100 half-open connections: another user still logs in at once, and mallory holds at most her share', async () => {
    const m = spawnNodeAs(
      mallory,
      `import net from 'node:net';
       let open = 0, refused = 0;
       const all = [];
       for (let i = 0; i < 100; i++) {
         const s = net.connect(${gw.port}, '127.0.0.1');
         all.push(s);
         s.on('data', () => {}); // never answer: a half-open SSH connection
         s.on('error', () => {});
         s.once('close', () => refused++);
         s.once('connect', () => open++);
       }
       setTimeout(() => console.log(JSON.stringify({ open, refused })), 1500);
       setInterval(() => {}, 1000);`,
    );
    children.push(m);
    const held = JSON.parse(await lineFrom(m, (l) => l.startsWith('{'), 10_000)) as {
      open: number;
      refused: number;
    };
    // The kernel accepted all of them; the gateway kept only mallory's share (8 by default).
    expect(held.open).toBe(100);
    expect(held.refused).toBeGreaterThanOrEqual(100 - 8);
    const t0 = Date.now();
    const c = await sshConnect(gw, 'alice', alice);
    expect(Date.now() - t0).toBeLessThan(2000);
    c.end();
    killAs(m);
  });

  it('fail/LOG-2 failed logins under ever new user names: a few audit rows with counts, and the source pays a penalty; others do not', async () => {
    const tries = 60;
    const r = await nodeAs(
      mallory,
      `import ssh2 from 'ssh2';
       let refused = 0, failed = 0;
       const one = (i) => new Promise((resolve) => {
         const c = new ssh2.Client();
         let authed = false;
         c.on('error', (e) => { if (e.level === 'client-authentication') failed++; else refused++; authed = true; resolve(); });
         c.on('close', () => { if (!authed) refused++; resolve(); });
         c.connect({ host: '127.0.0.1', port: ${gw.port}, username: 'guess' + i + Math.random().toString(36).slice(2, 8),
           password: 'bku_' + 'x'.repeat(43), tryKeyboard: false, readyTimeout: 5000,
           hostVerifier: () => true });
       });
       for (let i = 0; i < ${tries}; i++) await one(i);
       console.log(JSON.stringify({ failed, refused }));`,
      { timeoutMs: 60_000, cwd: ROOT },
    );
    const out = JSON.parse(r.stdout) as { failed: number; refused: number };
    // 30 failures a minute, then the source is refused at connect (each ssh2 login sends one
    // password, so one failure a connection).
    expect(out.failed).toBeLessThanOrEqual(31);
    expect(out.refused).toBeGreaterThanOrEqual(tries - 31);
    const events = (await audit(d)).filter(
      (e) => e.action === 'ssh.auth' && e.outcome === 'refused',
    );
    expect(events.reduce((n, e) => n + e.count, 0)).toBe(out.failed);
    expect(events.length).toBeLessThanOrEqual(10);
    // Another user (this test's) is not punished for mallory's guesses.
    const c = await sshConnect(gw, 'alice', alice);
    c.end();
  });
});

describe('SSH-4: the per-connection channel cap holds against concurrent opens', () => {
  let d: Daemon;
  let gw: Gw;

  beforeAll(async () => {
    d = await Daemon.start({ portRange: portRange(), config: { sshMaxChannelsPerConnection: 4 } });
    daemons.push(d);
    gw = await gatewayOf(d);
  });

  it('fail/SSH-4 50 forwards opened at once on one connection: exactly the cap get through', async () => {
    const alice = await d.addUser('alice');
    const svc = await tunnelledEcho(d, gw, 'alice', alice, 'cap');
    const c = await sshConnect(gw, 'alice', alice);
    const opens = await Promise.allSettled(
      Array.from({ length: 50 }, () => forward(c, '127.0.0.1', svc.port, 5000)),
    );
    const ok = opens.filter((o) => o.status === 'fulfilled');
    expect(ok).toHaveLength(4);
    const first = (ok[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof forward>>>).value;
    expect(await echoes(first, 'still works\n')).toBe(true);
  });
});

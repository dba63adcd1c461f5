/**
 * LOC-5: who may hold connections to a tunnelled service's published port (127.0.0.1:PORT on the
 * broker host). Each is attributed to the local user who made it (the kernel's socket lookup);
 * a user other than the owner holds at most `sshMaxPublishedPerSource` of them, all services
 * together, and all such users together at most `sshMaxPublishedPerService` of one service's, a
 * newcomer taking the oldest connection of whoever holds the most. The owner's own Unix user (her
 * principal's `uid`) counts for her channel share instead. Real users: bt-alice owns two echo
 * services, bt-mallory holds connections that never present a key, bt-carol is a third user.
 */
import type { ChildProcess } from 'node:child_process';
import { connect as netConnect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import {
  audit,
  closeSshResources,
  gatewayOf,
  portRange,
  sockets,
  tunnelledEcho,
  type Gw,
} from '../helpers/ssh.js';
import { announceSkip, killAs, spawnNodeAs, unixUser, type UnixUser } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceSkip('LOC-5 published-port shares (real local users connect)');

const PER_SOURCE = 4;
const PER_SERVICE = 9;

/**
 * Opens N connections to PORT at once, each writing a line. A connection the echo answers is
 * `echoed` (admitted) and held open; one closed before any answer is `refused`; an echoed one that
 * closes later is `lost` (evicted). Prints the counts once all N settled and at every later loss.
 */
const HOLD = `import net from 'node:net';
const PORT = Number(process.env.PORT), N = Number(process.env.N);
let echoed = 0, refused = 0, lost = 0, settled = 0;
const report = () => console.log(JSON.stringify({ echoed, refused, lost }));
for (let i = 0; i < N; i++) {
  const s = net.connect(PORT, '127.0.0.1');
  let ok = false;
  s.on('error', () => {});
  s.on('connect', () => s.write('ping\\n'));
  s.on('data', () => {
    if (ok) return;
    ok = true;
    echoed++;
    if (++settled === N) report();
  });
  s.once('close', () => {
    if (ok) { lost++; report(); }
    else { refused++; if (++settled === N) report(); }
  });
}
setInterval(() => {}, 1000);`;

interface Held {
  echoed: number;
  refused: number;
  lost: number;
}

/** A HOLD process and its latest report. */
class Holder {
  latest: Held | null = null;
  constructor(readonly proc: ChildProcess) {
    let buf = '';
    proc.stdout!.on('data', (c: Buffer) => {
      buf += c.toString();
      const lines = buf.split('\n');
      buf = lines.pop()!;
      for (const l of lines) if (l.startsWith('{')) this.latest = JSON.parse(l) as Held;
    });
  }
  async settled(what: string): Promise<Held> {
    await until(() => this.latest !== null, 15_000, what);
    return this.latest!;
  }
}

describe.skipIf(skip)('LOC-5: published-port connections are capped per connecting user', () => {
  let d: Daemon;
  let gw: Gw;
  let alice: UnixUser;
  let mallory: UnixUser;
  let carol: UnixUser;
  const procs: ChildProcess[] = [];
  const hold = (user: UnixUser, port: number, n: number) => {
    const p = spawnNodeAs(user, HOLD, { env: { PORT: String(port), N: String(n) } });
    procs.push(p);
    return new Holder(p);
  };

  beforeAll(async () => {
    alice = unixUser('bt-alice');
    mallory = unixUser('bt-mallory');
    carol = unixUser('bt-carol');
    d = await Daemon.start({
      portRange: portRange(),
      config: { sshMaxPublishedPerSource: PER_SOURCE, sshMaxPublishedPerService: PER_SERVICE },
    });
    gw = await gatewayOf(d);
  });
  afterAll(async () => {
    for (const p of procs) killAs(p);
    closeSshResources();
    await d?.stop();
  });

  it('fail/LOC-5 mallory gets her cap and no more, on every service; carol and the owner still get through; a full service gives the heaviest holder’s oldest slot to a newcomer', async () => {
    // alice's principal is her Unix user: her own connections count for her channel share.
    const r = await d.api('POST', '/v1/principals', { body: { name: 'bt-alice', uid: alice.uid } });
    expect(r.status, r.text).toBe(201);
    const token = (r.body as { token: string }).token;
    const echo = await tunnelledEcho(d, gw, 'bt-alice', token, 'echo');
    const other = await tunnelledEcho(d, gw, 'bt-alice', token, 'other');

    // mallory opens three times her cap at once: she holds her cap, the rest are reset.
    const m = hold(mallory, echo.port, 3 * PER_SOURCE);
    expect(await m.settled("mallory's connections")).toEqual({
      echoed: PER_SOURCE,
      refused: 2 * PER_SOURCE,
      lost: 0,
    });
    // Her cap counts all services together: alice's other service refuses her too.
    const mOther = hold(mallory, other.port, 1);
    expect(await mOther.settled("mallory's connection to alice's other service")).toEqual({
      echoed: 0,
      refused: 1,
      lost: 0,
    });

    // A third user still gets through to both services while mallory holds hers.
    const c = hold(carol, echo.port, 2);
    expect(await c.settled("carol's connections")).toEqual({ echoed: 2, refused: 0, lost: 0 });
    const cOther = hold(carol, other.port, 1);
    expect(await cOther.settled("carol's connection to the other service")).toEqual({
      echoed: 1,
      refused: 0,
      lost: 0,
    });

    // The owner's own user is not capped per source: her connections use her channel share.
    const a = hold(alice, echo.port, 2 * PER_SOURCE);
    expect(await a.settled("alice's connections")).toEqual({
      echoed: 2 * PER_SOURCE,
      refused: 0,
      lost: 0,
    });

    // Root (no cap of its own, as for the API) fills the rest of echo's pool: mallory 4, carol 2,
    // root 3 = 9. carol's next connection finds it full and takes mallory's oldest (she holds
    // the most), not one of alice's.
    const mine: Socket[] = [];
    for (let i = 0; i < PER_SERVICE - PER_SOURCE - 2; i++) {
      const s = netConnect({ host: '127.0.0.1', port: echo.port });
      sockets.add(s);
      s.on('error', () => undefined);
      mine.push(s);
      const answered = await new Promise<boolean>((resolve) => {
        s.once('data', () => resolve(true));
        s.once('close', () => resolve(false));
        s.write('ping\n');
      });
      expect(answered, `root connection ${i}`).toBe(true);
    }
    const c2 = hold(carol, echo.port, 1);
    expect(await c2.settled("carol's connection to the full service")).toEqual({
      echoed: 1,
      refused: 0,
      lost: 0,
    });
    await until(() => m.latest?.lost === 1, 10_000, 'mallory to lose her oldest connection');
    expect(a.latest).toEqual({ echoed: 2 * PER_SOURCE, refused: 0, lost: 0 });
    expect(c.latest).toEqual({ echoed: 2, refused: 0, lost: 0 });
    for (const s of mine) expect(s.destroyed, 'root connections kept').toBe(false);

    // Each refusal is in the audit, one row per service, source and reason, with a count.
    const events = (await audit(d)).filter((e) => e.action === 'ssh.published');
    const of = (target: string, reason: string) =>
      events
        .filter(
          (e) =>
            e.target === target &&
            e.outcome === 'refused' &&
            e.details?.source === `uid:${mallory.uid}` &&
            e.details?.reason === reason,
        )
        .reduce((n, e) => n + e.count, 0);
    expect(of('bt-alice/echo', 'too many connections from this source')).toBe(2 * PER_SOURCE);
    expect(of('bt-alice/other', 'too many connections from this source')).toBe(1);
    expect(of('bt-alice/echo', 'slot given to another source')).toBe(1);
    expect(events.filter((e) => e.details?.source !== `uid:${mallory.uid}`)).toEqual([]);
  }, 90_000);
});

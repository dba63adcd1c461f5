/**
 * Abuse of the SSH gateway (SECURITY.md SSH-3, SSH-4, SSH-8, COMP-5) against real daemons:
 * garbage floods, password guessing on one connection, silent and excess unauthenticated
 * connections, the per-connection channel cap, unregistering under a live channel, and client-side
 * host key pinning. Everything stays on loopback and is bounded in count and time.
 */
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import {
  audit,
  clients,
  closeSshResources,
  echoes,
  fingerprintOf,
  forward,
  gatewayOf,
  gotIdent,
  noneEcho,
  portRange,
  rawConnection,
  sleep,
  sockets,
  sshConfig,
  sshConnect,
  tunnelledEcho,
  type Gw,
} from '../helpers/ssh.js';

const { Client } = ssh2;

const daemons: Daemon[] = [];
let tmp: string;

afterAll(async () => {
  closeSshResources();
  for (const d of daemons) await d.stop().catch(() => undefined);
  if (!process.env.KEEP_TEST_STATE) {
    for (const d of daemons) rmSync(d.home, { recursive: true, force: true });
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});

beforeAll(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ssh-abuse-'));
});

describe('SSH-8: 10,000 garbage connections (default limits)', () => {
  let d: Daemon;
  let gw: Gw;
  let alice: string;
  let svcPort: number;

  beforeAll(async () => {
    d = await Daemon.start({ portRange: portRange() });
    daemons.push(d);
    gw = await gatewayOf(d);
    alice = await d.addUser('alice');
    svcPort = (await tunnelledEcho(d, gw, 'alice', alice, 'flood')).port;
  });

  it('the daemon stays up, /v1/health answers throughout, a real client still gets in', async () => {
    const TOTAL = 10_000;
    const CONCURRENCY = 100;
    const kinds = ['random', 'half-open', 'immediate-close', 'ident-then-garbage'] as const;
    const ident = Buffer.from('SSH-2.0-OpenSSH_9.6p1 garbage\r\n');

    const one = (i: number) =>
      new Promise<void>((resolve) => {
        const kind = kinds[i % kinds.length]!;
        const sock = netConnect({ host: '127.0.0.1', port: gw.port });
        sockets.add(sock);
        const deadline = setTimeout(() => sock.destroy(), 3000);
        sock.on('error', () => undefined);
        // Read (and drop) whatever the gateway sends, so its close is seen.
        sock.resume();
        sock.once('close', () => {
          clearTimeout(deadline);
          sockets.delete(sock);
          resolve();
        });
        sock.once('connect', () => {
          switch (kind) {
            case 'random':
              sock.end(randomBytes(randomInt(1, 2048)));
              break;
            case 'half-open':
              // A partial identification line, then our side shuts: the gateway must let go.
              sock.end('SSH-2.0-');
              break;
            case 'immediate-close':
              if (i % 8 < 4) sock.resetAndDestroy();
              else sock.destroy();
              break;
            case 'ident-then-garbage':
              sock.write(Buffer.concat([ident, randomBytes(randomInt(16, 4096))]));
              setTimeout(() => sock.end(), 50);
              break;
          }
        });
      });

    // /v1/health, polled while the flood runs: every answer 200, each within 2 s.
    let flooding = true;
    const health: { ok: boolean; ms: number }[] = [];
    const poller = (async () => {
      while (flooding) {
        const t0 = Date.now();
        const ok = await Promise.race([
          d.api('GET', '/v1/health', { token: null }).then(
            (r) => r.status === 200 && r.body.status === 'ok',
            () => false,
          ),
          sleep(2000).then(() => false),
        ]);
        health.push({ ok, ms: Date.now() - t0 });
        await sleep(50);
      }
    })();

    const t0 = Date.now();
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < TOTAL) await one(next++);
      }),
    );
    const floodMs = Date.now() - t0;
    flooding = false;
    await poller;
    console.log(
      `[SSH-8] ${TOTAL} garbage connections in ${floodMs} ms; ${health.length} health polls, ` +
        `max ${Math.max(...health.map((h) => h.ms))} ms`,
    );

    expect(next).toBe(TOTAL);
    expect(floodMs).toBeLessThan(45_000);
    expect(d.proc.exitCode).toBeNull();
    expect(d.proc.signalCode).toBeNull();
    expect(health.length).toBeGreaterThan(3);
    expect(health.filter((h) => !h.ok)).toEqual([]);

    // The unauthenticated count went back down: as many simultaneous fresh connections as one
    // source may hold (8 of the 64) each get the gateway's identification line.
    const probes = Array.from({ length: 8 }, () => rawConnection(gw.port));
    const idents = await Promise.all(probes.map((p) => gotIdent(p.sock)));
    for (const p of probes) p.sock.destroy();
    expect(idents.filter((x) => !x).length).toBe(0);

    // A legitimate client authenticates and its forward carries data.
    const c = await sshConnect(gw, 'alice', alice);
    const ch = await forward(c, '127.0.0.1', svcPort);
    expect(await echoes(ch, 'after the flood\n')).toBe(true);
    ch.close();
    c.end();
  }, 60_000);

  it('client-side pinning: a client expecting another host key refuses to connect', async () => {
    const other = fingerprintOf(randomBytes(51));
    const outcome = await new Promise<{ ready: boolean; error?: string }>((resolve) => {
      const c = new Client();
      clients.push(c);
      let verified: string | null = null;
      c.once('ready', () => resolve({ ready: true }));
      c.once('error', (err) => resolve({ ready: false, error: `${err.message} (${verified})` }));
      c.connect(
        sshConfig(gw, 'alice', {
          authHandler: [
            { type: 'password', username: 'alice', password: alice } as ssh2.PasswordAuthMethod,
          ],
          hostVerifier: (key: Buffer) => {
            verified = fingerprintOf(key);
            return verified === other;
          },
        }),
      );
    });
    expect(outcome.ready).toBe(false);
    expect(outcome.error).toMatch(/verif/i);
    // The key it saw was the real one, published by the pinned API.
    expect(outcome.error).toContain(gw.fingerprint);
    // And the right fingerprint works.
    const ok = await sshConnect(gw, 'alice', alice);
    ok.end();
  });
});

describe('SSH-3 / SSH-4 / COMP-5 (tight limits)', () => {
  let d: Daemon;
  let gw: Gw;
  let alice: string;

  beforeAll(async () => {
    const config = join(tmp, 'tight.json');
    writeFileSync(
      config,
      JSON.stringify({
        sshAuthTimeoutSeconds: 2,
        sshMaxUnauthenticated: 5,
        sshMaxChannelsPerConnection: 3,
      }),
      { mode: 0o600 },
    );
    d = await Daemon.start({ portRange: portRange(), extraArgs: ['--config', config] });
    daemons.push(d);
    gw = await gatewayOf(d);
    alice = await d.addUser('alice');
  });

  it('SSH-3: no 4th password on one connection, even the right one', async () => {
    const guesser = await d.addUser('guesser');
    const passwords = ['wrong-1', 'wrong-2', 'wrong-3', guesser];
    const offered: string[] = [];
    const t0 = Date.now();
    const outcome = await new Promise<{ ready: boolean; ms: number; error?: string }>((resolve) => {
      const c = new Client();
      clients.push(c);
      let error: string | undefined;
      c.once('ready', () => resolve({ ready: true, ms: Date.now() - t0 }));
      c.on('error', (err) => (error ??= err.message));
      c.once('close', () => resolve({ ready: false, ms: Date.now() - t0, error }));
      c.connect(
        sshConfig(gw, 'guesser', {
          authHandler: (_left, _partial, next) => {
            const pw = passwords[offered.length];
            if (pw === undefined) return next(false as never);
            offered.push(pw);
            next({ type: 'password', username: 'guesser', password: pw });
          },
        }),
      );
    });
    expect(outcome.ready).toBe(false);
    // The gateway closed the connection after the third failure, not the 2 s auth timeout.
    expect(outcome.ms).toBeLessThan(1500);
    expect(offered.length).toBeGreaterThanOrEqual(3);
    // Server side: three refused tries, and the 4th (correct) password never logged in.
    const events = (await audit(d)).filter((e) => e.actor === 'guesser');
    expect(events.filter((e) => e.action === 'ssh.login')).toEqual([]);
    const refused = events.filter((e) => e.action === 'ssh.auth' && e.outcome === 'refused');
    // One row per source and window, with a count (LOG-2): three tries, no fourth.
    expect(refused.reduce((n, e) => n + e.count, 0)).toBe(3);
  });

  it('SSH-3: unregistered public keys count as tries: no 4th key on one connection', async () => {
    await d.addUser('prober');
    const keys = Array.from({ length: 8 }, () => ssh2.utils.generateKeyPairSync('ed25519').private);
    let offered = 0;
    const t0 = Date.now();
    const outcome = await new Promise<{ ready: boolean; ms: number }>((resolve) => {
      const c = new Client();
      clients.push(c);
      c.once('ready', () => resolve({ ready: true, ms: Date.now() - t0 }));
      c.on('error', () => undefined);
      c.once('close', () => resolve({ ready: false, ms: Date.now() - t0 }));
      c.connect(
        sshConfig(gw, 'prober', {
          authHandler: (_left, _partial, next) => {
            const key = keys[offered];
            if (key === undefined) return next(false as never);
            offered++;
            next({ type: 'publickey', username: 'prober', key } as ssh2.PublicKeyAuthMethod);
          },
        }),
      );
    });
    expect(outcome.ready).toBe(false);
    // Three refusals end the connection; at most one more key may be in flight by then.
    expect(offered).toBeLessThanOrEqual(4);
    expect(outcome.ms).toBeLessThan(1500);
  });

  it('SSH-3: a connection that sends nothing is closed after the auth timeout (2 s)', async () => {
    const silent = rawConnection(gw.port);
    const { ms, bytes } = await silent.closed;
    expect(bytes.toString('latin1')).toMatch(/^SSH-2\.0-/);
    expect(ms).toBeGreaterThanOrEqual(1500);
    expect(ms).toBeLessThan(4000);
  });

  it('SSH-3: a client that finishes key exchange but never authenticates is closed too', async () => {
    const t0 = Date.now();
    const outcome = await new Promise<{ ready: boolean; ms: number; asked: boolean }>((resolve) => {
      const c = new Client();
      clients.push(c);
      let asked = false;
      c.once('ready', () => resolve({ ready: true, ms: Date.now() - t0, asked }));
      c.on('error', () => undefined);
      c.once('close', () => resolve({ ready: false, ms: Date.now() - t0, asked }));
      c.connect(
        sshConfig(gw, 'alice', {
          readyTimeout: 20_000,
          // Never answer: the gateway's timer must end this.
          authHandler: () => {
            asked = true;
          },
        }),
      );
    });
    expect(outcome.asked).toBe(true);
    expect(outcome.ready).toBe(false);
    expect(outcome.ms).toBeGreaterThanOrEqual(1500);
    expect(outcome.ms).toBeLessThan(4000);
  });

  it('SSH-3: beyond 5 unauthenticated connections the extra ones are closed at once', async () => {
    const held = Array.from({ length: 5 }, () => rawConnection(gw.port));
    expect(await Promise.all(held.map((h) => gotIdent(h.sock)))).toEqual(Array(5).fill(true));
    const extra = Array.from({ length: 3 }, () => rawConnection(gw.port));
    const results = await Promise.all(extra.map((e) => e.closed));
    for (const r of results) {
      expect(r.bytes.length).toBe(0);
      expect(r.ms).toBeLessThan(500);
    }
    // The held ones are still there (they are not what got closed).
    expect(held.every((h) => !h.sock.destroyed)).toBe(true);
    for (const h of held) h.sock.destroy();
    await Promise.all(held.map((h) => h.closed));
    // Slots free again: a real client authenticates.
    await sleep(100);
    const c = await sshConnect(gw, 'alice', alice);
    c.end();
  });

  it('SSH-4: the 4th concurrent channel on one connection is refused, the first 3 work', async () => {
    const { port } = await tunnelledEcho(d, gw, 'alice', alice, 'capped');
    const c = await sshConnect(gw, 'alice', alice);
    const open: Channel[] = [];
    for (let i = 0; i < 3; i++) {
      const ch = await forward(c, '127.0.0.1', port).catch((err: Error) => {
        throw new Error(`channel ${i + 1} of 3 was refused: ${err.message}`);
      });
      expect(await echoes(ch, `channel-${i}\n`)).toBe(true);
      open.push(ch);
    }
    await expect(forward(c, '127.0.0.1', port)).rejects.toThrow(/open failure/i);
    // The refusal is per connection: the 3 open channels still carry data.
    for (const [i, ch] of open.entries()) expect(await echoes(ch, `again-${i}\n`)).toBe(true);
    // Closing one frees its slot.
    const closed = new Promise((r) => open[0]!.once('close', r));
    open[0]!.close();
    await closed;
    await sleep(100);
    const again = await forward(c, '127.0.0.1', port);
    expect(await echoes(again, 'freed\n')).toBe(true);
    c.end();
  });

  it('COMP-5: unregistering a tunnelled service closes its live channel within 1 s and refuses new ones', async () => {
    const { port } = await tunnelledEcho(d, gw, 'alice', alice, 'gone');
    const c = await sshConnect(gw, 'alice', alice);
    const ch = await forward(c, '127.0.0.1', port);
    expect(await echoes(ch, 'before\n')).toBe(true);
    const closed = new Promise<number>((r) => ch.once('close', () => r(Date.now())));
    const t0 = Date.now();
    const del = await d.api('DELETE', '/v1/services/alice/gone', { token: alice });
    expect(del.status, del.text).toBeLessThan(300);
    const at = await Promise.race([closed, sleep(2000).then(() => Infinity)]);
    expect(at - t0).toBeLessThan(1000);
    await expect(forward(c, '127.0.0.1', port)).rejects.toThrow(/open failure/i);
    c.end();
  });

  it('COMP-5: the same for a tunnel:none service', async () => {
    const { port, host } = await noneEcho(d, 'alice', alice, 'gone-none');
    const c = await sshConnect(gw, 'alice', alice);
    const ch = await forward(c, host, port);
    expect(await echoes(ch, 'before\n')).toBe(true);
    const closed = new Promise<number>((r) => ch.once('close', () => r(Date.now())));
    const t0 = Date.now();
    const del = await d.api('DELETE', '/v1/services/alice/gone-none', { token: alice });
    expect(del.status, del.text).toBeLessThan(300);
    const at = await Promise.race([closed, sleep(2000).then(() => Infinity)]);
    expect(at - t0).toBeLessThan(1000);
    await expect(forward(c, host, port)).rejects.toThrow(/open failure/i);
    c.end();
  });

  // SSH-5: every refused channel is one audit event, also when the refusal comes from downstream.
  it('SSH-5: a forward to a tunnel:none service whose server is down is refused at once and audited', async () => {
    const { port, host, server } = await noneEcho(d, 'alice', alice, 'down-none');
    await new Promise<void>((r) => server.close(() => r()));
    const c = await sshConnect(gw, 'alice', alice);
    await expect(forward(c, host, port)).rejects.toThrow(/open failure/i);
    c.end();
    const refused = (await audit(d)).filter(
      (e) =>
        e.action === 'ssh.forward' && e.outcome === 'refused' && e.target === 'alice/down-none',
    );
    expect(refused.reduce((n, e) => n + e.count, 0)).toBe(1);
  });

  it('SSH-5: a forward refused by the tunnelled server is audited', async () => {
    const { port } = await tunnelledEcho(d, gw, 'alice', alice, 'refuser', { refuse: true });
    const c = await sshConnect(gw, 'alice', alice);
    await expect(forward(c, '127.0.0.1', port)).rejects.toThrow(/open failure/i);
    c.end();
    const refused = (await audit(d)).filter(
      (e) => e.action === 'ssh.forward' && e.outcome === 'refused' && e.target === 'alice/refuser',
    );
    expect(refused.reduce((n, e) => n + e.count, 0)).toBe(1);
  });
});

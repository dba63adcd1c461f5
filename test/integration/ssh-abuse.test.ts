/**
 * Abuse of the SSH gateway (SECURITY.md SSH-3, SSH-4, SSH-8, COMP-5) against real daemons:
 * garbage floods, password guessing on one connection, silent and excess unauthenticated
 * connections, the per-connection channel cap, unregistering under a live channel, and client-side
 * host key pinning. Everything stays on loopback and is bounded in count and time.
 */
import { createHash, randomBytes, randomInt } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

const { Client } = ssh2;
type SshClient = ssh2.Client;
type Channel = ssh2.ClientChannel;

interface Gw {
  port: number;
  fingerprint: string;
}

const daemons: Daemon[] = [];
const clients: SshClient[] = [];
const servers: Server[] = [];
const sockets = new Set<Socket>();
let tmp: string;

afterAll(async () => {
  for (const c of clients) c.destroy();
  for (const s of sockets) s.destroy();
  for (const s of servers) s.close();
  for (const d of daemons) await d.stop().catch(() => undefined);
  if (!process.env.KEEP_TEST_STATE) {
    for (const d of daemons) rmSync(d.home, { recursive: true, force: true });
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function fingerprintOf(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

/** A port range of its own for each daemon, away from the other suites' and the ephemeral range. */
function portRange(): string {
  const min = 18000 + randomInt(0, 100) * 20;
  return `${min}-${min + 19}`;
}

async function gatewayOf(d: Daemon): Promise<Gw> {
  const h = await d.api('GET', '/v1/health', { token: null });
  expect(h.status).toBe(200);
  return { port: h.body.gateway.port, fingerprint: h.body.gateway.fingerprint };
}

function sshConfig(gw: Gw, user: string, extra: ssh2.ConnectConfig = {}): ssh2.ConnectConfig {
  return {
    host: '127.0.0.1',
    port: gw.port,
    username: user,
    hostVerifier: (key: Buffer) => fingerprintOf(key) === gw.fingerprint,
    tryKeyboard: false,
    readyTimeout: 10_000,
    ...extra,
  };
}

function sshConnect(gw: Gw, user: string, pw: string): Promise<SshClient> {
  return new Promise((resolve, reject) => {
    const c = new Client();
    clients.push(c);
    c.once('ready', () => resolve(c));
    c.once('error', reject);
    c.connect(
      sshConfig(gw, user, {
        authHandler: [
          { type: 'password', username: user, password: pw } as ssh2.PasswordAuthMethod,
        ],
      }),
    );
  });
}

async function register(d: Daemon, token: string, body: Record<string, unknown>) {
  const r = await d.api('POST', '/v1/services', { token, body });
  expect(r.status, r.text).toBe(201);
  return r.body as { service: { port: number; host: string }; serviceToken: string };
}

/** A tunnelled service whose server is an echo behind a reverse tunnel. */
async function tunnelledEcho(
  d: Daemon,
  gw: Gw,
  owner: string,
  token: string,
  name: string,
  opts: { refuse?: boolean } = {},
) {
  const reg = await register(d, token, { name, tunnel: 'ssh' });
  const c = await sshConnect(gw, owner, reg.serviceToken);
  c.on('tcp connection', (_info, accept, reject) => {
    if (opts.refuse) return reject();
    const ch = accept();
    ch.on('error', () => ch.destroy());
    ch.pipe(ch);
  });
  const port = await new Promise<number>((resolve, reject) =>
    c.forwardIn('127.0.0.1', 0, (err, p) => (err ? reject(err) : resolve(p))),
  );
  expect(port).toBe(reg.service.port);
  return { port, server: c };
}

/** A tunnel:none service: an echo on 127.0.0.1:<port>, confirmed with `ready`. */
async function noneEcho(d: Daemon, owner: string, token: string, name: string) {
  const reg = await register(d, token, { name, tunnel: 'none' });
  const srv = createServer((s) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  servers.push(srv);
  await new Promise<void>((res) => srv.listen(reg.service.port, '127.0.0.1', () => res()));
  const r = await d.api('POST', `/v1/services/${owner}/${name}/ready`, {
    token: reg.serviceToken,
  });
  expect(r.status, r.text).toBe(200);
  return { port: reg.service.port, host: reg.service.host, server: srv };
}

/** A direct-tcpip channel; a gateway that never answers the open is an error too. */
function forward(c: SshClient, host: string, port: number, ms = 3000): Promise<Channel> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no answer to the channel open within ${ms} ms`)),
      ms,
    );
    c.forwardOut('127.0.0.1', 1, host, port, (err, ch) => {
      clearTimeout(timer);
      if (err) return reject(err);
      ch.on('error', () => undefined);
      resolve(ch);
    });
  });
}

function echoes(ch: Channel, probe: string, ms = 3000): Promise<boolean> {
  return new Promise((resolve) => {
    let got = '';
    const timer = setTimeout(() => resolve(false), ms);
    const onData = (b: Buffer) => {
      got += b.toString();
      if (got.includes(probe)) {
        clearTimeout(timer);
        ch.off('data', onData);
        resolve(true);
      }
    };
    ch.on('data', onData);
    ch.write(probe);
  });
}

/** A raw TCP connection to the gateway: resolves with what it received and when it closed. */
function rawConnection(
  port: number,
  opts: { write?: Buffer; holdMs?: number } = {},
): { sock: Socket; closed: Promise<{ bytes: Buffer; ms: number }> } {
  const t0 = Date.now();
  const sock = netConnect({ host: '127.0.0.1', port });
  sockets.add(sock);
  const chunks: Buffer[] = [];
  sock.on('data', (c: Buffer) => chunks.push(c));
  sock.on('error', () => undefined);
  if (opts.write) sock.once('connect', () => sock.write(opts.write!));
  const closed = new Promise<{ bytes: Buffer; ms: number }>((resolve) =>
    sock.once('close', () => {
      sockets.delete(sock);
      resolve({ bytes: Buffer.concat(chunks), ms: Date.now() - t0 });
    }),
  );
  return { sock, closed };
}

/** Wait until the socket received the gateway's identification line. */
function gotIdent(sock: Socket, ms = 3000): Promise<boolean> {
  return new Promise((resolve) => {
    let buf = '';
    const timer = setTimeout(() => resolve(false), ms);
    const onData = (c: Buffer) => {
      buf += c.toString('latin1');
      if (buf.includes('SSH-2.0-')) {
        clearTimeout(timer);
        sock.off('data', onData);
        resolve(true);
      }
    };
    sock.on('data', onData);
    sock.once('close', () => {
      clearTimeout(timer);
      resolve(buf.includes('SSH-2.0-'));
    });
  });
}

interface AuditEvent {
  actor: string | null;
  action: string;
  target: string | null;
  outcome: 'ok' | 'refused';
  count: number;
  details: Record<string, unknown> | null;
}

/** The audit trail. It is written in 200 ms batches (and the route does not flush first). */
async function audit(d: Daemon): Promise<AuditEvent[]> {
  await sleep(600);
  const r = await d.api('GET', '/v1/audit?limit=1000');
  expect(r.status, r.text).toBe(200);
  return r.body.events as AuditEvent[];
}

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

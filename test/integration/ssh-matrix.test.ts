/**
 * SECURITY.md SSH-1 (with SSH-2 and SSH-5): the SSH gateway is not an open proxy. Every row of
 * the checked-in table (ssh-matrix.table.ts) runs against a real daemon with a fresh ssh2
 * connection. Sentinel listeners sit on every forbidden target that can exist on this host and
 * count connections; the services' own servers count theirs too, and must see exactly the
 * allowed forwards. Non-loopback destinations are never contacted: the gateway must refuse
 * those channels before dialling anything, which the test checks by their quick refusal.
 */
import { createHash, randomInt } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import {
  BINDS,
  DESTS,
  PRINCIPALS,
  ROWS,
  rowLabel,
  type Dest,
  type PortRef,
  type Principal,
  type Row,
} from './ssh-matrix.table.js';

const { Client } = ssh2;
type SshClient = ssh2.Client;
type Channel = ssh2.ClientChannel;

/** A small port range of this suite's own, below the ephemeral range. */
const RANGE_MIN = 29000 + randomInt(0, 100) * 20;
const RANGE_MAX = RANGE_MIN + 19;
const inRange = (p: number) => p >= RANGE_MIN && p <= RANGE_MAX;

interface Gw {
  port: number;
  fingerprint: string;
}

let d: Daemon;
let gw: Gw;
let tmp: string;
const clients: SshClient[] = [];
const servers: Server[] = [];
const sockets = new Set<Socket>();

/** Credentials per principal (user name, password). */
const creds = {} as Record<Exclude<Principal, 'unauthenticated'>, { user: string; pw: string }>;
/** Resolved ports. */
const ports = {} as Record<Exclude<PortRef, number>, number>;
/** Connections seen by each counting listener. */
const seen = {
  ownTunnel: 0,
  othersTunnel: 0,
  ownNone: 0,
  sentinelUnallocated: 0,
  sentinelOutside: 0,
  sentinelNoneAltLoopback: 0,
  sentinelUnix: 0,
};
let unixSentinel: string;
const results = new Map<Row, Outcome>();
let startedAt: string;
/** The port the last accepted tcpip-forward reported. */
let lastReverse = 0;

interface Outcome {
  result: 'allow' | 'deny' | 'broken';
  ms: number;
  detail: string;
}

function fingerprintOf(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

function baseConfig(extra: ssh2.ConnectConfig = {}): ssh2.ConnectConfig {
  return {
    host: '127.0.0.1',
    port: gw.port,
    hostVerifier: (key: Buffer) => fingerprintOf(key) === gw.fingerprint,
    tryKeyboard: false,
    strictVendor: false,
    readyTimeout: 10_000,
    // Agent forwarding needs an agent path; nothing may ever connect to it.
    agent: unixSentinel,
    ...extra,
  };
}

function sshConnect(user: string, pw: string): Promise<SshClient> {
  return new Promise((resolve, reject) => {
    const c = new Client();
    clients.push(c);
    c.once('ready', () => resolve(c));
    c.on('error', reject);
    c.connect(
      baseConfig({
        username: user,
        authHandler: [
          { type: 'password', username: user, password: pw } as ssh2.PasswordAuthMethod,
        ],
      }),
    );
  });
}

function echoServer(host: string, port: number, onConn: () => void): Promise<Server> {
  return listen(host, port, (s) => {
    onConn();
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
}

function listen(host: string | null, port: number, onConn: (s: Socket) => void, path?: string) {
  return new Promise<Server>((resolve, reject) => {
    const srv = createServer((s) => {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
      onConn(s);
    });
    srv.once('error', reject);
    const done = () => {
      srv.off('error', reject);
      servers.push(srv);
      resolve(srv);
    };
    if (path) srv.listen(path, done);
    else srv.listen(port, host!, done);
  });
}

/** A reverse tunnel whose server side is an echo, counting the connections it carries. */
async function attachEcho(user: string, token: string, count: () => void): Promise<number> {
  const c = await sshConnect(user, token);
  c.on('tcp connection', (_info, accept) => {
    count();
    const ch = accept();
    ch.on('error', () => ch.destroy());
    ch.pipe(ch);
  });
  return new Promise((resolve, reject) =>
    c.forwardIn('127.0.0.1', 0, (err, port) => (err ? reject(err) : resolve(port))),
  );
}

async function register(token: string, body: Record<string, unknown>) {
  const r = await d.api('POST', '/v1/services', { token, body });
  expect(r.status, r.text).toBe(201);
  return r.body as {
    service: { port: number; host: string; owner: string; name: string };
    serviceToken: string;
  };
}

async function waitReady(owner: string, name: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await d.api('GET', `/v1/services/${owner}/${name}`);
    if (r.body?.service?.status === 'ready') return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`${owner}/${name} never became ready`);
}

/** Listening sockets by port: addresses as /proc/net/tcp* writes them (hex). */
function listenersByPort(): Map<number, string[]> {
  const out = new Map<number, string[]>();
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    if (!existsSync(f)) continue;
    for (const line of readFileSync(f, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 4 || cols[3] !== '0A') continue;
      const [addr, p] = cols[1]!.split(':');
      const port = parseInt(p!, 16);
      out.set(port, [...(out.get(port) ?? []), addr!].sort());
    }
  }
  return out;
}

function listeners(port: number): string[] {
  return listenersByPort().get(port) ?? [];
}

function resolvePort(p: PortRef): number {
  return typeof p === 'number' ? p : ports[p];
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p,
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Write a probe and wait for it to come back. */
function echoes(stream: Channel | Socket, probe: string): Promise<boolean> {
  return withTimeout(
    new Promise<boolean>((resolve) => {
      let got = '';
      stream.on('data', (c: Buffer) => {
        got += c.toString();
        if (got.includes(probe)) resolve(true);
      });
      stream.once('close', () => resolve(got.includes(probe)));
      stream.write(probe);
    }),
    3000,
    'echo',
  ).catch(() => false);
}

/**
 * Channel opens ssh2's Client has no method for (they are server-to-client types): a malicious
 * client can still send them, so they are sent raw.
 */
function rawOpen(
  c: SshClient,
  type: 'session' | 'x11' | 'auth-agent@openssh.com',
  cb: (err: Error | undefined, ch?: Channel) => void,
): void {
  const cc = c as any;
  const wrapper = Object.assign((err: Error | undefined, ch?: Channel) => cb(err, ch), { type });
  const id = cc._chanMgr.add(wrapper) as number;
  if (id === -1) return cb(new Error('no free channel'));
  const proto = cc._protocol;
  const window = 2 * 1024 * 1024;
  const packet = 32 * 1024;
  if (type === 'session') {
    proto.session(id, window, packet);
    return;
  }
  // Protocol refuses to build these in client mode; the bytes are what a hostile client sends.
  proto._server = true;
  try {
    if (type === 'x11')
      proto.x11(id, window, packet, { originAddr: '127.0.0.1', originPort: 6010 });
    else proto.openssh_authAgent(id, window, packet);
  } finally {
    proto._server = false;
  }
}

/** A channel open failure with its reason code (1 prohibited, 2 connect failed, 3 unknown type). */
function refusal(err: (Error & { reason?: unknown }) | undefined): string {
  return `${err?.message ?? 'no channel'} (reason ${String(err?.reason)})`;
}

/** Result of a channel-opening call: an error is a refusal, a channel an acceptance. */
function channelOutcome(
  t0: number,
  start: (cb: (err: Error | undefined, ch?: Channel | ssh2.SFTPWrapper) => void) => void,
): Promise<Outcome> {
  return withTimeout(
    new Promise<Outcome>((resolve) => {
      start((err, ch) => {
        const ms = Date.now() - t0;
        if (err || !ch) return resolve({ result: 'deny', ms, detail: refusal(err) });
        ch.on('error', () => undefined);
        const open = ch as unknown as { close?: () => void; end: () => void };
        if (open.close) open.close();
        else open.end();
        resolve({ result: 'allow', ms, detail: 'channel opened' });
      });
    }),
    5000,
    'channel open',
  ).catch((e: Error) => ({ result: 'broken' as const, ms: Date.now() - t0, detail: e.message }));
}

function globalRequest(
  t0: number,
  send: (cb: (err?: Error | null) => void) => void,
): Promise<Outcome> {
  return withTimeout(
    new Promise<Outcome>((resolve) =>
      send((err) =>
        resolve({
          result: err ? 'deny' : 'allow',
          ms: Date.now() - t0,
          detail: err ? err.message : 'accepted',
        }),
      ),
    ),
    5000,
    'global request',
  ).catch((e: Error) => ({ result: 'broken' as const, ms: Date.now() - t0, detail: e.message }));
}

/** Perform one row's request on `c` (authenticated or not). */
async function perform(
  c: SshClient,
  row: Row,
  i: number,
  authenticated: boolean,
): Promise<Outcome> {
  const t0 = Date.now();
  switch (row.request) {
    case 'direct-tcpip': {
      const dest: Dest = DESTS[row.dest];
      const port = resolvePort(dest.port);
      return withTimeout(
        new Promise<Outcome>((resolve) => {
          c.forwardOut('127.0.0.1', 40000 + i, dest.host, port, (err, ch) => {
            const ms = Date.now() - t0;
            if (err) return resolve({ result: 'deny', ms, detail: refusal(err) });
            ch.on('error', () => undefined);
            void echoes(ch, `probe-${i}\n`).then((ok) => {
              ch.close();
              resolve({
                result: ok ? 'allow' : 'broken',
                ms,
                detail: ok ? 'echoed' : 'opened without data',
              });
            });
          });
        }),
        8000,
        'direct-tcpip',
      ).catch((e: Error) => ({
        result: 'broken' as const,
        ms: Date.now() - t0,
        detail: e.message,
      }));
    }
    case 'tcpip-forward': {
      const bind = BINDS[row.dest];
      const port = resolvePort(bind.port);
      // Listeners in the range and on the outside sentinel's port, before and after.
      const watched = [
        ...Array.from({ length: 20 }, (_, k) => RANGE_MIN + k),
        ports.outsideSentinel,
      ];
      const snapshot = () => {
        const all = listenersByPort();
        return watched.map((p) => (all.get(p) ?? []).join(',')).join('|');
      };
      const before = snapshot();
      let published = 0;
      if (authenticated) {
        c.on('tcp connection', (_info, accept) => {
          published++;
          const ch = accept();
          ch.on('error', () => undefined);
          ch.pipe(ch);
        });
      }
      const o = await globalRequest(t0, (cb) =>
        c.forwardIn(bind.host, port, (err, real) => {
          if (!err) lastReverse = real;
          cb(err);
        }),
      );
      if (o.result !== 'allow') {
        if (snapshot() !== before)
          return { ...o, result: 'broken', detail: 'refused, yet a listener appeared' };
        return o;
      }
      // Allowed: the service's port is published on loopback only (127.0.0.1 and ::1, both held
      // by the broker since registration) and carries data.
      const real = lastReverse;
      if (real !== ports.tokenService)
        return { ...o, result: 'broken', detail: `published ${real}, not the allocated port` };
      const addrs = listeners(real);
      if (addrs.join(',') !== '00000000000000000000000001000000,0100007F')
        return { ...o, result: 'broken', detail: `listening on ${addrs.join(',')}` };
      const s = netConnect({ host: '127.0.0.1', port: real });
      sockets.add(s);
      s.on('error', () => undefined);
      const ok = await echoes(s, `reverse-${i}\n`);
      s.destroy();
      if (!ok || published !== 1)
        return { ...o, result: 'broken', detail: `echo ${ok}, tunnelled ${published}` };
      return { ...o, detail: `published on 127.0.0.1:${real}, echoed` };
    }
    case 'streamlocal':
      return channelOutcome(t0, (cb) => c.openssh_forwardOutStreamLocal(unixSentinel, cb));
    case 'streamlocal-forward': {
      const path = join(tmp, `fwd-${i}.sock`);
      const o = await globalRequest(t0, (cb) => c.openssh_forwardInStreamLocal(path, cb));
      if (existsSync(path)) return { ...o, result: 'broken', detail: `${path} was created` };
      return o;
    }
    case 'session':
      return channelOutcome(t0, (cb) => rawOpen(c, 'session', cb));
    case 'exec':
      return channelOutcome(t0, (cb) => c.exec('id', cb));
    case 'shell':
      return channelOutcome(t0, (cb) => c.shell(cb));
    case 'sftp':
      return channelOutcome(t0, (cb) => c.sftp(cb));
    case 'x11':
      return channelOutcome(t0, (cb) => c.exec('true', { x11: true }, cb));
    case 'x11-channel':
      return channelOutcome(t0, (cb) => rawOpen(c, 'x11', cb));
    case 'agent':
      return channelOutcome(t0, (cb) =>
        c.exec('true', { agentForward: true } as ssh2.ExecOptions, cb),
      );
    case 'agent-channel':
      return channelOutcome(t0, (cb) => rawOpen(c, 'auth-agent@openssh.com', cb));
  }
}

/** Run a row as an authenticated principal, on a connection of its own. */
async function runAuthenticated(row: Row, i: number): Promise<Outcome> {
  const { user, pw } = creds[row.principal as keyof typeof creds];
  const c = await sshConnect(user, pw);
  try {
    return await perform(c, row, i, true);
  } finally {
    c.end();
  }
}

/**
 * Unauthenticated: after the key exchange, before any user authentication, send the request;
 * then offer a wrong password. The connection must never become ready.
 */
function runUnauthenticated(row: Row, i: number): Promise<Outcome> {
  return withTimeout(
    new Promise<Outcome>((resolve, reject) => {
      const c = new Client();
      clients.push(c);
      let outcome: Outcome | null = null;
      let asked = false;
      c.once('ready', () => reject(new Error('an unauthenticated connection became ready')));
      c.on('error', (err: Error & { level?: string }) => {
        if (outcome && err.level === 'client-authentication') resolve(outcome);
        else if (outcome) resolve({ ...outcome, detail: `${outcome.detail}; then ${err.message}` });
        else reject(err);
      });
      c.on('close', () => {
        if (outcome) resolve(outcome);
      });
      c.connect(
        baseConfig({
          username: 'alice',
          authHandler: (_left, _partial, next) => {
            if (asked) return next(false as never);
            asked = true;
            void perform(c, row, i, false).then((o) => {
              outcome = o;
              next({ type: 'password', username: 'alice', password: 'not-a-token' });
            });
          },
        }),
      );
    }),
    15_000,
    'unauthenticated row',
  );
}

beforeAll(async () => {
  startedAt = new Date(Date.now() - 1000).toISOString();
  tmp = mkdtempSync(join(tmpdir(), 'ssh-matrix-'));
  unixSentinel = join(tmp, 'sentinel.sock');
  // The matrix fails hundreds of logins from one local user on purpose: lift the per-source
  // penalty (tested on its own in ssh-fairness) so every row is judged by policy alone.
  d = await Daemon.start({
    portRange: `${RANGE_MIN}-${RANGE_MAX}`,
    config: { sshMaxAuthFailuresPerSource: 1_000_000 },
  });
  const health = await d.api('GET', '/v1/health', { token: null });
  expect(health.status).toBe(200);
  gw = { port: health.body.gateway.port, fingerprint: health.body.gateway.fingerprint };
  expect(gw.fingerprint).toMatch(/^SHA256:/);

  const who = await d.api('GET', '/v1/whoami');
  const adminName = who.body.principal.name as string;
  const alice = await d.addUser('alice');
  const bob = await d.addUser('bob');
  const carol = await d.addUser('carol');

  const tun = await register(alice, { name: 'tun', tunnel: 'ssh' });
  const rev = await register(alice, { name: 'rev', tunnel: 'ssh' });
  const none = await register(alice, { name: 'none', tunnel: 'none' });
  const ctun = await register(carol, { name: 'tun', tunnel: 'ssh' });
  expect(none.service.host).toBe('127.0.0.1');

  creds.owner = { user: 'alice', pw: alice };
  creds.otherUser = { user: 'bob', pw: bob };
  creds.admin = { user: adminName, pw: d.adminToken };
  creds.serviceToken = { user: 'alice', pw: rev.serviceToken };

  ports.ownTunnel = await attachEcho('alice', tun.serviceToken, () => seen.ownTunnel++);
  ports.othersTunnel = await attachEcho('carol', ctun.serviceToken, () => seen.othersTunnel++);
  expect(ports.ownTunnel).toBe(tun.service.port);
  expect(ports.othersTunnel).toBe(ctun.service.port);
  ports.tokenService = rev.service.port;
  ports.ownNone = none.service.port;
  await echoServer('127.0.0.1', ports.ownNone, () => seen.ownNone++);
  const ready = await d.api('POST', '/v1/services/alice/none/ready', {
    token: none.serviceToken,
  });
  expect(ready.status, ready.text).toBe(200);
  // On the broker host `ready` reads the kernel's socket table (whose listener is it?) instead
  // of connecting: the service saw no connection; only the gateway's count from here on.
  expect(seen.ownNone).toBe(0);
  await waitReady('alice', 'tun');
  await waitReady('carol', 'tun');
  await waitReady('alice', 'none');

  // Sentinels on every forbidden target that can exist here.
  const taken = new Set([ports.ownTunnel, ports.othersTunnel, ports.tokenService, ports.ownNone]);
  const free = Array.from({ length: 20 }, (_, k) => RANGE_MIN + k).filter(
    (p) => !taken.has(p) && listeners(p).length === 0,
  );
  expect(free.length).toBeGreaterThanOrEqual(2);
  ports.unallocated = free[0]!;
  ports.unallocatedFree = free[free.length - 1]!;
  await listen('127.0.0.1', ports.unallocated, (s) => {
    seen.sentinelUnallocated++;
    s.destroy();
  });
  const outside = await listen('127.0.0.1', 0, (s) => {
    seen.sentinelOutside++;
    s.destroy();
  });
  ports.outsideSentinel = (outside.address() as { port: number }).port;
  expect(inRange(ports.outsideSentinel)).toBe(false);
  ports.apiPort = Number(new URL(d.url).port);
  expect(inRange(ports.apiPort)).toBe(false);
  await listen('127.0.0.2', ports.ownNone, (s) => {
    seen.sentinelNoneAltLoopback++;
    s.destroy();
  });
  await listen(
    null,
    0,
    (s) => {
      seen.sentinelUnix++;
      s.destroy();
    },
    unixSentinel,
  );
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  for (const s of sockets) s.destroy();
  for (const s of servers) s.close();
  if (d) await d.stop().catch(() => undefined);
  if (!process.env.KEEP_TEST_STATE) {
    if (d) rmSync(d.home, { recursive: true, force: true });
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
});

describe('SSH-1: the checked-in table', () => {
  it('covers every principal × destination for direct-tcpip and × every other request', () => {
    const key = (r: Row) => `${r.principal}|${r.request}|${r.dest ?? ''}`;
    const keys = ROWS.map(key);
    expect(new Set(keys).size).toBe(keys.length);
    const want: string[] = [];
    for (const p of PRINCIPALS) {
      for (const dest of Object.keys(DESTS)) want.push(`${p}|direct-tcpip|${dest}`);
      for (const bind of Object.keys(BINDS)) want.push(`${p}|tcpip-forward|${bind}`);
      for (const req of [
        'streamlocal',
        'streamlocal-forward',
        'session',
        'exec',
        'shell',
        'sftp',
        'x11',
        'x11-channel',
        'agent',
        'agent-channel',
      ])
        want.push(`${p}|${req}|`);
    }
    expect([...keys].sort()).toEqual(want.sort());
  });

  it.each(ROWS.map((r, i) => [rowLabel(r), r, i] as const))('%s', async (_label, row, i) => {
    const o =
      row.principal === 'unauthenticated'
        ? await runUnauthenticated(row, i)
        : await runAuthenticated(row, i);
    results.set(row, o);
    if (process.env.SSH_MATRIX_VERBOSE)
      console.log(`${rowLabel(row)}: ${o.result} ${o.ms} ms ${o.detail}`);
    expect(o.result, `${rowLabel(row)} (${row.why}): ${o.detail}`).toBe(row.expect);
    // A refusal is a policy decision, never a dial that timed out (SSH-2: nothing is resolved
    // or contacted for a destination it refuses).
    if (row.expect === 'deny') expect(o.ms).toBeLessThan(1000);
  });
});

describe('SSH-1: sentinels and servers', () => {
  it('every forbidden target saw zero connections', () => {
    expect(seen.sentinelUnallocated).toBe(0);
    expect(seen.sentinelOutside).toBe(0);
    expect(seen.sentinelNoneAltLoopback).toBe(0);
    expect(seen.sentinelUnix).toBe(0);
  });

  it("the services' servers saw exactly the allowed forwards", () => {
    const allowedTo = (ref: PortRef) =>
      ROWS.filter(
        (r) => r.request === 'direct-tcpip' && r.expect === 'allow' && DESTS[r.dest].port === ref,
      ).length;
    expect(results.size).toBe(ROWS.length);
    expect(seen.ownTunnel).toBe(allowedTo('ownTunnel'));
    expect(seen.othersTunnel).toBe(allowedTo('othersTunnel'));
    expect(seen.ownNone).toBe(allowedTo('ownNone'));
  });

  it("a refused reverse tunnel on another service's port did not take it over", async () => {
    const before = seen.ownTunnel;
    const c = await sshConnect(creds.owner.user, creds.owner.pw);
    const ok = await new Promise<boolean>((resolve) =>
      c.forwardOut('127.0.0.1', 1, '127.0.0.1', ports.ownTunnel, (err, ch) => {
        if (err) return resolve(false);
        ch.on('error', () => undefined);
        void echoes(ch, 'still-mine\n').then((r) => {
          ch.close();
          resolve(r);
        });
      }),
    );
    c.end();
    expect(ok).toBe(true);
    expect(seen.ownTunnel).toBe(before + 1);
  });
});

describe('SSH-5: refused channels and requests are audited', () => {
  interface AuditEvent {
    actor: string | null;
    action: string;
    target: string | null;
    outcome: 'ok' | 'refused';
    count: number;
    details: Record<string, unknown> | null;
  }
  let events: AuditEvent[] = [];
  const sum = (pred: (e: AuditEvent) => boolean) =>
    events.filter(pred).reduce((n, e) => n + e.count, 0);
  const rows = (pred: (r: Row) => boolean) =>
    ROWS.filter((r) => r.principal !== 'unauthenticated' && pred(r)).length;

  beforeAll(async () => {
    // The audit log is written in batches every 200 ms, and GET /v1/audit does not flush the
    // pending batch first: give the last rows' events time to land.
    await new Promise((r) => setTimeout(r, 600));
    const r = await d.api('GET', `/v1/audit?since=${encodeURIComponent(startedAt)}&limit=1000`);
    expect(r.status, r.text).toBe(200);
    events = r.body.events as AuditEvent[];
    expect(events.length).toBeLessThan(1000);
  });

  it('ssh.forward: one refused event per refused direct-tcpip, one ok per allowed', () => {
    const denied = rows((r) => r.request === 'direct-tcpip' && r.expect === 'deny');
    const allowed = rows((r) => r.request === 'direct-tcpip' && r.expect === 'allow');
    expect(
      sum((e) => e.action === 'ssh.forward' && e.outcome === 'refused'),
    ).toBeGreaterThanOrEqual(denied);
    expect(sum((e) => e.action === 'ssh.forward' && e.outcome === 'ok')).toBeGreaterThanOrEqual(
      allowed,
    );
    // Non-loopback destinations are named in the refusals.
    for (const dest of ['10.0.0.1:80', '169.254.169.254:80', '8.8.8.8:53', 'example.com:80'])
      expect(
        sum((e) => e.action === 'ssh.forward' && e.outcome === 'refused' && e.target === dest),
      ).toBeGreaterThanOrEqual(4);
  });

  it('ssh.reverse: refused tcpip-forward requests', () => {
    const denied = rows((r) => r.request === 'tcpip-forward' && r.expect === 'deny');
    const allowed = rows((r) => r.request === 'tcpip-forward' && r.expect === 'allow');
    expect(
      sum((e) => e.action === 'ssh.reverse' && e.outcome === 'refused'),
    ).toBeGreaterThanOrEqual(denied);
    expect(sum((e) => e.action === 'ssh.reverse' && e.outcome === 'ok')).toBeGreaterThanOrEqual(
      allowed,
    );
  });

  it('ssh.channel: refused session and streamlocal channels', () => {
    const sessions = rows((r) =>
      ['session', 'exec', 'shell', 'sftp', 'x11', 'agent'].includes(r.request),
    );
    const streamlocal = rows((r) => r.request === 'streamlocal');
    const refusedOf = (type: string) =>
      sum((e) => e.action === 'ssh.channel' && e.outcome === 'refused' && e.details?.type === type);
    const seenEvents = JSON.stringify(events.filter((e) => e.action === 'ssh.channel'));
    expect(refusedOf('session'), seenEvents).toBeGreaterThanOrEqual(sessions);
    expect(refusedOf('openssh.streamlocal'), seenEvents).toBeGreaterThanOrEqual(streamlocal);
  });

  it('ssh.request: refused streamlocal-forward requests', () => {
    const denied = rows((r) => r.request === 'streamlocal-forward');
    expect(
      sum(
        (e) =>
          e.action === 'ssh.request' &&
          e.outcome === 'refused' &&
          e.details?.type === 'streamlocal-forward@openssh.com',
      ),
    ).toBeGreaterThanOrEqual(denied);
  });

  it('channel types ssh2 refuses by itself (x11, auth-agent opened by the client) are audited too', () => {
    const x11 = rows((r) => r.request === 'x11-channel');
    const agent = rows((r) => r.request === 'agent-channel');
    const refusedOf = (type: string) =>
      sum((e) => e.action === 'ssh.channel' && e.outcome === 'refused' && e.details?.type === type);
    expect(refusedOf('x11')).toBeGreaterThanOrEqual(x11);
    expect(refusedOf('auth-agent@openssh.com')).toBeGreaterThanOrEqual(agent);
  });
});

/**
 * SSH and gateway helpers for the suites that attack the gateway (ssh-abuse, live-identity,
 * ports, fairness): ssh2 clients with the gateway's host key pinned, registrations with echo
 * servers behind reverse tunnels or on loopback, channels, raw connections and the audit trail.
 * Every client, server and socket made here is remembered; `closeSshResources()` ends them all
 * (call it in afterAll).
 */
import { createHash, randomInt } from 'node:crypto';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import { expect } from 'vitest';
import type { Daemon } from './daemon.js';

const { Client } = ssh2;
export type SshClient = ssh2.Client;
export type Channel = ssh2.ClientChannel;

export interface Gw {
  port: number;
  fingerprint: string;
}

export const clients: SshClient[] = [];
export const servers: Server[] = [];
export const sockets = new Set<Socket>();

/** End every client, socket and server these helpers made. */
export function closeSshResources(): void {
  for (const c of clients) c.destroy();
  for (const s of sockets) s.destroy();
  for (const s of servers) s.close();
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function fingerprintOf(key: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '');
}

/** A port range of its own for each daemon, away from the other suites' and the ephemeral range. */
export function portRange(): string {
  const min = 18000 + randomInt(0, 100) * 20;
  return `${min}-${min + 19}`;
}

export async function gatewayOf(d: Daemon): Promise<Gw> {
  const h = await d.api('GET', '/v1/health', { token: null });
  expect(h.status).toBe(200);
  return { port: h.body.gateway.port, fingerprint: h.body.gateway.fingerprint };
}

export function sshConfig(
  gw: Gw,
  user: string,
  extra: ssh2.ConnectConfig = {},
): ssh2.ConnectConfig {
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

export function sshConnect(gw: Gw, user: string, pw: string): Promise<SshClient> {
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

export async function register(d: Daemon, token: string, body: Record<string, unknown>) {
  const r = await d.api('POST', '/v1/services', { token, body });
  expect(r.status, r.text).toBe(201);
  return r.body as { service: { port: number; host: string }; serviceToken: string };
}

/** A tunnelled service whose server is an echo behind a reverse tunnel. */
export async function tunnelledEcho(
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
  return { port, server: c, serviceToken: reg.serviceToken };
}

/** A tunnel:none service: an echo on 127.0.0.1:<port>, confirmed with `ready`. */
export async function noneEcho(d: Daemon, owner: string, token: string, name: string) {
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
export function forward(c: SshClient, host: string, port: number, ms = 3000): Promise<Channel> {
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

export function echoes(ch: Channel, probe: string, ms = 3000): Promise<boolean> {
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
export function rawConnection(
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
export function gotIdent(sock: Socket, ms = 3000): Promise<boolean> {
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

export interface AuditEvent {
  actor: string | null;
  action: string;
  target: string | null;
  outcome: 'ok' | 'refused';
  count: number;
  details: Record<string, unknown> | null;
}

/** The audit trail. It is written in 200 ms batches (and the route does not flush first). */
export async function audit(d: Daemon): Promise<AuditEvent[]> {
  await sleep(600);
  const r = await d.api('GET', '/v1/audit?limit=1000');
  expect(r.status, r.text).toBe(200);
  return r.body.events as AuditEvent[];
}

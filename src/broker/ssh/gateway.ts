/**
 * The SSH gateway (DESIGN §6): the only way traffic crosses hosts. Servers attach reverse
 * tunnels (`tcpip-forward`) with their service token; clients open forwards (`direct-tcpip`) to
 * services they may see. It is not a general proxy: every other channel and request is refused,
 * destinations are IP literals checked after canonicalisation (never DNS), and a tunnelled
 * service is reached through its SSH connection in memory — the gateway never dials loopback
 * for it. Every allowed and refused channel is an audit event.
 */
import {
  createServer as createNetServer,
  connect as netConnect,
  type Server as NetServer,
  type Socket,
} from 'node:net';
import type { Duplex } from 'node:stream';
import ssh2 from 'ssh2';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit.js';
import { actorOf, type Authenticator, type Identity } from '../auth.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import { canonicalIp } from '../net-util.js';
import { canSee } from '../services.js';
import type { ServiceRow, Store } from '../store/store.js';
import { sshFingerprint, type HostKey } from './host-key.js';
import { verifySignature } from './public-keys.js';
import { splice } from '../../protocol/splice.js';

type Connection = ssh2.Connection;

/** Modern algorithms only (SECURITY.md SSH-7); ssh2 ≥ 1.15 adds strict key exchange. */
const ALGORITHMS = {
  kex: [
    'curve25519-sha256',
    'curve25519-sha256@libssh.org',
    'ecdh-sha2-nistp256',
    'ecdh-sha2-nistp384',
  ],
  cipher: [
    'chacha20-poly1305@openssh.com',
    'aes128-gcm@openssh.com',
    'aes256-gcm@openssh.com',
    'aes128-ctr',
    'aes256-ctr',
  ],
  serverHostKey: ['ssh-ed25519'],
  hmac: [
    'hmac-sha2-256-etm@openssh.com',
    'hmac-sha2-512-etm@openssh.com',
    'hmac-sha2-256',
    'hmac-sha2-512',
  ],
  compress: ['none'],
} as const;

export interface GatewayLimits {
  authTimeoutMs: number;
  maxAuthTries: number;
  maxUnauthenticated: number;
  maxConnections: number;
  maxChannelsPerConnection: number;
  maxChannels: number;
}

export interface GatewayDeps {
  config: Config;
  store: Store;
  auth: Authenticator;
  audit: AuditLog;
  log: Logger;
  clock: Clock;
  hostKey: HostKey;
  limits: GatewayLimits;
}

/** A published reverse tunnel: the broker's loopback listener for one service. */
interface Tunnel {
  serviceId: string;
  conn: Connection;
  listener: NetServer;
  bindAddr: string;
  port: number;
  channels: Set<Duplex>;
}

interface ConnState {
  conn: Connection;
  socket: Socket;
  source: string;
  identity: Identity | null;
  channels: Set<Duplex>;
  /** Channels that count against the per-connection cap (one per forward). */
  open: number;
}

/** Channel types the gateway listens for (and audits itself); ssh2 refuses the rest. */
const HANDLED_CHANNEL_TYPES = new Set([
  'session',
  'direct-tcpip',
  'direct-streamlocal@openssh.com',
]);

export type ForwardDecision = { ok: true; service: ServiceRow } | { ok: false; reason: string };

/** Names a client may use for a tunnelled service: loopback literals, after canonicalisation. */
function loopbackLiteral(host: string): boolean {
  if (host === 'localhost') return true;
  const ip = canonicalIp(host);
  return ip === '127.0.0.1' || ip === '::1';
}

export class Gateway {
  private readonly net: NetServer;
  private readonly ssh: ssh2.Server;
  private readonly tunnels = new Map<string, Tunnel>();
  /** Client channels by service id, so unregistering can close them at once (COMP-5). */
  private readonly serviceChannels = new Map<string, Set<Duplex>>();
  private readonly conns = new Set<ConnState>();
  private readonly pending = new Map<string, (conn: Connection) => void>();
  private unauthenticated = 0;
  private channelCount = 0;
  bytesForwarded = 0;

  constructor(private readonly d: GatewayDeps) {
    // ssh2 announces a connection once the client's ident line arrived (asynchronously), so each
    // one is matched to its socket by the socket's (address, port) pair.
    this.ssh = new ssh2.Server(
      { hostKeys: [d.hostKey.privateKey], ident: 'SessionBroker', algorithms: ALGORITHMS as never },
      (conn: Connection, info: { ip: string; port: number }) => {
        const key = `${info.ip}|${info.port}`;
        const start = this.pending.get(key);
        this.pending.delete(key);
        if (start) start(conn);
        else conn.end();
      },
    );
    this.net = createNetServer((socket) => this.accept(socket));
    this.net.maxConnections = d.limits.maxConnections;
    this.net.on('error', (err) => d.log.error({ err }, 'gateway listener error'));
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.net.once('error', reject);
      this.net.listen(port, host, () => {
        this.net.off('error', reject);
        resolve((this.net.address() as { port: number }).port);
      });
    });
  }

  get port(): number {
    return (this.net.address() as { port: number } | null)?.port ?? 0;
  }

  /** Services with a live reverse tunnel. */
  liveServiceIds(): string[] {
    return [...this.tunnels.keys()];
  }

  get openTunnels(): number {
    return this.tunnels.size;
  }

  get openChannels(): number {
    return this.channelCount;
  }

  private event(
    actor: string | null,
    action: string,
    target: string | null,
    outcome: 'ok' | 'refused',
    source: string,
    details: Record<string, unknown> | null,
  ) {
    this.d.audit.record({ actor, action, target, outcome, source, details });
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    socket.on('error', () => socket.destroy());
    if (this.unauthenticated >= this.d.limits.maxUnauthenticated) {
      socket.destroy();
      return;
    }
    const source = canonicalIp(socket.remoteAddress ?? '') ?? 'unknown';
    this.unauthenticated++;
    let counted = true;
    const uncount = () => {
      if (counted) this.unauthenticated--;
      counted = false;
    };
    socket.once('close', uncount);
    const timer = setTimeout(() => {
      this.event(null, 'ssh.auth', null, 'refused', source, { reason: 'authentication timeout' });
      socket.destroy();
    }, this.d.limits.authTimeoutMs);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
    const key = `${socket.remoteAddress}|${socket.remotePort}`;
    socket.once('close', () => this.pending.delete(key));
    this.pending.set(key, (conn: Connection) => {
      const state: ConnState = {
        conn,
        socket,
        source,
        identity: null,
        channels: new Set(),
        open: 0,
      };
      this.conns.add(state);
      this.auditUnknownChannels(state);
      // SSH-8: an 'error' listener on every connection and channel.
      conn.on('error', () => socket.destroy());
      conn.on('close', () => this.connectionClosed(state));
      let tries = 0;
      const fail = (username: string, method: string) => {
        tries++;
        this.event(username.slice(0, 40), 'ssh.auth', null, 'refused', source, { method, tries });
      };
      conn.on('authentication', (ctx) => {
        // SSH-3: after the last try nothing more is even looked at; the connection is dropped.
        if (tries >= this.d.limits.maxAuthTries) {
          ctx.reject();
          socket.destroy();
          return;
        }
        let identity: Identity | null = null;
        if (ctx.method === 'publickey') {
          const found = this.findKey(ctx.username, ctx.key.data);
          if (!ctx.signature) {
            // "Would this key do?" An unknown key costs a try, like OpenSSH, so keys cannot be
            // probed without limit; a known key is answered and the signature follows.
            if (found) return ctx.accept();
            fail(ctx.username, 'publickey');
            return this.afterFailure(ctx, tries, socket);
          }
          if (found && verifySignature(found.key, ctx.blob!, ctx.signature, ctx.hashAlgo))
            identity = found.identity;
        } else if (ctx.method === 'password') {
          identity = this.checkPassword(ctx.username, ctx.password);
        } else {
          // `none` is the client asking which methods exist.
          ctx.reject(['publickey', 'password']);
          return;
        }
        if (identity) {
          state.identity = identity;
          ctx.accept();
          return;
        }
        fail(ctx.username, ctx.method);
        this.afterFailure(ctx, tries, socket);
      });
      conn.on('ready', () => {
        clearTimeout(timer);
        uncount();
        this.event(actorOf(state.identity!), 'ssh.login', null, 'ok', source, null);
        this.wire(state);
      });
    });
    this.ssh.injectSocket(socket);
  }

  /**
   * SSH-5: ssh2 refuses channel types it has no event for (x11, auth-agent@openssh.com, …)
   * before the gateway hears of them. Wrap its CHANNEL_OPEN handler so those refusals are
   * audited too. This reaches into ssh2 internals (`_protocol._handlers`, ssh2 1.17); if they
   * move, nothing breaks but this audit line, and the SSH-1 matrix test says so.
   */
  private auditUnknownChannels(state: ConnState): void {
    const handlers = (
      state.conn as unknown as { _protocol?: { _handlers?: Record<string, unknown> } }
    )._protocol?._handlers;
    const original = handlers?.CHANNEL_OPEN as
      ((p: unknown, info: { type: string }) => unknown) | undefined;
    if (!handlers || typeof original !== 'function') return;
    handlers.CHANNEL_OPEN = (p: unknown, info: { type: string }) => {
      if (!HANDLED_CHANNEL_TYPES.has(info.type)) {
        const actor = state.identity ? actorOf(state.identity) : null;
        this.event(actor, 'ssh.channel', null, 'refused', state.source, {
          type: String(info.type).slice(0, 64),
        });
      }
      return original(p, info);
    };
  }

  private afterFailure(ctx: ssh2.AuthContext, tries: number, socket: Socket): void {
    ctx.reject(['publickey', 'password']);
    if (tries >= this.d.limits.maxAuthTries) setImmediate(() => socket.destroy());
  }

  /** A key registered to an enabled principal named `username`. */
  private findKey(username: string, blob: Buffer): { key: string; identity: Identity } | null {
    const row = this.d.store.findSshKey(username, sshFingerprint(blob));
    const principal = row ? this.d.store.getPrincipal(username) : null;
    if (!row || !principal || principal.disabled) return null;
    return {
      key: row.key,
      identity: { kind: 'principal', principal, tokenId: `ssh:${row.fingerprint}` },
    };
  }

  /** Password = a user token (user name = the principal) or a service token (user name = its owner). */
  private checkPassword(username: string, password: string): Identity | null {
    let id: Identity;
    try {
      id = this.d.auth.authenticate(password);
    } catch {
      return null;
    }
    if (id.kind === 'principal' && id.principal.name === username) return id;
    if (id.kind === 'service' && id.service.owner === username) return id;
    return null;
  }

  private wire(state: ConnState): void {
    const { conn, source } = state;
    const identity = state.identity!;
    const actor = actorOf(identity);
    // Everything that is not a forward is refused, and audited.
    for (const type of ['session', 'openssh.streamlocal'] as const) {
      conn.on(type as 'session', (_accept: unknown, reject: () => void) => {
        this.event(actor, 'ssh.channel', null, 'refused', source, { type });
        reject();
      });
    }
    conn.on('request', (accept, reject, name, info) => {
      if (name === 'tcpip-forward' || name === 'cancel-tcpip-forward') {
        this.reverseForward(
          state,
          name,
          info as ssh2.TcpipBindInfo,
          accept as ((port?: number) => void) | undefined,
          reject,
        );
        return;
      }
      this.event(actor, 'ssh.request', null, 'refused', source, { type: name });
      reject?.();
    });
    conn.on('tcpip', (accept, reject, info) => this.directForward(state, accept, reject, info));
  }

  /** SSH-1: may this identity open a forward to destHost:destPort? Pure decision, no I/O. */
  decideForward(identity: Identity, destHost: string, destPort: number): ForwardDecision {
    if (identity.kind !== 'principal')
      return { ok: false, reason: 'service tokens may only attach reverse tunnels' };
    if (
      !Number.isInteger(destPort) ||
      destPort < this.d.config.portMin ||
      destPort > this.d.config.portMax
    ) {
      return { ok: false, reason: 'destination port is not a service port' };
    }
    const svc = this.d.store.findServiceByPort(destPort);
    if (!svc || !canSee(identity, svc)) return { ok: false, reason: 'no such service' };
    if (svc.tunnel === 'ssh') {
      if (!loopbackLiteral(destHost))
        return {
          ok: false,
          reason: 'tunnelled services are addressed as 127.0.0.1, ::1 or localhost',
        };
    } else if (canonicalIp(destHost) !== svc.host) {
      return { ok: false, reason: 'destination host is not the service host' };
    }
    if (svc.status !== 'ready') return { ok: false, reason: `service is ${svc.status}` };
    return { ok: true, service: svc };
  }

  private channelAllowed(state: ConnState): boolean {
    return (
      state.open < this.d.limits.maxChannelsPerConnection &&
      this.channelCount < this.d.limits.maxChannels
    );
  }

  /**
   * Remember a channel so removal and shutdown can close it. `counted` ones are the client's own
   * channels: they use the caps and close with its connection. The upstream of a forward is not
   * the connection's to close — its splice ends it once what the client sent has been delivered
   * (destroying it with the client's connection dropped the tail of an upload).
   */
  private track(state: ConnState, serviceId: string, ch: Duplex, counted = true): void {
    if (counted) {
      this.channelCount++;
      state.open++;
      state.channels.add(ch);
    }
    let set = this.serviceChannels.get(serviceId);
    if (!set) this.serviceChannels.set(serviceId, (set = new Set()));
    set.add(ch);
    ch.once('close', () => {
      if (counted) {
        this.channelCount--;
        state.open--;
      }
      state.channels.delete(ch);
      set!.delete(ch);
      if (set!.size === 0) this.serviceChannels.delete(serviceId);
    });
  }

  private readonly count = (n: number) => {
    this.bytesForwarded += n;
  };

  private pipe(a: Duplex, b: Duplex): void {
    splice(a, b, this.count);
  }

  private directForward(
    state: ConnState,
    accept: () => ssh2.ServerChannel,
    reject: () => void,
    info: ssh2.TcpipRequestInfo,
  ): void {
    const identity = state.identity!;
    const actor = actorOf(identity);
    const dest = `${String(info.destIP).slice(0, 64)}:${info.destPort}`;
    const decision = this.decideForward(identity, String(info.destIP), info.destPort);
    if (!decision.ok || !this.channelAllowed(state)) {
      this.event(actor, 'ssh.forward', dest, 'refused', state.source, {
        reason: decision.ok ? 'channel limit' : decision.reason,
      });
      reject();
      return;
    }
    const svc = decision.service;
    const target = `${svc.owner}/${svc.name}`;
    const opened = (upstream: Duplex) => {
      const ch = accept();
      this.event(actor, 'ssh.forward', target, 'ok', state.source, { dest });
      this.track(state, svc.id, ch);
      this.track(state, svc.id, upstream, false);
      this.pipe(ch, upstream);
    };
    if (svc.tunnel === 'ssh') {
      const tunnel = this.tunnels.get(svc.id);
      if (!tunnel) {
        this.event(actor, 'ssh.forward', target, 'refused', state.source, {
          reason: 'reverse tunnel not attached',
        });
        reject();
        return;
      }
      tunnel.conn.forwardOut(
        tunnel.bindAddr,
        tunnel.port,
        String(info.srcIP),
        info.srcPort,
        (err, upstream) => {
          if (err) {
            this.event(actor, 'ssh.forward', target, 'refused', state.source, {
              reason: 'the server refused the channel',
            });
            reject();
            return;
          }
          upstream.on('error', () => upstream.destroy());
          tunnel.channels.add(upstream);
          upstream.once('close', () => tunnel.channels.delete(upstream));
          opened(upstream);
        },
      );
    } else {
      const sock = netConnect({ host: svc.host, port: svc.port });
      sock.setNoDelay(true);
      let connected = false;
      sock.once('connect', () => {
        connected = true;
        opened(sock);
      });
      // Before the connection exists the channel is refused; afterwards splice() handles errors.
      sock.once('error', () => {
        if (connected) return;
        this.event(actor, 'ssh.forward', target, 'refused', state.source, {
          reason: 'the service does not accept connections',
        });
        reject();
      });
    }
  }

  private reverseForward(
    state: ConnState,
    name: 'tcpip-forward' | 'cancel-tcpip-forward',
    info: ssh2.TcpipBindInfo,
    accept: ((port?: number) => void) | undefined,
    reject: (() => void) | undefined,
  ): void {
    const identity = state.identity!;
    const actor = actorOf(identity);
    const refuse = (reason: string) => {
      this.event(
        actor,
        'ssh.reverse',
        `${String(info.bindAddr).slice(0, 64)}:${info.bindPort}`,
        'refused',
        state.source,
        { reason },
      );
      reject?.();
    };
    if (identity.kind !== 'service') return refuse('reverse tunnels need a service token');
    const svc = this.d.store.getServiceById(identity.service.id);
    if (!svc) return refuse('service is gone');
    if (svc.tunnel !== 'ssh') return refuse('service was registered with tunnel "none"');
    if (info.bindPort !== 0 && info.bindPort !== svc.port)
      return refuse(`only port 0 or ${svc.port} may be forwarded`);
    const target = `${svc.owner}/${svc.name}`;
    if (name === 'cancel-tcpip-forward') {
      const t = this.tunnels.get(svc.id);
      if (t && t.conn === state.conn) this.closeTunnel(svc.id, 'cancelled');
      accept?.();
      return;
    }
    // The newest attachment wins: a server that reconnects after a network blip replaces its
    // half-dead predecessor.
    if (this.tunnels.has(svc.id)) this.closeTunnel(svc.id, 'replaced');
    const listener = createNetServer((sock) => this.publishedConnection(svc, sock));
    listener.on('error', (err: NodeJS.ErrnoException) => {
      // PORT-3: someone else holds the port on this host; never acknowledge it.
      refuse(
        err.code === 'EADDRINUSE'
          ? `port ${svc.port} is held by another process on the broker host`
          : err.message,
      );
    });
    listener.listen(svc.port, '127.0.0.1', () => {
      const tunnel: Tunnel = {
        serviceId: svc.id,
        conn: state.conn,
        listener,
        bindAddr: info.bindAddr,
        port: svc.port,
        channels: new Set(),
      };
      this.tunnels.set(svc.id, tunnel);
      accept?.(svc.port);
      const now = this.d.clock.now();
      this.d.store.updateService(svc.id, { status: 'ready', lastSeenAt: now });
      this.event(actor, 'ssh.reverse', target, 'ok', state.source, { port: svc.port });
    });
  }

  /** A local client connected to a published port on the broker host: carry it to the server. */
  private publishedConnection(svc: ServiceRow, sock: Socket): void {
    sock.setNoDelay(true);
    sock.on('error', () => sock.destroy());
    const tunnel = this.tunnels.get(svc.id);
    if (!tunnel || this.channelCount >= this.d.limits.maxChannels) {
      sock.destroy();
      return;
    }
    tunnel.conn.forwardOut(
      tunnel.bindAddr,
      tunnel.port,
      sock.remoteAddress ?? '127.0.0.1',
      sock.remotePort ?? 0,
      (err, ch) => {
        if (err) {
          sock.destroy();
          return;
        }
        ch.on('error', () => ch.destroy());
        tunnel.channels.add(ch);
        tunnel.channels.add(sock);
        ch.once('close', () => tunnel.channels.delete(ch));
        sock.once('close', () => tunnel.channels.delete(sock));
        this.pipe(sock, ch);
      },
    );
  }

  private closeTunnel(serviceId: string, reason: string): void {
    const t = this.tunnels.get(serviceId);
    if (!t) return;
    this.tunnels.delete(serviceId);
    t.listener.close();
    for (const ch of t.channels) ch.destroy();
    this.d.log.info({ serviceId, reason }, 'reverse tunnel closed');
  }

  private connectionClosed(state: ConnState): void {
    this.conns.delete(state);
    for (const ch of state.channels) ch.destroy();
    for (const [serviceId, t] of this.tunnels) {
      if (t.conn !== state.conn) continue;
      this.closeTunnel(serviceId, 'connection closed');
      const svc = this.d.store.getServiceById(serviceId);
      if (svc && svc.status === 'ready') {
        this.d.store.updateService(serviceId, { status: 'offline' });
        this.event(null, 'service.offline', `${svc.owner}/${svc.name}`, 'ok', state.source, {
          reason: 'reverse tunnel dropped',
        });
      }
    }
  }

  /** A service left the registry: its tunnel and every channel to it close now (COMP-5). */
  serviceRemoved(serviceId: string): void {
    this.closeTunnel(serviceId, 'service removed');
    for (const ch of this.serviceChannels.get(serviceId) ?? []) ch.destroy();
    this.serviceChannels.delete(serviceId);
  }

  /** Live reverse tunnels keep their services' leases and last-seen times fresh. */
  touchLive(): void {
    const now = this.d.clock.now();
    for (const id of this.tunnels.keys()) {
      const svc = this.d.store.getServiceById(id);
      if (!svc) continue;
      this.d.store.updateService(id, {
        lastSeenAt: now,
        expiresAt: Math.max(
          svc.expiresAt,
          now + Math.min(svc.ttlSeconds, this.d.config.serviceMaxTtlSeconds) * 1000,
        ),
      });
    }
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.net.close(() => resolve()));
    for (const id of [...this.tunnels.keys()]) this.closeTunnel(id, 'broker stopping');
    for (const s of this.conns) s.conn.end();
    setTimeout(() => {
      for (const s of this.conns) s.socket.destroy();
    }, 2000).unref();
    await closed;
  }
}

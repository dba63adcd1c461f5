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
import type { ChangeFeed, RegistryChange } from '../changes.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { FailureLimiter } from '../limiter.js';
import { canonicalIp, isLoopback } from '../net-util.js';
import { canSee } from '../services.js';
import type { ServiceRow, Store } from '../store/store.js';
import { sshFingerprint, type HostKey } from './host-key.js';
import { FairShares, uncappedSources } from '../fair-shares.js';
import { PublishedPorts, type HoldResult } from './published-ports.js';
import { PublishedShares } from './published-shares.js';
import { verifySignature } from './public-keys.js';
import { splice } from '../../protocol/splice.js';
import type { PeerAttribution } from '../../host/socket-owner.js';

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
  /** Unauthenticated connections of one source (a local UID or a remote address). */
  maxUnauthenticatedPerSource: number;
  maxConnections: number;
  maxChannelsPerConnection: number;
  maxChannels: number;
  /**
   * One principal's share (LOC-5): authenticated connections and channels at once, counted for
   * the principal a connection authenticated as (a service token counts for its owner) and, for
   * connections to a published port from the owner's own Unix user, for the service's owner. No
   * one can fill the whole gateway.
   */
  maxConnectionsPerPrincipal: number;
  maxChannelsPerPrincipal: number;
  /**
   * Connections one local user (or unattributed loopback address) may hold at once to the
   * published ports of services it does not own, all services together (LOC-5).
   */
  maxPublishedPerSource: number;
  /**
   * Connections to one service's published port from users other than its owner, at once; a
   * newcomer from a user holding fewer takes the oldest of whoever holds the most (LOC-5).
   */
  maxPublishedPerService: number;
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
  changes: ChangeFeed;
  /** Attributes loopback connections to a local UID (the pre-auth slots are shared per UID). */
  peers: PeerAttribution;
  /** Failed logins per source; a source past its budget is refused at connect (penalties). */
  authFailures: FailureLimiter;
}

/** A reverse tunnel attached to a service's held port. */
interface Tunnel {
  serviceId: string;
  /** Whose share the published-port connections of its owner's own Unix user use. */
  owner: string;
  /** `owner/name`, for the audit. */
  target: string;
  conn: Connection;
  bindAddr: string;
  port: number;
  channels: Set<Duplex>;
}

interface ConnState {
  conn: Connection;
  socket: Socket;
  /** The peer's address, for the audit. */
  source: string;
  /** Who the pre-auth slot and the penalties are counted for: `uid:N` or `ip:ADDR`. */
  sourceKey: string;
  identity: Identity | null;
  /** The client's own channels, with the service each reaches (re-checked on changes). */
  channels: Map<Duplex, string>;
  /** Channels that count against the per-connection cap (one per forward, reserved first). */
  open: number;
  expiry: NodeJS.Timeout | null;
}

/** Channel types the gateway listens for (and audits itself); ssh2 refuses the rest. */
const HANDLED_CHANNEL_TYPES = new Set([
  'session',
  'direct-tcpip',
  'direct-streamlocal@openssh.com',
]);

export type ForwardDecision = { ok: true; service: ServiceRow } | { ok: false; reason: string };

/** Whose share a connection uses: its principal, or a service token's owner. */
function shareOf(id: Identity): string {
  return id.kind === 'principal' ? id.principal.name : id.service.owner;
}

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
  /** Listeners held for every live tunnelled service (LOC-4). */
  readonly ports: PublishedPorts;
  /** Client channels by service id, so unregistering can close them at once (COMP-5). */
  private readonly serviceChannels = new Map<string, Set<Duplex>>();
  private readonly conns = new Set<ConnState>();
  /** Every accepted socket, authenticated or not, so shutdown never waits on a silent one. */
  private readonly sockets = new Set<Socket>();
  private readonly pending = new Map<string, (conn: Connection) => void>();
  private readonly preauth: FairShares;
  /** Published-port connections from users other than the service's owner (LOC-5). */
  private readonly published: PublishedShares;
  private readonly uncapped = uncappedSources();
  private channelCount = 0;
  /** Connections and channels held now, by principal (LOC-5 shares). */
  private readonly shares = new Map<string, { conns: number; channels: number }>();
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
    this.net = createNetServer((socket) => void this.accept(socket));
    this.net.maxConnections = d.limits.maxConnections;
    this.net.on('error', (err) => d.log.error({ err }, 'gateway listener error'));
    this.preauth = new FairShares({
      max: d.limits.maxUnauthenticated,
      perSource: d.limits.maxUnauthenticatedPerSource,
    });
    this.published = new PublishedShares({
      perSource: d.limits.maxPublishedPerSource,
      perService: d.limits.maxPublishedPerService,
    });
    this.ports = new PublishedPorts((serviceId, sock) => this.publishedConnection(serviceId, sock));
    d.changes.subscribe((c) => this.follow(c));
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

  /** Unauthenticated connections now. */
  get unauthenticated(): number {
    return this.preauth.size;
  }

  /**
   * Hold a tunnelled service's port for its lease (LOC-4). False when another process on this
   * host has it (the caller moves the service to another port).
   */
  hold(s: ServiceRow): Promise<HoldResult> {
    return this.ports.hold(s.id, s.port);
  }

  private event(
    actor: string | null,
    action: string,
    target: string | null,
    outcome: 'ok' | 'refused',
    source: string,
    details: Record<string, unknown> | null,
    dedupeKey?: string,
  ) {
    this.d.audit.record({ actor, action, target, outcome, source, details }, dedupeKey);
  }

  /**
   * A new TCP connection. Loopback peers are attributed to their Unix user first, so pre-auth
   * slots and failed-login penalties are counted per user, not per 127.0.0.1 (LOC-5).
   */
  private async accept(socket: Socket): Promise<void> {
    socket.setNoDelay(true);
    socket.on('error', () => socket.destroy());
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    const source = canonicalIp(socket.remoteAddress ?? '') ?? 'unknown';
    let sourceKey = `ip:${source}`;
    if (isLoopback(source)) {
      const uid = await this.d.peers.peerUid(socket);
      if (uid !== null) sourceKey = `uid:${uid}`;
    }
    if (socket.destroyed) return;
    // Refused before any SSH is spoken: one audit row per source, reason and window.
    const refuse = (reason: string, tag: string) => {
      this.event(
        null,
        'ssh.connect',
        null,
        'refused',
        source,
        { reason, source: sourceKey },
        `${tag}\0${sourceKey}`,
      );
      socket.destroy();
    };
    // PerSourcePenalties: a source that failed too many logins waits out its block.
    if (this.d.authFailures.blocked(sourceKey) > 0) return refuse('penalty', 'ssh-penalty');
    const release = this.preauth.admit(sourceKey, () =>
      refuse('pre-auth slot given to another source', 'ssh-evict'),
    );
    if (!release) return refuse('too many unauthenticated connections', 'ssh-full');
    socket.once('close', release);
    const timer = setTimeout(() => {
      this.event(
        null,
        'ssh.auth',
        null,
        'refused',
        source,
        { reason: 'authentication timeout', source: sourceKey },
        `ssh-timeout\0${sourceKey}`,
      );
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
        sourceKey,
        identity: null,
        channels: new Map(),
        open: 0,
        expiry: null,
      };
      this.conns.add(state);
      this.auditUnknownChannels(state);
      // SSH-8: an 'error' listener on every connection and channel.
      conn.on('error', () => socket.destroy());
      conn.on('close', () => this.connectionClosed(state));
      let tries = 0;
      const fail = (username: string, method: string) => {
        tries++;
        this.d.authFailures.fail(sourceKey);
        // One row per source and window, whatever user names it tries (LOG-2): the first name
        // and a count, not a row per guess.
        this.event(
          username.slice(0, 40),
          'ssh.auth',
          null,
          'refused',
          source,
          { method, source: sourceKey },
          `ssh-auth-refused\0${sourceKey}`,
        );
      };
      conn.on('authentication', (ctx) => {
        // SSH-3: after the last try nothing more is even looked at; the connection is dropped.
        // No answer at all: a rejection would invite the client to try yet another key before
        // it noticed the close.
        if (tries >= this.d.limits.maxAuthTries) {
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
        release();
        const id = state.identity!;
        // One principal's share of authenticated connections (LOC-5).
        const share = this.share(shareOf(id));
        if (share.conns >= this.d.limits.maxConnectionsPerPrincipal) {
          this.unshare(shareOf(id));
          this.event(
            actorOf(id),
            'ssh.login',
            null,
            'refused',
            source,
            {
              reason: 'too many connections for this principal',
            },
            `ssh-share\0${shareOf(id)}`,
          );
          socket.destroy();
          return;
        }
        share.conns++;
        socket.once('close', () => {
          share.conns--;
          this.unshare(shareOf(id));
        });
        // A connection lives no longer than the credential it was opened with (SES-2).
        if (id.kind === 'principal' && id.tokenExpiresAt !== null) {
          state.expiry = setTimeout(
            () => this.endConnection(state, 'token expired'),
            Math.max(0, id.tokenExpiresAt - this.d.clock.now()),
          );
          state.expiry.unref();
        }
        this.event(actorOf(id), 'ssh.login', null, 'ok', source, null);
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
      identity: {
        kind: 'principal',
        principal,
        tokenId: `ssh:${row.fingerprint}`,
        tokenExpiresAt: null,
      },
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
    const actor = actorOf(state.identity!);
    // Everything that is not a forward is refused, and audited.
    for (const type of ['session', 'openssh.streamlocal'] as const) {
      conn.on(type as 'session', (_accept: unknown, reject: () => void) => {
        this.event(actor, 'ssh.channel', null, 'refused', source, { type });
        reject();
      });
    }
    conn.on('request', (accept, reject, name, info) => {
      if (name === 'tcpip-forward' || name === 'cancel-tcpip-forward') {
        void this.reverseForward(
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

  private share(principal: string): { conns: number; channels: number } {
    let s = this.shares.get(principal);
    if (!s) this.shares.set(principal, (s = { conns: 0, channels: 0 }));
    return s;
  }

  private unshare(principal: string): void {
    const s = this.shares.get(principal);
    if (s && s.conns === 0 && s.channels === 0) this.shares.delete(principal);
  }

  /**
   * Reserve a channel under every cap — the connection's, the principal's share and the
   * gateway's — before any asynchronous step: checking the caps and counting the channel only
   * once it opened let concurrent opens all pass the check (SSH-4). `state` is null for a
   * connection to a published port. Returns the release, or null when a cap is reached.
   */
  private reserveChannel(principal: string, state: ConnState | null): (() => void) | null {
    const share = this.share(principal);
    if (
      (state && state.open >= this.d.limits.maxChannelsPerConnection) ||
      share.channels >= this.d.limits.maxChannelsPerPrincipal ||
      this.channelCount >= this.d.limits.maxChannels
    ) {
      this.unshare(principal);
      return null;
    }
    if (state) state.open++;
    share.channels++;
    this.channelCount++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (state) state.open--;
      share.channels--;
      this.channelCount--;
      this.unshare(principal);
    };
  }

  /**
   * Remember a channel so removal, changes of identity and shutdown can close it. The client's
   * own channel (`clientOf`) holds its reservation until it closes, and closes with its
   * connection. The upstream of a forward is not the connection's to close — its splice ends it
   * once what the client sent has been delivered (destroying it with the client's connection
   * dropped the tail of an upload).
   */
  private track(
    serviceId: string,
    ch: Duplex,
    clientOf?: { state: ConnState; release: () => void },
  ): void {
    if (clientOf) {
      clientOf.state.channels.set(ch, serviceId);
      ch.once('close', () => {
        clientOf.release();
        clientOf.state.channels.delete(ch);
      });
    }
    let set = this.serviceChannels.get(serviceId);
    if (!set) this.serviceChannels.set(serviceId, (set = new Set()));
    set.add(ch);
    ch.once('close', () => {
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
    const dest = `${String(info.destIP).slice(0, 64)}:${info.destPort}`;
    // Every new forward is authorised with the identity as it stands now: a revoked token, a
    // disabled principal or a demotion refuses it even on a connection opened before (SES-2).
    const identity = this.d.auth.current(state.identity!);
    if (!identity) {
      this.event(actorOf(state.identity!), 'ssh.forward', dest, 'refused', state.source, {
        reason: 'credential no longer valid',
      });
      reject();
      this.endConnection(state, 'credential no longer valid');
      return;
    }
    state.identity = identity;
    const actor = actorOf(identity);
    const decision = this.decideForward(identity, String(info.destIP), info.destPort);
    const release = decision.ok ? this.reserveChannel(shareOf(identity), state) : null;
    if (!decision.ok || !release) {
      this.event(actor, 'ssh.forward', dest, 'refused', state.source, {
        reason: decision.ok ? 'channel limit' : decision.reason,
      });
      reject();
      return;
    }
    const svc = decision.service;
    const target = `${svc.owner}/${svc.name}`;
    const refused = (reason: string) => {
      release();
      this.event(actor, 'ssh.forward', target, 'refused', state.source, { reason });
      reject();
    };
    const opened = (upstream: Duplex) => {
      if (state.socket.destroyed) {
        // The client left (or was cut off) while the upstream was being opened.
        release();
        upstream.destroy();
        return;
      }
      const ch = accept();
      this.event(actor, 'ssh.forward', target, 'ok', state.source, { dest });
      this.track(svc.id, ch, { state, release });
      this.track(svc.id, upstream);
      this.pipe(ch, upstream);
    };
    if (svc.tunnel === 'ssh') {
      const tunnel = this.tunnels.get(svc.id);
      if (!tunnel) return refused('reverse tunnel not attached');
      tunnel.conn.forwardOut(
        tunnel.bindAddr,
        tunnel.port,
        String(info.srcIP),
        info.srcPort,
        (err, upstream) => {
          if (err) return refused('the server refused the channel');
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
        if (!connected) refused('the service does not accept connections');
      });
    }
  }

  private async reverseForward(
    state: ConnState,
    name: 'tcpip-forward' | 'cancel-tcpip-forward',
    info: ssh2.TcpipBindInfo,
    accept: ((port?: number) => void) | undefined,
    reject: (() => void) | undefined,
  ): Promise<void> {
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
    const svc =
      this.d.auth.current(identity)?.kind === 'service'
        ? this.d.store.getServiceById(identity.service.id)
        : null;
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
    // The port is normally held since registration; hold it now if not (PORT-3: a port someone
    // else listens on is never acknowledged).
    if (this.ports.portOf(svc.id) !== svc.port) {
      const held = await this.hold(svc);
      if (!held.held)
        return refuse(
          held.code === 'EADDRINUSE'
            ? `port ${svc.port} is held by another process on the broker host`
            : held.code,
        );
    }
    if (state.socket.destroyed) return;
    // The newest attachment wins: a server that reconnects after a network blip replaces its
    // half-dead predecessor.
    if (this.tunnels.has(svc.id)) this.closeTunnel(svc.id, 'replaced');
    this.tunnels.set(svc.id, {
      serviceId: svc.id,
      owner: svc.owner,
      target,
      conn: state.conn,
      bindAddr: info.bindAddr,
      port: svc.port,
      channels: new Set(),
    });
    accept?.(svc.port);
    const now = this.d.clock.now();
    this.d.store.updateService(svc.id, { status: 'ready', lastSeenAt: now });
    this.event(actor, 'ssh.reverse', target, 'ok', state.source, { port: svc.port });
  }

  /**
   * A local client connected to a held port on the broker host: carry it to the server through
   * its reverse tunnel. With no tunnel attached (the server is reconnecting, or never attached)
   * the connection is reset at once: the port stays the broker's, and nobody else answers.
   *
   * Whose slot it takes depends on who connected (LOC-5), asked of the kernel before a byte is
   * carried: the owner's own Unix user (her principal's `uid`) uses her channel share, as her
   * forwards do; anyone else uses the published-port pool ({@link PublishedShares}), capped per
   * local user and per service. A user who holds connections that never present a key fills
   * neither the owner's share nor the pools of other services.
   */
  private publishedConnection(serviceId: string, sock: Socket): void {
    sock.setNoDelay(true);
    sock.on('error', () => sock.destroy());
    if (!this.tunnels.has(serviceId)) {
      sock.resetAndDestroy();
      return;
    }
    const address = canonicalIp(sock.remoteAddress ?? '') ?? 'unknown';
    this.d.peers.peerUid(sock).then(
      (uid) => this.publishedAttributed(serviceId, sock, address, uid),
      () => this.publishedAttributed(serviceId, sock, address, null),
    );
  }

  /** {@link publishedConnection} once the kernel said whose it is (`uid` null: unknown). */
  private publishedAttributed(
    serviceId: string,
    sock: Socket,
    address: string,
    uid: number | null,
  ): void {
    if (sock.destroyed) return;
    const tunnel = this.tunnels.get(serviceId);
    if (!tunnel) {
      sock.resetAndDestroy();
      return;
    }
    const sourceKey = uid === null ? `ip:${address}` : `uid:${uid}`;
    const refused = (reason: string, tag: string) =>
      // One row per service, source and reason in each audit window, however many connections.
      this.event(
        null,
        'ssh.published',
        tunnel.target,
        'refused',
        address,
        { reason, source: sourceKey },
        `${tag}\0${serviceId}\0${sourceKey}`,
      );
    const ownerUid = uid === null ? null : (this.d.store.getPrincipal(tunnel.owner)?.uid ?? null);
    let release: (() => void) | null;
    if (uid !== null && uid === ownerUid) {
      release = this.reserveChannel(tunnel.owner, null);
      if (!release) refused('channel limit', 'published-share');
    } else {
      release = this.reservePublished(serviceId, sourceKey, () => {
        refused('slot given to another source', 'published-evict');
        sock.destroy();
      });
      if (!release)
        refused(
          this.channelCount >= this.d.limits.maxChannels
            ? 'channel limit'
            : this.published.held(sourceKey) >= this.d.limits.maxPublishedPerSource &&
                !this.uncapped.has(sourceKey)
              ? 'too many connections from this source'
              : 'too many connections to this service',
          'published-full',
        );
    }
    if (!release) {
      sock.resetAndDestroy();
      return;
    }
    sock.once('close', release);
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
        if (sock.destroyed) {
          // Evicted, or the client left, while the channel was being opened.
          ch.destroy();
          return;
        }
        tunnel.channels.add(ch);
        tunnel.channels.add(sock);
        ch.once('close', () => tunnel.channels.delete(ch));
        sock.once('close', () => tunnel.channels.delete(sock));
        this.pipe(sock, ch);
      },
    );
  }

  /**
   * Reserve a published-port connection of someone other than the service's owner: a slot in
   * the published-port pool ({@link PublishedShares}) and a channel of the gateway's overall cap.
   * `evict` drops the connection if its slot is given to a newcomer. Returns the release, or null
   * when a cap is reached.
   */
  private reservePublished(
    serviceId: string,
    source: string,
    evict: () => void,
  ): (() => void) | null {
    if (this.channelCount >= this.d.limits.maxChannels) return null;
    let counted = false;
    const uncount = () => {
      if (!counted) return;
      counted = false;
      this.channelCount--;
    };
    const slot = this.published.admit(
      serviceId,
      source,
      () => {
        uncount();
        evict();
      },
      this.uncapped.has(source),
    );
    if (!slot) return null;
    counted = true;
    this.channelCount++;
    return () => {
      slot();
      uncount();
    };
  }

  /** Detach a reverse tunnel; the port stays held while the service lives. */
  private closeTunnel(serviceId: string, reason: string): void {
    const t = this.tunnels.get(serviceId);
    if (!t) return;
    this.tunnels.delete(serviceId);
    for (const ch of t.channels) ch.destroy();
    this.d.log.info({ serviceId, reason }, 'reverse tunnel closed');
  }

  private connectionClosed(state: ConnState): void {
    this.conns.delete(state);
    if (state.expiry) clearTimeout(state.expiry);
    for (const ch of state.channels.keys()) ch.destroy();
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

  /** End a connection whose identity no longer holds; its channels and tunnels close with it. */
  private endConnection(state: ConnState, reason: string): void {
    if (state.socket.destroyed) return;
    this.event(actorOf(state.identity!), 'ssh.disconnect', null, 'ok', state.source, { reason });
    state.socket.destroy();
  }

  /**
   * Follow a change of identity or registry (SES-2): connections whose credential no longer
   * holds end; a principal that keeps its connection but lost access (a demotion) loses the
   * channels it may no longer have.
   */
  private follow(c: RegistryChange): void {
    if (c.kind === 'service.removed') {
      this.serviceRemoved(c.service.id);
      // Its server's own connection (service token) ends too: the SDK learns at once, on its
      // reconnect, that the service is gone (and broker run stops the app).
      for (const state of this.conns)
        if (state.identity?.kind === 'service' && state.identity.service.id === c.service.id)
          this.endConnection(state, 'service removed');
      return;
    }
    if (c.kind === 'key.revoked') return;
    for (const state of this.conns) {
      const id = state.identity;
      if (!id) continue;
      const concerned =
        c.kind === 'principal.changed'
          ? id.kind === 'principal'
            ? id.principal.name === c.name
            : id.service.owner === c.name
          : c.kind === 'token.revoked'
            ? id.kind === 'principal' && id.tokenId === c.tokenId
            : id.kind === 'principal' &&
              id.principal.name === c.principal &&
              id.tokenId === `ssh:${c.fingerprint}`;
      if (!concerned) continue;
      const now = this.d.auth.current(id);
      if (!now) {
        this.endConnection(state, c.kind);
        continue;
      }
      state.identity = now;
      for (const [ch, serviceId] of state.channels) {
        const svc = this.d.store.getServiceById(serviceId);
        if (!svc || !canSee(now, svc)) ch.destroy();
      }
    }
  }

  /** A service left the registry: its port, tunnel and every channel to it close now (COMP-5). */
  serviceRemoved(serviceId: string): void {
    this.closeTunnel(serviceId, 'service removed');
    this.ports.release(serviceId);
    for (const ch of this.serviceChannels.get(serviceId) ?? []) ch.destroy();
    this.serviceChannels.delete(serviceId);
  }

  /** Live reverse tunnels are signs of life: they keep their services' leases and last-seen times fresh. */
  touchLive(extendedLease: (s: ServiceRow, now: number) => number): void {
    const now = this.d.clock.now();
    for (const id of this.tunnels.keys()) {
      const svc = this.d.store.getServiceById(id);
      if (!svc) continue;
      this.d.store.updateService(id, { lastSeenAt: now, expiresAt: extendedLease(svc, now) });
    }
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.net.close(() => resolve()));
    for (const id of [...this.tunnels.keys()]) this.closeTunnel(id, 'broker stopping');
    this.ports.close();
    for (const s of this.conns) s.conn.end();
    // Connections that never authenticated have nothing to finish.
    const authenticated = new Set([...this.conns].map((c) => c.socket));
    for (const s of this.sockets) if (!authenticated.has(s)) s.destroy();
    setTimeout(() => {
      for (const s of this.sockets) s.destroy();
    }, 2000).unref();
    await closed;
  }
}

/**
 * The service registry: register, get, query, unregister, ready, heartbeat, leases. All access
 * decisions live here, not in the HTTP layer: a service the caller may not see is reported exactly
 * like one that does not exist (LOC-2).
 */
import { BrokerError } from '../protocol/errors.js';
import type { RegisterRequest, RegisterResponse, Service } from '../protocol/types.js';
import type { AuditLog } from './audit.js';
import { actorOf, mintingToken, type Identity } from './auth.js';
import type { ChangeFeed } from './changes.js';
import type { IssuedCertificate, Signer } from './ca/signer.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { canonicalIp, isLocalAddress, isLoopback, probeTcp } from './net-util.js';
import {
  listenersOn,
  socketPeerUid,
  tcpSockets,
  type TcpSocketEntry,
} from '../host/socket-owner.js';
import { hashSecret, newId, newSecret } from './secrets.js';
import { serviceHostname } from '../protocol/names.js';
import { serviceJson } from './serialize.js';
import type { ServiceRow, Store } from './store/store.js';
import type { CsrCheck } from './ca/csr.js';

export interface RegistryDeps {
  store: Store;
  config: Config;
  clock: Clock;
  audit: AuditLog;
  signer: Signer;
  csr: CsrCheck;
  publicHost: string;
  changes: ChangeFeed;
  /** Probe a port for `ready` (tests may replace it). */
  probe?: (host: string, port: number) => Promise<boolean>;
  /** Holds tunnelled services' ports on the broker host for their lease (the gateway, LOC-4). */
  ports?: { hold(s: ServiceRow): Promise<{ held: true } | { held: false; code: string }> };
}

/** The peer of an API request, for attributing it to a local Unix user. */
export interface RequestPeer {
  localAddress?: string;
  localPort?: number;
  remoteAddress?: string;
  remotePort?: number;
}

/** How many other ports a registration tries when the one it got is taken on the host. */
const HOLD_ATTEMPTS = 8;

const notFound = (owner: string, name: string) =>
  new BrokerError('service_not_found', `no service ${owner}/${name}`);

/** May this identity see (get/load) this service? */
export function canSee(id: Identity, s: ServiceRow): boolean {
  if (id.kind === 'service') return id.service.id === s.id;
  return principalMaySee(id.principal, s);
}

/** The principal part of canSee: its owner or an admin. Checked again at every verify (SES-2). */
export function principalMaySee(p: { name: string; role: string }, s: ServiceRow): boolean {
  return p.role === 'admin' || p.name === s.owner;
}

export class ServiceRegistry {
  constructor(private readonly d: RegistryDeps) {}

  private requirePrincipal(id: Identity): Extract<Identity, { kind: 'principal' }> {
    if (id.kind !== 'principal')
      throw new BrokerError('forbidden', 'a service token cannot do this; use a user token');
    return id;
  }

  /** The service named, if the caller may see it; otherwise service_not_found. */
  find(id: Identity, owner: string, name: string): ServiceRow {
    const s = this.d.store.getService(owner, name);
    if (!s || !canSee(id, s)) throw notFound(owner, name);
    return s;
  }

  /** The service named, if the identity is that service's own token. */
  private own(id: Identity, owner: string, name: string): ServiceRow {
    const s = this.find(id, owner, name);
    if (id.kind !== 'service')
      throw new BrokerError('forbidden', 'only the service token of this service may do this');
    return s;
  }

  async register(id: Identity, req: RegisterRequest, source: string): Promise<RegisterResponse> {
    const who = this.requirePrincipal(id);
    const caller = who.principal;
    const { config, clock, store } = this.d;
    const mode = req.mode ?? 'tcp';
    const tunnel = req.tunnel ?? 'ssh';
    const host = this.chooseHost(tunnel, req.host, source, caller.role === 'admin');
    if (req.port !== undefined && tunnel !== 'none') {
      throw new BrokerError(
        'validation_failed',
        'port may only be chosen with tunnel "none"; the broker allocates tunnel ports',
      );
    }
    const ttlSeconds = req.ttlSeconds ?? config.serviceTtlSeconds;
    if (ttlSeconds > config.serviceMaxTtlSeconds) {
      throw new BrokerError(
        'validation_failed',
        `ttlSeconds may be at most ${config.serviceMaxTtlSeconds}`,
      );
    }
    if (req.csr !== undefined && mode !== 'https') {
      throw new BrokerError('validation_failed', 'csr is only accepted with mode "https"');
    }
    const spki = req.csr !== undefined ? await this.d.csr(req.csr) : undefined;
    // Issued before the insert (everything it needs is known), so the registration and its
    // certificate are one transaction and nothing needs undoing if issuing fails.
    const now = clock.now();
    const serviceToken = newSecret('service');
    const sid = newId('svc');
    const cert =
      mode === 'https'
        ? await this.issue({ owner: caller.name, name: req.name, id: sid }, spki)
        : null;
    // The service token ends no later than the token that registered it (SES-2).
    const expiresAt = Math.min(now + ttlSeconds * 1000, who.tokenExpiresAt ?? Infinity);
    if (expiresAt <= now) throw new BrokerError('unauthenticated', 'your token has expired');
    const row = store.registerService(
      {
        id: sid,
        owner: caller.name,
        name: req.name,
        mode,
        tunnel,
        host,
        status: 'pending',
        tokenHash: hashSecret(serviceToken),
        ttlSeconds,
        createdAt: now,
        expiresAt,
        certFingerprint: cert?.fingerprint ?? null,
        certNotAfter: cert?.notAfter.getTime() ?? null,
        labels: req.labels ?? {},
        tokenId: mintingToken(id),
        exposure: req.exposure ?? null,
      },
      { min: config.portMin, max: config.portMax, now, requested: req.port },
    );
    const held = tunnel === 'ssh' ? await this.holdPort(row, 'registered') : row;
    if (cert) this.auditCert(held, cert, spki !== undefined);
    this.d.audit.record({
      actor: caller.name,
      action: 'service.register',
      target: `${held.owner}/${held.name}`,
      outcome: 'ok',
      source,
      details: {
        port: held.port,
        mode,
        tunnel,
        ...(held.exposure ? { exposure: held.exposure } : {}),
      },
    });
    return { service: serviceJson(held), serviceToken, ...(cert ? { tls: this.tlsOf(cert) } : {}) };
  }

  /**
   * Hold a tunnelled service's port on the broker host (LOC-4). A port another process has is
   * never handed out: the service moves to another one (the old one cools down). A service that
   * had clients (`why` = `restart`) loses its keys first: while someone else held its port, the
   * keys clients sent there may have been collected. Throws port_range_exhausted when no port can
   * be held (and, for a new registration, removes it).
   */
  async holdPort(s: ServiceRow, why: 'registered' | 'restart'): Promise<ServiceRow> {
    const ports = this.d.ports;
    if (!ports) return s;
    let current = s;
    for (let attempt = 0; ; attempt++) {
      const r = await ports.hold(current);
      if (r.held) return current;
      const holders = r.code === 'EADDRINUSE' ? await this.holdersOf(current.port) : [];
      const target = `${current.owner}/${current.name}`;
      const keyIds = why === 'restart' ? this.d.store.deleteKeysOfService(current.id) : [];
      for (const keyId of keyIds) this.d.changes.publish({ kind: 'key.revoked', keyId });
      this.d.audit.record({
        actor: null,
        action: why === 'restart' ? 'port.squatted' : 'port.in-use',
        target,
        outcome: 'refused',
        source: null,
        details: {
          port: current.port,
          code: r.code,
          uids: holders,
          ...(why === 'restart' ? { keysRevoked: keyIds.length } : {}),
        },
      });
      const now = this.d.clock.now();
      const cooldownUntil = now + this.d.config.portCooldownSeconds * 1000;
      const policy = { min: this.d.config.portMin, max: this.d.config.portMax, now };
      let moved: ServiceRow | null = null;
      try {
        if (attempt < HOLD_ATTEMPTS)
          moved = this.d.store.reassignPort(current.id, policy, cooldownUntil);
      } catch (err) {
        if (!(err instanceof BrokerError) || err.code !== 'port_range_exhausted') throw err;
      }
      if (!moved) {
        if (why === 'registered') {
          this.d.store.removeService(current.id, cooldownUntil);
          throw new BrokerError(
            'port_range_exhausted',
            `no port in ${policy.min}-${policy.max} could be held on the broker host; try again later`,
          );
        }
        return current;
      }
      current = moved;
    }
  }

  /** The UIDs listening on a port of this host (for the audit of a taken port). */
  private async holdersOf(port: number): Promise<number[]> {
    try {
      return [...new Set((await listenersOn(port)).map((l) => l.uid))];
    } catch {
      return [];
    }
  }

  /**
   * A service certificate under broker policy: the broker chooses names and lifetime (COMP-3).
   * It names the service's own host name and nothing else — no `localhost`, no address — so a
   * client that checks only the CA and the host name reaches no other service with it (SES-3).
   */
  private issue(
    s: { owner: string; name: string; id: string },
    spki: ArrayBuffer | undefined,
  ): Promise<IssuedCertificate> {
    // …and the hosts under it that each browser login gets (`s<random>.NAME.OWNER.localhost`,
    // so a session cookie never goes to a page someone else serves on the service's name).
    const names = [serviceHostname(s)];
    if (this.d.config.serviceDomain) names.push(serviceHostname(s, this.d.config.serviceDomain));
    const dnsNames = names.flatMap((n) => [n, `*.${n}`]);
    return this.d.signer.issue({
      commonName: `${s.owner}/${s.name}`,
      dnsNames,
      ipAddresses: [],
      usage: 'server',
      publicKeySpki: spki,
    });
  }

  private auditCert(s: ServiceRow, cert: IssuedCertificate, csr: boolean): void {
    this.d.audit.record({
      actor: `${s.owner}/${s.name}#service`,
      action: 'cert.issue',
      target: `${s.owner}/${s.name}`,
      outcome: 'ok',
      source: null,
      details: { fingerprint: cert.fingerprint, notAfter: cert.notAfter.toISOString(), csr },
    });
  }

  private tlsOf(cert: IssuedCertificate): NonNullable<RegisterResponse['tls']> {
    return {
      cert: cert.certPem,
      ca: this.d.signer.caCertPem,
      ...(cert.keyPem ? { key: cert.keyPem } : {}),
    };
  }

  /** Renew an https service's certificate (its own token), from a CSR or with a new key. */
  async renewCert(id: Identity, owner: string, name: string, csr: string | undefined) {
    const s = this.own(id, owner, name);
    if (s.mode !== 'https')
      throw new BrokerError(
        'validation_failed',
        `${owner}/${name} is a tcp service; it has no certificate`,
      );
    const spki = csr !== undefined ? await this.d.csr(csr) : undefined;
    const cert = await this.issue(s, spki);
    const service = this.d.store.updateService(s.id, {
      certFingerprint: cert.fingerprint,
      certNotAfter: cert.notAfter.getTime(),
    });
    if (!service) throw notFound(owner, name);
    this.auditCert(service, cert, spki !== undefined);
    return { service: serviceJson(service), tls: this.tlsOf(cert) };
  }

  /**
   * Where the service listens. Tunnelled services are published on the broker's loopback. For
   * `tunnel: none` the host must be an IP literal (no DNS) and, for non-admins, the address the
   * request came from — otherwise the gateway could be pointed at someone else's host.
   */
  private chooseHost(
    tunnel: string,
    requested: string | undefined,
    source: string,
    admin: boolean,
  ): string {
    if (tunnel === 'ssh') {
      if (requested !== undefined && canonicalIp(requested) !== '127.0.0.1') {
        throw new BrokerError(
          'validation_failed',
          'host cannot be set for tunnel "ssh": the broker publishes it on 127.0.0.1',
        );
      }
      return '127.0.0.1';
    }
    const src = canonicalIp(source) ?? '127.0.0.1';
    if (requested === undefined) return src;
    const ip = canonicalIp(requested);
    if (!ip)
      throw new BrokerError(
        'validation_failed',
        'host must be an IP address (the broker never resolves names)',
      );
    if (!admin && ip !== src && !(isLoopback(ip) && isLoopback(src))) {
      throw new BrokerError(
        'validation_failed',
        `host must be the address you register from (${src}); ask an admin to register other hosts`,
      );
    }
    return ip;
  }

  /** The Unix user behind a loopback API request, or null (remote, or not attributable). */
  private async callerUid(peer: RequestPeer): Promise<number | null> {
    try {
      return await socketPeerUid(peer);
    } catch {
      return null;
    }
  }

  /**
   * Who listens where clients of `s` connect: `ours` (uid), another user, or nobody. For a
   * service on loopback that is every loopback address on its port, not only its own: its name
   * (`NAME.OWNER.localhost`) resolves to ::1 as well as 127.0.0.1 — browsers try ::1 first — so
   * another user's listener on the loopback twin would receive its clients, their keys and the
   * TLS server name of their sessions (pen test 2). Any such listener counts as a squat.
   */
  private async listenerOwner(
    s: ServiceRow,
    uid: number,
    table?: TcpSocketEntry[],
  ): Promise<'ours' | 'nobody' | { uid: number }> {
    const onLoopback = isLoopback(s.host);
    const rows = (table ?? (await tcpSockets())).filter(
      (t) =>
        t.state === 'LISTEN' &&
        t.local.port === s.port &&
        (t.local.address === s.host ||
          t.local.address === '0.0.0.0' ||
          t.local.address === '::' ||
          (onLoopback && isLoopback(t.local.address))),
    );
    // The most specific bind takes the connection: the service's own address first.
    const exact =
      rows.find((t) => t.local.address === s.host) ??
      rows.find((t) => t.local.address === '0.0.0.0' || t.local.address === '::');
    if (!exact) return 'nobody';
    if (exact.uid !== uid) return { uid: exact.uid };
    const twin = rows.find((t) => t.uid !== uid);
    return twin ? { uid: twin.uid } : 'ours';
  }

  private lastProbe = new Map<string, number>();

  /**
   * Watch `tunnel: none` services that are ready (LOC-4, LOC-5): on the broker host, one read of
   * the socket table checks that each one's listener is still there and still its user's; a
   * service whose listener went away or changed hands goes offline and loses its keys (whoever
   * binds the free port next would collect them). Elsewhere, services that do not heartbeat are
   * probed every third of the grace, so a server that died without a word goes offline within the
   * grace.
   */
  async watchDirect(): Promise<void> {
    const { store, clock, config } = this.d;
    const now = clock.now();
    const rows = store.listServices().filter((s) => s.tunnel === 'none' && s.status === 'ready');
    if (rows.length === 0) return;
    let table: TcpSocketEntry[] | null = null;
    if (rows.some((s) => isLocalAddress(s.host))) table = await tcpSockets().catch(() => null);
    const every = (config.heartbeatGraceSeconds * 1000) / 3;
    const graceAgo = now - config.heartbeatGraceSeconds * 1000;
    const probes: Promise<void>[] = [];
    for (const s of rows) {
      if (isLocalAddress(s.host) && table) {
        const who = await this.listenerOwner(s, s.uid ?? -1, table);
        if (who === 'ours' || (who !== 'nobody' && s.uid === null)) continue;
        this.lose(
          s,
          who === 'nobody' ? 'nothing listens on its port any more' : 'its port changed hands',
          who === 'nobody' ? null : who.uid,
        );
        continue;
      }
      if (s.heartbeatAt !== null && s.heartbeatAt >= graceAgo) continue;
      if (now - (this.lastProbe.get(s.id) ?? 0) < every) continue;
      this.lastProbe.set(s.id, now);
      const probe = this.d.probe ?? probeTcp;
      probes.push(
        probe(s.host, s.port).then((up) => {
          if (!up) this.lose(s, 'it stopped answering', null, false);
        }),
      );
      if (probes.length >= 16) await Promise.all(probes.splice(0));
    }
    await Promise.all(probes);
    for (const id of this.lastProbe.keys())
      if (!rows.some((s) => s.id === id)) this.lastProbe.delete(id);
  }

  /** A tunnel "none" service went away: offline, and (on the broker host) its keys revoked. */
  private lose(s: ServiceRow, reason: string, squatter: number | null, revoke = true): void {
    const current = this.d.store.getServiceById(s.id);
    if (!current || current.status !== 'ready') return;
    this.d.store.updateService(s.id, { status: 'offline' });
    const keyIds = revoke ? this.d.store.deleteKeysOfService(s.id) : [];
    for (const keyId of keyIds) this.d.changes.publish({ kind: 'key.revoked', keyId });
    this.d.audit.record({
      actor: null,
      action: squatter === null ? 'service.offline' : 'port.squatted',
      target: `${s.owner}/${s.name}`,
      outcome: squatter === null ? 'ok' : 'refused',
      source: null,
      details: {
        reason,
        ...(squatter !== null ? { uid: squatter, port: s.port } : {}),
        ...(keyIds.length ? { keysRevoked: keyIds.length } : {}),
      },
    });
  }

  get(id: Identity, owner: string, name: string): Service {
    return serviceJson(this.find(id, owner, name));
  }

  query(
    id: Identity,
    q: { match?: string; limit: number; cursor?: string },
  ): { services: Service[]; nextCursor?: string } {
    let after: { owner: string; name: string } | undefined;
    if (q.cursor !== undefined) {
      const [owner, name] = Buffer.from(q.cursor, 'base64url').toString('utf8').split('/');
      if (!owner || !name)
        throw new BrokerError('validation_failed', 'cursor is not one this broker issued');
      after = { owner, name };
    }
    let owner: string | undefined;
    if (id.kind === 'service') owner = id.service.owner;
    else if (id.principal.role !== 'admin') owner = id.principal.name;
    const rows = this.d.store.queryServices({
      owner,
      glob: q.match,
      globFull: q.match?.includes('/'),
      after,
      limit: q.limit + 1,
    });
    const visible = (
      id.kind === 'service' ? rows.filter((s) => s.id === id.service.id) : rows
    ).slice(0, q.limit);
    const more = rows.length > q.limit;
    const last = visible[visible.length - 1];
    return {
      services: visible.map(serviceJson),
      ...(more && last
        ? { nextCursor: Buffer.from(`${last.owner}/${last.name}`).toString('base64url') }
        : {}),
    };
  }

  unregister(id: Identity, owner: string, name: string, source: string): void {
    const s = this.find(id, owner, name);
    const now = this.d.clock.now();
    if (this.d.store.removeService(s.id, now + this.d.config.portCooldownSeconds * 1000)) {
      this.d.audit.record({
        actor: actorOf(id),
        action: 'service.unregister',
        target: `${owner}/${name}`,
        outcome: 'ok',
        source,
        details: null,
      });
      this.d.changes.publish({ kind: 'service.removed', service: s, reason: 'unregistered' });
    }
  }

  async ready(
    id: Identity,
    owner: string,
    name: string,
    source: string,
    peer?: RequestPeer,
  ): Promise<Service> {
    const s = this.own(id, owner, name);
    if (s.tunnel === 'ssh') {
      throw new BrokerError(
        'service_not_ready',
        'a tunnelled service becomes ready when its reverse tunnel attaches to the gateway',
      );
    }
    // LOC-5: on the broker host, the listener must belong to the Unix user confirming it — a
    // port another user bound first is never acknowledged as this service.
    const uid = isLocalAddress(s.host) && peer ? await this.callerUid(peer) : null;
    if (uid !== null) {
      const mine = await this.listenerOwner(s, uid);
      if (mine !== 'ours')
        throw new BrokerError(
          'service_not_ready',
          mine === 'nobody'
            ? `nothing listens on ${s.host}:${s.port}; start the server on that port first`
            : `${s.host}:${s.port} is held by another user (uid ${mine.uid}), not by you (uid ${uid}); ` +
                'unregister and register again for another port',
        );
    } else {
      const probe = this.d.probe ?? probeTcp;
      if (!(await probe(s.host, s.port))) {
        throw new BrokerError(
          'service_not_ready',
          `nothing accepts connections on ${s.host}:${s.port}; start the server on that port first`,
        );
      }
    }
    const now = this.d.clock.now();
    if (uid !== null) this.d.store.setServiceUid(s.id, uid);
    const updated = this.d.store.updateService(s.id, { status: 'ready', lastSeenAt: now });
    if (!updated) throw notFound(owner, name);
    this.d.audit.record({
      actor: actorOf(id),
      action: 'service.ready',
      target: `${owner}/${name}`,
      outcome: 'ok',
      source,
      details: null,
    });
    return serviceJson(updated);
  }

  /**
   * The lease a sign of life extends to: the service's TTL from now, never past the end of the
   * token that registered it, never shorter than it already is.
   */
  extendedLease(s: ServiceRow, now: number): number {
    const ttl = Math.min(s.ttlSeconds, this.d.config.serviceMaxTtlSeconds);
    const cap = s.tokenId ? (this.d.store.getToken(s.tokenId)?.expiresAt ?? null) : null;
    return Math.max(s.expiresAt, Math.min(now + ttl * 1000, cap ?? Infinity));
  }

  heartbeat(id: Identity, owner: string, name: string): Service {
    const s = this.own(id, owner, name);
    const now = this.d.clock.now();
    const updated = this.d.store.updateService(s.id, {
      expiresAt: this.extendedLease(s, now),
      lastSeenAt: now,
      heartbeatAt: now,
      ...(s.status === 'offline' && s.tunnel === 'none' ? { status: 'ready' as const } : {}),
    });
    if (!updated) throw notFound(owner, name);
    return serviceJson(updated);
  }

  /** One pass of lease housekeeping: stale → offline, expired → removed. */
  sweep(): { offline: ServiceRow[]; reaped: ServiceRow[] } {
    const { store, clock, config } = this.d;
    const now = clock.now();
    const offline = store.markStale(now - config.heartbeatGraceSeconds * 1000);
    const reaped = store.reapExpired(now, config.portCooldownSeconds);
    store.deleteExpiredKeys(now);
    store.deleteExpiredClientCerts(now);
    for (const s of offline) {
      this.d.audit.record({
        actor: null,
        action: 'service.offline',
        target: `${s.owner}/${s.name}`,
        outcome: 'ok',
        source: null,
        details: { reason: 'heartbeats missed' },
      });
    }
    for (const s of reaped) {
      this.d.audit.record({
        actor: null,
        action: 'service.reap',
        target: `${s.owner}/${s.name}`,
        outcome: 'ok',
        source: null,
        details: { reason: 'lease expired' },
      });
      this.d.changes.publish({ kind: 'service.removed', service: s, reason: 'lease expired' });
    }
    return { offline, reaped };
  }
}

/**
 * The service registry: register, get, query, unregister, ready, heartbeat, leases. All access
 * decisions live here, not in the HTTP layer: a service the caller may not see is reported exactly
 * like one that does not exist (LOC-2).
 */
import { BrokerError } from '../protocol/errors.js';
import type { RegisterRequest, RegisterResponse, Service } from '../protocol/types.js';
import type { AuditLog } from './audit.js';
import { actorOf, type Identity } from './auth.js';
import type { IssuedCertificate, Signer } from './ca/signer.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { canonicalIp, isLoopback, probeTcp } from './net-util.js';
import { hashSecret, newId, newSecret } from './secrets.js';
import { serviceJson } from './serialize.js';
import type { ServiceRow, Store } from './store/store.js';
import type { CsrCheck } from './ca/csr.js';

export interface ServiceEvents {
  /** A service left the registry (unregistered, reaped, owner removed): tunnels must close. */
  removed(service: ServiceRow, reason: string): void;
}

export interface RegistryDeps {
  store: Store;
  config: Config;
  clock: Clock;
  audit: AuditLog;
  signer: Signer;
  csr: CsrCheck;
  publicHost: string;
  events?: ServiceEvents;
  /** Probe a port for `ready` (tests may replace it). */
  probe?: (host: string, port: number) => Promise<boolean>;
}

const notFound = (owner: string, name: string) =>
  new BrokerError('service_not_found', `no service ${owner}/${name}`);

/** May this identity see (get/load) this service? */
export function canSee(id: Identity, s: ServiceRow): boolean {
  if (id.kind === 'service') return id.service.id === s.id;
  return id.principal.role === 'admin' || id.principal.name === s.owner;
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
    const caller = this.requirePrincipal(id).principal;
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
    const cert = mode === 'https' ? await this.issue(caller.name, req.name, host, spki) : null;
    const now = clock.now();
    const serviceToken = newSecret('service');
    const sid = newId('svc');
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
        expiresAt: now + ttlSeconds * 1000,
        certFingerprint: cert?.fingerprint ?? null,
        certNotAfter: cert?.notAfter.getTime() ?? null,
        labels: req.labels ?? {},
        tokenId: id.kind === 'principal' ? id.tokenId : null,
        exposure: req.exposure ?? null,
      },
      { min: config.portMin, max: config.portMax, now, requested: req.port },
    );
    if (cert) this.auditCert(row, cert, spki !== undefined);
    this.d.audit.record({
      actor: caller.name,
      action: 'service.register',
      target: `${row.owner}/${row.name}`,
      outcome: 'ok',
      source,
      details: {
        port: row.port,
        mode,
        tunnel,
        ...(row.exposure ? { exposure: row.exposure } : {}),
      },
    });
    return { service: serviceJson(row), serviceToken, ...(cert ? { tls: this.tlsOf(cert) } : {}) };
  }

  /** A service certificate under broker policy: the broker chooses names and lifetime. */
  private issue(
    owner: string,
    name: string,
    host: string,
    spki: ArrayBuffer | undefined,
  ): Promise<IssuedCertificate> {
    return this.d.signer.issue({
      commonName: `${owner}/${name}`,
      ...this.certNames(host),
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
    const cert = await this.issue(s.owner, s.name, s.host, spki);
    const service = this.d.store.updateService(s.id, {
      certFingerprint: cert.fingerprint,
      certNotAfter: cert.notAfter.getTime(),
    });
    if (!service) throw notFound(owner, name);
    this.auditCert(service, cert, spki !== undefined);
    return { service: serviceJson(service), tls: this.tlsOf(cert) };
  }

  /** SANs for a service certificate: chosen by the broker, never by the caller (COMP-3). */
  private certNames(host: string): { dnsNames: string[]; ipAddresses: string[] } {
    const dns = new Set(['localhost']);
    const ips = new Set(['127.0.0.1', '::1']);
    if (canonicalIp(host)) ips.add(canonicalIp(host)!);
    const pub = this.d.publicHost;
    if (canonicalIp(pub)) ips.add(canonicalIp(pub)!);
    else dns.add(pub);
    return { dnsNames: [...dns], ipAddresses: [...ips] };
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
      this.d.events?.removed(s, 'unregistered');
    }
  }

  async ready(id: Identity, owner: string, name: string, source: string): Promise<Service> {
    const s = this.own(id, owner, name);
    if (s.tunnel === 'ssh') {
      throw new BrokerError(
        'service_not_ready',
        'a tunnelled service becomes ready when its reverse tunnel attaches to the gateway',
      );
    }
    const probe = this.d.probe ?? probeTcp;
    if (!(await probe(s.host, s.port))) {
      throw new BrokerError(
        'service_not_ready',
        `nothing accepts connections on ${s.host}:${s.port}; start the server on that port first`,
      );
    }
    const now = this.d.clock.now();
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

  heartbeat(id: Identity, owner: string, name: string): Service {
    const s = this.own(id, owner, name);
    const now = this.d.clock.now();
    const ttl = Math.min(s.ttlSeconds, this.d.config.serviceMaxTtlSeconds);
    const updated = this.d.store.updateService(s.id, {
      expiresAt: Math.max(s.expiresAt, now + ttl * 1000),
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
      this.d.events?.removed(s, 'lease expired');
    }
    return { offline, reaped };
  }
}

/**
 * The composition root: createBroker() wires config, state dir, store, CA, audit, domain services
 * and the HTTPS API. Nothing is a module-level singleton; the clock and logger are injected.
 */
import { BrokerError } from '../protocol/errors.js';
import { existsSync, readFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import type { Logger } from 'pino';
import { createLogger } from './logger.js';
import { PRINCIPAL_RE } from '../protocol/names.js';
import { AuditLog } from './audit.js';
import { Authenticator, PrincipalCache } from './auth.js';
import { LoginService } from './identity/login.js';
import { MungeDecoder } from './identity/munge.js';
import { NssDirectory } from './identity/nss.js';
import { ChangeFeed } from './changes.js';
import { checkCsr } from './ca/csr.js';
import { LocalCA, type CaNameConstraints } from './ca/local-ca.js';
import { systemClock, type Clock } from './clock.js';
import { splitHostPort, type Config } from './config.js';
import { KeyService } from './keys.js';
import { PromMetrics } from './metrics.js';
import { FailureLimiter } from './limiter.js';
import { canonicalIp } from './net-util.js';
import { PrincipalAdmin } from './principals.js';
import { ServiceRegistry } from './services.js';
import { StateDir } from './state-dir.js';
import { SqliteStore } from './store/sqlite-store.js';
import type { Store } from './store/store.js';
import { unprivilegedPortStart } from '../host/socket-owner.js';
import { ServerOwners } from '../host/sock-diag.js';
import { createApp } from './http/app.js';
import { createHttpsServer } from './http/server.js';
import { createVerifyHandler } from './http/verify-fast-path.js';
import { failureBudget } from './http/respond.js';
import { Gateway } from './ssh/gateway.js';
import { loadOrCreateHostKey } from './ssh/host-key.js';
import { createRequire } from 'node:module';

/** Is ssh2's native crypto binding loaded? Without it tunnels run ≈ 4× slower (PERFORMANCE.md fact 2). */
function sshNativeCrypto(): boolean {
  try {
    return (
      (createRequire(import.meta.url)('ssh2/lib/protocol/crypto') as { bindingAvailable?: boolean })
        .bindingAvailable === true
    );
  } catch {
    return false;
  }
}

export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

function loadOpenApi(): unknown {
  const url = new URL('../../docs/api/openapi.json', import.meta.url);
  return existsSync(url) ? (JSON.parse(readFileSync(url, 'utf8')) as unknown) : null;
}

/** Credentials file written for the local admin (DESIGN §3, last step of discovery). */
export interface CredentialsFile {
  url: string;
  token: string;
  ca: string;
}

export interface BrokerOptions {
  config: Config;
  clock?: Clock;
  log?: Logger;
  /** Replace the SQLite store (tests). */
  store?: Store;
}

export interface Broker {
  readonly url: string;
  readonly config: Config;
  readonly store: Store;
  readonly log: Logger;
  /** Write buffered log lines now (fatal paths). */
  flushLog(): void;
  readonly credentialsPath: string;
  readonly caCertPem: string;
  /** Stop accepting, drain in-flight requests (up to `graceMs`), flush and close. */
  close(graceMs?: number): Promise<void>;
}

function safeUserName(): string | null {
  try {
    return userInfo().username;
  } catch {
    return null;
  }
}

/** The bootstrap admin: the Unix user's name when it is a valid principal name, else `admin`. */
function bootstrapAdminName(): string {
  try {
    const name = userInfo().username;
    if (PRINCIPAL_RE.test(name)) return name;
  } catch {
    /* no passwd entry */
  }
  return 'admin';
}

/**
 * What the broker CA may name (SES-3): loopback and `*.localhost` (the services and the API on
 * this host), the API's own names, and the site's service domain. Nothing else verifies under it.
 */
export function caConstraints(
  config: Config,
  publicHost: string,
  listenHost: string | null,
): CaNameConstraints {
  const dnsNames = new Set(['localhost']);
  const ipRanges = new Set(['127.0.0.0/8', '::1/128']);
  for (const h of [publicHost, listenHost, config.serviceDomain]) {
    if (!h) continue;
    const ip = canonicalIp(h);
    if (ip) ipRanges.add(ip.includes(':') ? `${ip}/128` : `${ip}/32`);
    else dnsNames.add(h.toLowerCase());
  }
  return { dnsNames: [...dnsNames], ipRanges: [...ipRanges] };
}

function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

export async function createBroker(opts: BrokerOptions): Promise<Broker> {
  const { config } = opts;
  const clock = opts.clock ?? systemClock;
  const own = opts.log ? null : createLogger(config.logLevel);
  const log = opts.log ?? own!.log;
  const flushLog = () => own?.flush();
  failureBudget(log, config.logFailuresPerSecond);

  const dir = StateDir.open(config.dataDir);
  const lock = await dir.lock();
  const closers: (() => void)[] = [() => lock.close()];
  try {
    const store = opts.store ?? new SqliteStore(dir.file('db'));
    closers.unshift(() => store.close());
    log.info(
      { store: store.kind, pragmas: store.pragmas(), dataDir: config.dataDir },
      'store open',
    );

    const listen = splitHostPort(config.listen);
    const ssh = splitHostPort(config.sshListen);
    const wildcard = listen.host === '0.0.0.0' || listen.host === '::';
    const publicHost = config.publicHost ?? (wildcard ? '127.0.0.1' : listen.host);
    const ca = await LocalCA.open(
      dir,
      {
        minSeconds: config.certMinLifetimeSeconds,
        defaultSeconds: config.certDefaultLifetimeSeconds,
        maxSeconds: config.certMaxLifetimeSeconds,
      },
      { constraints: caConstraints(config, publicHost, wildcard ? null : listen.host) },
    );

    const audit = new AuditLog(store, clock, (err) => log.error({ err }, 'audit write failed'));
    // Every change of identity or registry that live state must follow (SES-2): the caches, the
    // gateway's connections and tunnels subscribe as they are built below.
    const changes = new ChangeFeed((err, change) =>
      log.error({ err, change: change.kind }, 'a listener failed to follow a change'),
    );
    changes.subscribe((c) => {
      if (c.kind === 'service.removed')
        log.info(
          { service: `${c.service.owner}/${c.service.name}`, reason: c.reason },
          'service removed',
        );
    });
    const gatewayRef: { port: number; gateway: Gateway | null } = { port: ssh.port, gateway: null };
    // Attributes loopback connections to local Unix users (API and gateway shares, LOC-5): the
    // kernel's exact socket lookup over netlink, or the /proc tables where that cannot run.
    const peers = new ServerOwners();
    closers.unshift(() => peers.close());
    let gatewayStats = { tunnels: () => 0, channels: () => 0, bytes: () => 0 };
    const metrics = new PromMetrics({
      servicesByStatus: () => {
        const counts: Record<string, number> = { pending: 0, ready: 0, offline: 0 };
        for (const s of store.listServices()) counts[s.status] = (counts[s.status] ?? 0) + 1;
        return counts;
      },
      tunnelsOpen: () => gatewayStats.tunnels(),
      channelsOpen: () => gatewayStats.channels(),
      gatewayBytes: () => gatewayStats.bytes(),
    });
    const hostKey = loadOrCreateHostKey(dir);
    const registry = new ServiceRegistry({
      store,
      config,
      clock,
      audit,
      signer: ca,
      csr: checkCsr,
      publicHost,
      changes,
      ports: { hold: (s) => gatewayRef.gateway!.hold(s) },
    });
    const keys = new KeyService({
      store,
      config,
      clock,
      audit,
      registry,
      caCertPem: ca.caCertPem,
      publicHost,
      sshPort: () => gatewayRef.port,
      metrics,
      limiter: new FailureLimiter(
        {
          maxFailures: config.verifyMaxFailures,
          windowMs: config.verifyFailureWindowSeconds * 1000,
          baseBlockMs: config.verifyBlockSeconds * 1000,
          maxBlockMs: config.verifyMaxBlockSeconds * 1000,
          maxEntries: config.limiterMaxEntries,
        },
        clock,
      ),
      sshHostKey: hostKey.publicKey,
      principals: new PrincipalCache(store, clock, changes),
      changes,
    });
    const principals = new PrincipalAdmin({
      signer: ca,
      csr: checkCsr,
      clientCertSeconds: config.keyTtlSeconds,
      store,
      clock,
      audit,
      portCooldownSeconds: config.portCooldownSeconds,
      changes,
    });
    const auth = new Authenticator(store, clock, changes);
    // Identity the cluster already has (issue 12): MUNGE credentials, and the owner of a loopback
    // connection; both through the host's NSS and the site policy.
    const idc = config.identity;
    const mungeDecoder = idc.munge.enabled ? new MungeDecoder(idc.munge) : null;
    if (mungeDecoder) closers.unshift(() => mungeDecoder.close());
    const login = new LoginService({
      store,
      clock,
      audit,
      config,
      changes,
      munge: mungeDecoder,
      nss: new NssDirectory(idc.nssCacheSeconds),
      peers,
      failures: new FailureLimiter(
        {
          maxFailures: 30,
          windowMs: 60_000,
          baseBlockMs: 10_000,
          maxBlockMs: 900_000,
          maxEntries: config.limiterMaxEntries,
        },
        clock,
      ),
    });

    // DUR-4: reverse tunnels died with the previous process; their servers reattach.
    for (const s of store.markTunnelsOffline()) {
      log.info({ service: `${s.owner}/${s.name}` }, 'offline until its reverse tunnel reattaches');
    }
    const gateway = new Gateway({
      config,
      store,
      auth,
      audit,
      log,
      clock,
      hostKey,
      limits: {
        authTimeoutMs: config.sshAuthTimeoutSeconds * 1000,
        maxAuthTries: config.sshMaxAuthTries,
        maxUnauthenticated: config.sshMaxUnauthenticated,
        maxUnauthenticatedPerSource: config.sshMaxUnauthenticatedPerSource,
        maxConnections: config.sshMaxConnections,
        maxChannelsPerConnection: config.sshMaxChannelsPerConnection,
        maxChannels: config.sshMaxChannels,
        maxConnectionsPerPrincipal: config.sshMaxConnectionsPerPrincipal,
        maxChannelsPerPrincipal: config.sshMaxChannelsPerPrincipal,
        maxPublishedPerSource: config.sshMaxPublishedPerSource,
        maxPublishedPerService: config.sshMaxPublishedPerService,
      },
      changes,
      peers,
      authFailures: new FailureLimiter(
        {
          maxFailures: config.sshMaxAuthFailuresPerSource,
          windowMs: 60_000,
          baseBlockMs: 10_000,
          maxBlockMs: 900_000,
          maxEntries: config.limiterMaxEntries,
        },
        clock,
      ),
    });
    gatewayRef.gateway = gateway;
    // LOC-4: every live tunnelled service's port is held before the API answers anything, so a
    // port taken while the broker was down is found (and its keys revoked) before a key collected
    // there could be verified.
    for (const s of store.listServices())
      if (s.tunnel === 'ssh') await registry.holdPort(s, 'restart');
    const portStart = await unprivilegedPortStart();
    const protectedPorts = portStart !== null && config.portMax < portStart;
    if (!protectedPorts)
      log.warn(
        { portRange: config.portRange, unprivilegedPortStart: portStart },
        'service ports can be bound by any local user while the broker is down (restarts); see docs/operations.md "Protect service ports"',
      );
    gatewayStats = {
      tunnels: () => gateway.openTunnels,
      channels: () => gateway.openChannels,
      bytes: () => gateway.bytesForwarded,
    };
    gatewayRef.port = await gateway.listen(ssh.host, ssh.port);
    closers.unshift(() => void gateway.close());

    // The API's own certificate: re-issued at every start (names follow the config) and renewed
    // by the timer below well before it ends.
    const apiNames = () => {
      const dnsNames = new Set(['localhost']);
      const ipAddresses = new Set(['127.0.0.1', '::1']);
      for (const h of [publicHost, wildcard ? null : listen.host]) {
        if (!h) continue;
        const ip = canonicalIp(h);
        if (ip) ipAddresses.add(ip);
        else dnsNames.add(h);
      }
      return { dnsNames: [...dnsNames], ipAddresses: [...ipAddresses] };
    };
    const issueApiCert = () =>
      ca.issue({
        commonName: 'session-broker-api',
        ...apiNames(),
        usage: 'server',
        lifetimeSeconds: config.certMaxLifetimeSeconds,
      });
    let apiCert = await issueApiCert();

    const app = createApp({
      registry,
      keys,
      principals,
      login,
      auth,
      store,
      caCertPem: ca.caCertPem,
      version: VERSION,
      log,
      openapi: loadOpenApi(),
      metrics,
      metricsUids: [...new Set([process.getuid?.() ?? 0, 0, ...config.metricsUids])],
      health: () => ({
        gateway: {
          host: publicHost,
          port: gateway.port,
          hostKey: hostKey.publicKey,
          fingerprint: hostKey.fingerprint,
          nativeCrypto: sshNativeCrypto(),
        },
        ports: { range: config.portRange, protected: protectedPorts },
        // How clients may log in as the Unix user they are; `uid` restricts a MUNGE credential
        // to this broker (munge -u UID) so nobody else can decode and replay it.
        identity: {
          munge: idc.munge.enabled,
          peer: idc.peer.enabled,
          uid: process.getuid?.() ?? null,
        },
      }),
      flushAudit: () => audit.flush(),
    });
    const api = createHttpsServer(
      config,
      { cert: apiCert.certPem + ca.caCertPem, key: apiCert.keyPem! },
      app,
      createVerifyHandler({
        auth,
        keys,
        log,
        metrics,
        tarpitMs: config.verifyTarpitMs,
        tarpitMax: config.verifyTarpitMax,
      }),
      peers,
    );
    const port = await api.listen(listen.port, listen.host);
    const server = api.https;
    closers.unshift(() => void api.drain(0));
    const url = `https://${urlHost(publicHost)}:${port}`;

    const credentialsPath = dir.file('credentials');
    bootstrapCredentials({ dir, store, principals, auth, url, caPem: ca.caCertPem, log, clock });

    let watching = false;
    const sweep = () => {
      try {
        gateway.touchLive((s, now) => registry.extendedLease(s, now));
        registry.sweep();
        keys.flushUses();
      } catch (err) {
        log.error({ err }, 'lease sweep failed');
      }
      if (watching) return;
      watching = true;
      registry
        .watchDirect()
        .catch((err: unknown) => log.error({ err }, 'watching tunnel "none" services failed'))
        .finally(() => (watching = false));
    };
    const sweepTimer = setInterval(sweep, config.reapIntervalSeconds * 1000);
    sweepTimer.unref();
    const renewMs = (config.certMaxLifetimeSeconds * 1000) / 3;
    const renewTimer = setInterval(async () => {
      try {
        apiCert = await issueApiCert();
        server.setSecureContext({
          cert: apiCert.certPem + ca.caCertPem,
          key: apiCert.keyPem!,
          minVersion: 'TLSv1.2',
        });
      } catch (err) {
        log.error({ err }, 'API certificate renewal failed');
      }
    }, renewMs);
    renewTimer.unref();

    log.info(
      {
        url,
        credentials: credentialsPath,
        version: VERSION,
        ssh: { port: gateway.port, hostKey: hostKey.fingerprint },
      },
      'broker ready',
    );
    flushLog();

    let closing: Promise<void> | null = null;
    return {
      url,
      config,
      store,
      log,
      flushLog,
      credentialsPath,
      caCertPem: ca.caCertPem,
      close(graceMs = 10_000) {
        closing ??= (async () => {
          clearInterval(sweepTimer);
          clearInterval(renewTimer);
          const drained = api.drain(graceMs);
          await gateway.close();
          await drained;
          audit.flush();
          keys.flushUses();
          store.close();
          lock.close();
          peers.close();
          mungeDecoder?.close();
          log.info('broker stopped');
          own?.close();
        })();
        return closing;
      },
    };
  } catch (err) {
    own?.close();
    for (const close of closers) {
      try {
        close();
      } catch {
        /* best effort while failing to start */
      }
    }
    throw err;
  }
}

/**
 * First start: create the admin principal and write credentials.json (0600). Later starts keep
 * the token in it and refresh url and ca. A deleted or no-longer-valid file gets a fresh admin
 * token (delete the file and restart to rotate it).
 */
function bootstrapCredentials(d: {
  dir: StateDir;
  store: Store;
  principals: PrincipalAdmin;
  auth: Authenticator;
  url: string;
  caPem: string;
  log: Logger;
  clock: Clock;
}): void {
  const path = d.dir.file('credentials');
  let token: string | null = null;
  if (existsSync(path)) {
    try {
      const old = JSON.parse(readFileSync(path, 'utf8')) as Partial<CredentialsFile>;
      if (typeof old.token === 'string') {
        const id = d.auth.authenticate(old.token);
        if (id.kind === 'principal' && id.principal.role === 'admin') token = old.token;
      }
    } catch {
      token = null;
    }
  }
  if (!token) {
    let admin = d.store.getMeta('bootstrap_admin');
    if (!admin || !d.store.getPrincipal(admin)) {
      admin = bootstrapAdminName();
      if (d.store.getPrincipal(admin)) admin = 'admin';
      // Named after the Unix user who runs the broker, it is that user (its UID), so logging in
      // as that user later (MUNGE, same host) reaches the same principal.
      const ownName = admin !== 'admin' || safeUserName() === 'admin';
      const uid = ownName ? (process.getuid?.() ?? null) : null;
      let created;
      try {
        created = d.principals.create(null, admin, 'admin', null, uid);
      } catch (err) {
        // The UID is bound to another principal already (an admin did so): leave this unbound.
        if (!(err instanceof BrokerError) || err.code !== 'name_taken' || uid === null) throw err;
        created = d.principals.create(null, admin, 'admin', null, null);
      }
      d.store.setMeta('bootstrap_admin', admin);
      d.store.setMeta('bootstrap_token_id', created.tokenId);
      token = created.token;
      d.log.info({ principal: admin }, 'first start: created the admin principal');
    } else {
      const oldId = d.store.getMeta('bootstrap_token_id');
      const principal = d.store.getPrincipal(admin)!;
      const self = {
        kind: 'principal' as const,
        principal,
        tokenId: 'bootstrap',
        tokenExpiresAt: null,
      };
      const created = d.principals.createToken(self, admin, { label: 'bootstrap' }, 'local');
      // A rotation, not a compromise response: what was minted with the old bootstrap token
      // (services, keys) is handed to the new one, then the old one is revoked. To cut off
      // everything minted with a leaked token, revoke it (`broker token revoke`).
      if (oldId) {
        d.store.handOverToken(oldId, created.tokenInfo.id);
        try {
          d.principals.revokeToken(self, oldId, null);
        } catch {
          /* already revoked */
        }
      }
      token = created.token;
      d.store.setMeta('bootstrap_token_id', created.tokenInfo.id);
      d.log.warn(
        { principal: admin },
        'credentials.json was missing or invalid: issued a new admin token',
      );
    }
  }
  const file: CredentialsFile = { url: d.url, token, ca: d.caPem };
  d.dir.writePrivate('credentials', JSON.stringify(file, null, 2) + '\n');
}

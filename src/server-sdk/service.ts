/**
 * registerService(): the server side in one call. Registers (or reuses a registration), keeps the
 * reverse tunnel to the gateway up with reconnect and backoff — also across a broker restart —,
 * heartbeats, and exposes state changes as events. Connections arriving through the tunnel are
 * carried to `target` (a TCP port or a Unix socket), which is normally a gated server.
 */
import type { Server } from 'node:net';
import { listenOnLoopback } from './loopback.js';
import { EventEmitter } from 'node:events';
import { randomInt } from 'node:crypto';
import { connect as netConnect, type Socket } from 'node:net';
import { BrokerClient } from '../client/broker-client.js';
import { gatewayInfo, sshConnect } from '../client/ssh.js';
import { BrokerError } from '../protocol/errors.js';
import type { RegisterRequest, Service, VerifyResponse } from '../protocol/types.js';
import { gate, type GatedHandler, type GateOptions } from './gate.js';
import { splice } from '../protocol/splice.js';
import { csrFor, newLocalKey, type LocalKey } from './csr.js';
import { HttpGate, type HttpGateOptions } from './http-gate.js';
import { KeyWatch } from './key-watch.js';

export interface ServiceTlsOptions {
  key: string;
  cert: string;
  minVersion: 'TLSv1.2';
  requestCert?: boolean;
  rejectUnauthorized?: boolean;
  ca?: string;
}

export type ServiceState = 'connecting' | 'ready' | 'offline' | 'closed';

export interface RegisterServiceOptions extends Omit<RegisterRequest, 'name'> {
  name: string;
  /** The client used to register (a user token; default: discovered credentials). */
  broker?: BrokerClient;
  /**
   * Where tunnelled connections go: a Unix socket path, or a TCP port of a server in this same
   * process (gated with `svc.gate()`). Any local user can bind a loopback port another process
   * gave up; for a server in another process use a socket in a 0700 directory, or `broker run`,
   * which checks who answers every connection to a port (LOC-3).
   */
  target?: { port: number; host?: string } | { path: string };
  /** Heartbeat period (default 30 s). */
  heartbeatSeconds?: number;
  /**
   * https: require a client certificate from the broker CA (mTLS). `true` admits the service's
   * owner; `{ allow }` names the principals admitted. Keys keep working alongside.
   */
  requireClientCert?: boolean | { allow: string[] };
  /** false: do not attach the reverse tunnel until retarget() (e.g. until the app is up). */
  startTunnel?: boolean;
  /** Attach to an existing registration instead of registering (e.g. after a process restart). */
  existing?: { service: Service; serviceToken: string };
}

/**
 * A registered service. Events: `state` (ServiceState), `warning` (Error, recoverable),
 * `removed` (the broker no longer knows the service).
 */
export class BrokerService extends EventEmitter {
  state: ServiceState = 'connecting';
  /** A client authenticated with this service's token (verify, ready, heartbeat, unregister). */
  readonly client: BrokerClient;
  private closed = false;
  private ssh: { end(): void } | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  private renewTimer: NodeJS.Timeout | null = null;
  private readonly secureServers = new Set<{ setSecureContext(o: object): void }>();
  /** https services: the certificate and the locally generated key. */
  tls: { cert: string; ca: string; key: LocalKey } | null = null;
  /**
   * The keys behind this service's open connections and sessions, re-checked with the broker
   * every 5 s for all its gates at once: they end with their key (SES-1, SES-2).
   */
  readonly keyWatch: KeyWatch;

  constructor(
    public service: Service,
    readonly serviceToken: string,
    private readonly opts: RegisterServiceOptions,
    url: string | undefined,
    ca: string | undefined,
  ) {
    super();
    this.client = new BrokerClient({ url, ca, token: serviceToken, env: {} });
    this.keyWatch = new KeyWatch({ live: (ids) => this.client.liveKeys(ids) });
  }

  get ref(): string {
    return `${this.service.owner}/${this.service.name}`;
  }

  get port(): number {
    return this.service.port;
  }

  private setState(s: ServiceState): void {
    if (this.state === s) return;
    this.state = s;
    this.emit('state', s);
  }

  /** Ask the broker about a presented key. */
  verify(key: string): Promise<VerifyResponse> {
    return this.client.verify(key);
  }

  /** Ask the broker about a presented client certificate, by its fingerprint (mTLS). */
  verifyCert(fingerprint: string): Promise<VerifyResponse> {
    return this.client.verifyCert(fingerprint);
  }

  /** A connection listener that lets only key holders reach `handler` (DESIGN §7). */
  gate(handler: GatedHandler, opts: Omit<GateOptions, 'verify'> = {}): (socket: Socket) => void {
    return gate(handler, { keyWatch: this.keyWatch, ...opts, verify: (k) => this.verify(k) });
  }

  /**
   * Options for `https.createServer` (https services): the local key, the broker-signed
   * certificate, TLS ≥ 1.2.
   */
  tlsOptions(): ServiceTlsOptions {
    if (!this.tls)
      throw new BrokerError('validation_failed', `${this.ref} is not an https service`);
    const base = { key: this.tls.key.keyPem, cert: this.tls.cert, minVersion: 'TLSv1.2' as const };
    // mTLS: only clients whose certificate chains to the broker CA complete the handshake.
    return this.opts.requireClientCert
      ? { ...base, requestCert: true, rejectUnauthorized: true, ca: this.tls.ca }
      : base;
  }

  /** Principals admitted by client certificate, or undefined without mTLS. */
  private clientCertAllow(): string[] | undefined {
    const r = this.opts.requireClientCert;
    if (!r) return undefined;
    return r === true ? [this.service.owner] : r.allow;
  }

  /**
   * Keep `server`'s certificate current: renewals (at 2/3 of the lifetime) are swapped in with
   * setSecureContext, so live connections stay up.
   */
  watch(server: { setSecureContext(o: object): void }): this {
    this.secureServers.add(server);
    return this;
  }

  /** The HTTPS gate for this service (bearer key, one-time login URL → cookie, WebSocket). */
  httpGate(opts: Omit<HttpGateOptions, 'verify'> = {}): HttpGate {
    return new HttpGate({
      clientCertAllow: this.clientCertAllow(),
      keyWatch: this.keyWatch,
      hostname: this.service.hostname,
      ...opts,
      verify: (k) => this.verify(k),
      verifyCert: (f) => this.verifyCert(f),
    });
  }

  /** Renew the certificate now (normally done by the timer). */
  async renewNow(): Promise<void> {
    if (!this.tls) return;
    const { tls } = await this.client.renewCert(this.ref, await csrFor(this.tls.key));
    this.tls.cert = tls.cert;
    for (const s of this.secureServers) s.setSecureContext(this.tlsOptions());
    this.service = await this.client.get(this.ref);
    this.emit('cert', this.tls.cert);
    this.scheduleRenewal();
  }

  private scheduleRenewal(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    const notAfter = this.service.cert ? Date.parse(this.service.cert.notAfter) : 0;
    if (!this.tls || !notAfter || this.closed) return;
    const wait = Math.max(10_000, ((notAfter - Date.now()) * 2) / 3);
    this.renewTimer = setTimeout(() => {
      this.renewNow().catch((err) => {
        this.emit('warning', err);
        this.renewTimer = setTimeout(() => this.scheduleRenewal(), 60_000);
        this.renewTimer.unref();
      });
    }, wait);
    this.renewTimer.unref();
  }

  /**
   * tunnel "none": listen on this service's port where its clients connect — its host and, on
   * loopback, the twin loopback address (its name resolves to both; see listenOnLoopback) —
   * then confirm it with the broker ({@link ready}).
   * @throws BrokerError `port_unavailable` when another process holds the twin; the broker's
   *   `service_not_ready` when the broker does not see this process's listener.
   * @example
   * ```ts
   * const server = https.createServer(svc.tlsOptions(), handler);
   * await svc.listen(server);
   * ```
   */
  async listen(server: Server): Promise<Service> {
    await listenOnLoopback(server, this.port, this.service.host);
    return this.ready();
  }

  /** tunnel "none": confirm the server listens on its port. */
  async ready(): Promise<Service> {
    this.service = await this.client.ready(this.ref);
    this.setState('ready');
    return this.service;
  }

  start(): void {
    const period = (this.opts.heartbeatSeconds ?? 30) * 1000;
    this.heartbeat = setInterval(() => {
      this.client.heartbeat(this.ref).then(
        (s) => (this.service = s),
        (err: BrokerError) => {
          if (err.code === 'unauthenticated' || err.code === 'service_not_found')
            this.removedByBroker();
          else this.emit('warning', err);
        },
      );
    }, period);
    this.heartbeat.unref();
    if (this.service.tunnel === 'ssh' && this.opts.startTunnel !== false) this.startKeeper();
    this.scheduleRenewal();
  }

  private keeping = false;

  private startKeeper(): void {
    if (this.keeping || this.closed) return;
    this.keeping = true;
    void this.keepTunnel();
  }

  /** Send tunnelled connections to `target` from now on, and attach the tunnel if not yet. */
  retarget(target: { port: number; host?: string } | { path: string }): void {
    this.opts.target = target;
    if (this.service.tunnel === 'ssh') this.startKeeper();
  }

  private removedByBroker(): void {
    if (this.closed) return;
    this.emit('removed');
    this.stop();
  }

  /** Reconnect loop: 0.5 s doubling to 30 s, with jitter; reset after a good connection. */
  private async keepTunnel(): Promise<void> {
    let delay = 500;
    while (!this.closed) {
      this.setState('connecting');
      try {
        const g = await gatewayInfo(this.client);
        const ssh = await sshConnect(g, this.service.owner, this.serviceToken);
        this.ssh = ssh;
        ssh.on('tcp connection', (_info, accept) => this.carry(accept()));
        await new Promise<void>((resolve, reject) =>
          ssh.forwardIn('127.0.0.1', 0, (err) =>
            err
              ? reject(
                  new BrokerError(
                    'forbidden',
                    `the gateway refused the reverse tunnel: ${err.message}`,
                  ),
                )
              : resolve(),
          ),
        );
        this.setState('ready');
        delay = 500;
        await new Promise<void>((resolve) => ssh.once('close', () => resolve()));
        this.ssh = null;
        if (!this.closed) this.setState('offline');
      } catch (err) {
        this.ssh?.end();
        this.ssh = null;
        if ((err as BrokerError).code === 'unauthenticated') {
          // The token no longer works: the service was unregistered or reaped.
          this.removedByBroker();
          return;
        }
        if (!this.closed) {
          this.setState('offline');
          this.emit('warning', err);
        }
      }
      if (this.closed) return;
      const wait = delay / 2 + randomInt(Math.max(1, Math.floor(delay / 2))); // jitter
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, wait).unref();
      });
      delay = Math.min(delay * 2, 30_000);
    }
  }

  private carry(ch: import('node:stream').Duplex): void {
    const t = this.opts.target ?? { port: 0 };
    const up =
      'path' in t ? netConnect(t.path) : netConnect({ host: t.host ?? '127.0.0.1', port: t.port });
    if (!('path' in t)) up.setNoDelay(true);
    splice(ch, up);
  }

  private stop(): void {
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.ssh?.end();
    this.wake?.();
    this.keyWatch.close();
    this.setState('closed');
    this.client.close();
  }

  /** Stop the tunnel and heartbeats and unregister (unless `keepRegistration`). */
  async close(opts: { keepRegistration?: boolean } = {}): Promise<void> {
    if (this.closed) return;
    this.stop();
    if (!opts.keepRegistration) {
      const c = new BrokerClient({
        url: this.client.url,
        ca: this.client.credentials.ca,
        token: this.serviceToken,
        env: {},
      });
      try {
        await c.unregister(this.ref);
      } catch (err) {
        if (
          (err as BrokerError).code !== 'service_not_found' &&
          (err as BrokerError).code !== 'unauthenticated'
        )
          throw err;
      } finally {
        c.close();
      }
    }
  }
}

/**
 * Register a service and keep it reachable.
 * @example
 * ```ts
 * const app = net.createServer(handler).listen(0, '127.0.0.1');
 * const svc = await registerService({ name: 'viz', target: { port: app.address().port } });
 * svc.on('state', (s) => console.log('tunnel', s));
 * // clients: broker load viz / broker connect viz
 * ```
 */
export async function registerService(opts: RegisterServiceOptions): Promise<BrokerService> {
  const broker = opts.broker ?? new BrokerClient();
  let service: Service;
  let serviceToken: string;
  let tls: BrokerService['tls'] = null;
  if (opts.existing) {
    ({ service, serviceToken } = opts.existing);
  } else {
    const {
      broker: _b,
      target: _t,
      heartbeatSeconds: _h,
      existing: _e,
      requireClientCert: _c,
      startTunnel: _s,
      ...req
    } = opts;
    if ((opts.tunnel ?? 'ssh') === 'ssh' && !opts.target) {
      throw new BrokerError(
        'validation_failed',
        'a tunnelled service needs a target: { port } or { path }',
      );
    }
    let key: LocalKey | undefined;
    if (req.mode === 'https' && req.csr === undefined) {
      key = await newLocalKey();
      req.csr = await csrFor(key);
    }
    const res = await broker.register(req);
    service = res.service;
    serviceToken = res.serviceToken;
    if (key && res.tls) tls = { cert: res.tls.cert, ca: res.tls.ca, key };
  }
  const svc = new BrokerService(service, serviceToken, opts, broker.url, broker.credentials.ca);
  svc.tls = tls;
  svc.start();
  return svc;
}

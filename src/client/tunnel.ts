/**
 * Client ends of a brokered connection: `openTunnel()` (like `ssh -N -L` through the gateway) and
 * `connect()` (a socket that has already done the key handshake of DESIGN §7).
 */
import { randomInt } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Client as SshClient } from 'ssh2';
import { BrokerError } from '../protocol/errors.js';
import { MAX_KEY_LINE_BYTES } from '../protocol/constants.js';
import { splice } from '../protocol/splice.js';
import type { LoadRequest, LoadResponse } from '../protocol/types.js';
import type { BrokerClient } from './broker-client.js';
import { gatewayInfo, sshConnect } from './ssh.js';
import { canonicalAddress, describeUid, listenersOn } from '../host/socket-owner.js';
import { ServerOwners } from '../host/sock-diag.js';

/** Where a loaded service is reached from the gateway. */
function destination(l: LoadResponse): { host: string; port: number } {
  return { host: l.service.tunnel === 'ssh' ? '127.0.0.1' : l.service.host, port: l.service.port };
}

async function principalName(broker: BrokerClient): Promise<string> {
  const who = await broker.me();
  if (who.kind !== 'principal')
    throw new BrokerError(
      'forbidden',
      'tunnels to services need a user token, not a service token',
    );
  return who.principal.name;
}

function forward(
  ssh: SshClient,
  dest: { host: string; port: number },
  src: { host: string; port: number },
): Promise<Duplex> {
  return new Promise((resolve, reject) =>
    ssh.forwardOut(src.host, src.port, dest.host, dest.port, (err, ch) => {
      if (err)
        reject(
          new BrokerError(
            'forbidden',
            `the gateway refused a channel to ${dest.host}:${dest.port}: ${err.message}`,
          ),
        );
      else {
        ch.on('error', () => ch.destroy());
        resolve(ch);
      }
    }),
  );
}

/**
 * Present the key on a fresh channel and wait for `OK`. Bytes after `OK\n` are given back to
 * the stream. Throws on `DENIED` or a closed channel.
 */
export function handshake(ch: Duplex, key: string, timeoutMs = 15_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const timer = setTimeout(
      () => done(new BrokerError('unreachable', 'no answer to the key within 15 s')),
      timeoutMs,
    );
    // Paused mode ('readable' + read()): once the listener is removed the stream is neither
    // flowing nor explicitly paused, so the caller's pipe() or 'data' listener starts it.
    const done = (err?: Error) => {
      clearTimeout(timer);
      ch.off('readable', onReadable);
      ch.off('close', onClose);
      if (err) {
        ch.destroy();
        reject(err);
      } else resolve();
    };
    const onClose = () =>
      done(
        new BrokerError('forbidden', 'the server closed the connection before answering the key'),
      );
    const onReadable = () => {
      let c: Buffer | null;
      while ((c = ch.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, c]);
        const nl = buf.indexOf(0x0a);
        if (nl === -1) {
          if (buf.length > MAX_KEY_LINE_BYTES)
            return done(
              new BrokerError('bad_request', 'the server did not speak the key handshake'),
            );
          continue;
        }
        const line = buf.subarray(0, nl).toString('utf8').trim();
        const rest = buf.subarray(nl + 1);
        if (line !== 'OK') {
          return done(
            new BrokerError(
              'forbidden',
              line === 'DENIED'
                ? 'the server refused the key (DENIED)'
                : 'unexpected answer to the key',
            ),
          );
        }
        if (rest.length) ch.unshift(rest);
        return done();
      }
    };
    ch.on('readable', onReadable);
    ch.on('close', onClose);
    ch.write(key + '\n');
  });
}

export interface TunnelOptions {
  /** Local port (0: any free one). */
  localPort?: number;
  /**
   * Local address to listen on (default 127.0.0.1). The loopback (`127.0.0.1`, `::1` or
   * `localhost`) is held on both IPv4 and IPv6, on the same port, like OpenSSH's `-L`: a client
   * that tries `localhost` on ::1 first never reaches another user's listener there.
   */
  localHost?: string;
  /**
   * Send the key first on every local connection (for clients that know nothing of keys) —
   * only for connections from this Unix user's own processes, attributed by the kernel's socket
   * table: any other local user gets `DENIED` (LOC-5). Needs a loopback `localHost`.
   */
  injectKey?: boolean;
  /** Key request options (TTL); a key is minted per tunnel. */
  load?: LoadRequest;
  /**
   * Outlive the gateway connection: when it ends (a broker restart, a network blip) the tunnel
   * keeps its local listeners — no other user can take the port meanwhile — resets local
   * connections that arrive in the gap, and reconnects with backoff (`true`: up to 10 s apart),
   * reusing its key while it is valid. It ends (`close`, with the error) only when the service or
   * the credential is gone, or on `close()`. Default false: the tunnel ends with its connection.
   */
  reconnect?: boolean | { maxDelayMs?: number };
}

/** The addresses a tunnel listens on for `localHost`. */
function localAddresses(localHost: string): string[] {
  return ['127.0.0.1', '::1', 'localhost'].includes(localHost) ? ['127.0.0.1', '::1'] : [localHost];
}

const hostPort = (host: string, port: number) =>
  host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;

/** Errors after which reconnecting cannot help: the service or the credential is gone. */
const FINAL = new Set(['service_not_found', 'unauthenticated', 'forbidden']);

/**
 * A running local forward. Emits `connection` (per local client), `refused` (`{uid}`: another
 * user's connection to an `injectKey` tunnel), `error` (one local connection failed), `close`
 * (the tunnel ended; with the error that ended it, if any). With `reconnect`: `disconnect`
 * (`{error?}`: the gateway connection ended, the local port is still held), `retry`
 * (`{error, delayMs}`: a reconnect failed), `reconnect` (up again) and `key` (a new key was
 * loaded because the last one expired).
 */
export class Tunnel extends EventEmitter {
  private ssh: SshClient | null = null;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private dialing: Promise<void> | null = null;
  private dest: { host: string; port: number };

  /** @internal — use {@link openTunnel}. */
  constructor(
    readonly localPort: number,
    private current: LoadResponse,
    private readonly servers: Server[],
    private readonly dial: (loaded: LoadResponse) => Promise<{
      ssh: SshClient;
      loaded: LoadResponse;
      renewed: boolean;
    }>,
    private readonly reconnecting: { maxDelayMs: number } | null,
  ) {
    super();
    this.dest = destination(current);
  }

  /** The client key minted for this tunnel (present it yourself unless injectKey). */
  get key(): string {
    return this.current.key;
  }

  /** The key, its id, expiry and the service, as loaded. */
  get loaded(): LoadResponse {
    return this.current;
  }

  /** The local addresses held (`127.0.0.1` and `::1` for the loopback). */
  get localAddresses(): string[] {
    return this.servers.map((s) => (s.address() as AddressInfo).address);
  }

  /** True while a gateway connection carries the tunnel. */
  get connected(): boolean {
    return this.ssh !== null;
  }

  /** @internal — the gateway connection to carry new local connections. */
  attach(ssh: SshClient): void {
    this.ssh = ssh;
    let error: Error | undefined;
    ssh.on('error', (err) => {
      error = err;
      this.emit('error', err);
    });
    ssh.once('close', () => {
      if (this.ssh !== ssh) return;
      this.ssh = null;
      if (this.closed) return;
      if (!this.reconnecting) return this.finish();
      this.emit('disconnect', { error });
      this.schedule(0, 500);
    });
  }

  /**
   * Replace the gateway connection now (the local listeners stay): a new SSH connection, the
   * service looked up again, a new key only if the last one has expired. Rejects when it cannot.
   */
  reconnect(): Promise<void> {
    if (this.closed) return Promise.reject(new BrokerError('unreachable', 'the tunnel is closed'));
    this.dialing ??= this.dial(this.current)
      .then(({ ssh, loaded, renewed }) => {
        if (this.closed) return void ssh.end();
        const old = this.ssh;
        this.ssh = null;
        old?.end(); // by hand while connected: what it carries ends with it
        this.current = loaded;
        this.dest = destination(loaded);
        this.attach(ssh);
        if (renewed) this.emit('key', loaded);
      })
      .finally(() => (this.dialing = null));
    return this.dialing;
  }

  private schedule(delayMs: number, nextMs: number): void {
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.reconnect().then(
        () => this.emit('reconnect'),
        (error: Error) => {
          if (this.closed) return;
          if (error instanceof BrokerError && FINAL.has(error.code)) return this.finish(error);
          // ±20 %, so the tunnels of a node do not all come back in the same millisecond.
          const delay = Math.round(
            (Math.min(nextMs, this.reconnecting!.maxDelayMs) * (800 + randomInt(401))) / 1000,
          );
          this.emit('retry', { error, delayMs: delay });
          this.schedule(delay, nextMs * 2);
        },
      );
    }, delayMs);
  }

  /**
   * @internal — carry one local connection, or reset it while there is no gateway connection.
   * `inject`: resolves true when the key may be sent for this connection (its owner is ours).
   */
  carry(local: Socket, inject: Promise<boolean> | null): void {
    local.setNoDelay(true);
    local.on('error', () => local.destroy());
    local.pause();
    const go = async () => {
      if (inject && !(await inject)) return;
      const ssh = this.ssh;
      if (!ssh) return void local.resetAndDestroy(); // in the gap: a reset, as with nothing there
      const key = this.current.key;
      const ch = await forward(ssh, this.dest, { host: '127.0.0.1', port: local.remotePort ?? 0 });
      if (inject) await handshake(ch, key);
      if (local.destroyed) return void ch.destroy();
      local.resume();
      splice(local, ch);
      this.emit('connection', local);
    };
    go().catch((err: Error) => {
      this.emit('error', err);
      local.destroy();
    });
  }

  /** Stop: close the local listeners and the gateway connection (emits `close`). */
  close(): void {
    this.finish();
  }

  private finish(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    for (const s of this.servers) s.close();
    const ssh = this.ssh;
    this.ssh = null;
    ssh?.end();
    this.emit('close', err);
  }
}

/** Listen on `host:port`; EADDRINUSE names who holds the port. */
async function listenOn(server: Server, host: string, port: number): Promise<void> {
  const err = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
    server.once('error', resolve);
    server.listen(port, host, () => {
      server.off('error', resolve);
      server.on('error', () => {}); // an accept() that fails (EMFILE) loses that connection only
      resolve(null);
    });
  });
  if (!err) return;
  let who = '';
  if (err.code === 'EADDRINUSE') {
    const holders = await listenersOn(port).catch(() => []);
    const canon = canonicalAddress(host);
    const uids = [
      ...new Set(
        holders.filter((h) => [canon, '0.0.0.0', '::'].includes(h.local.address)).map((h) => h.uid),
      ),
    ];
    who = uids.length ? `: it is held by ${uids.map(describeUid).join(', ')}` : ': it is in use';
  }
  throw Object.assign(
    new BrokerError(
      err.code === 'EADDRINUSE' ? 'port_unavailable' : 'validation_failed',
      `cannot listen on ${hostPort(host, port)}${who || ` (${err.code})`}`,
    ),
    { errno: err.code },
  );
}

/**
 * Listen on every address of `localHost` on one port: `port`, or (0) a free one that is free on
 * all of them. An address family the host does not have (no IPv6) is left out.
 */
async function listenAll(
  localHost: string,
  port: number,
  onConnection: (s: Socket) => void,
): Promise<Server[]> {
  const hosts = localAddresses(localHost);
  for (let attempt = 0; ; attempt++) {
    const servers: Server[] = [];
    try {
      let p = port;
      for (const host of hosts) {
        const server = createServer(onConnection);
        try {
          await listenOn(server, host, p);
        } catch (err) {
          const code = (err as { errno?: string }).errno;
          // No IPv6 on this host: then no one can listen on ::1 either.
          if (host === '::1' && (code === 'EADDRNOTAVAIL' || code === 'EAFNOSUPPORT')) continue;
          throw err;
        }
        servers.push(server);
        p = (server.address() as AddressInfo).port;
      }
      return servers;
    } catch (err) {
      for (const s of servers) s.close();
      // Any free port was asked for, and the one found on IPv4 is taken on IPv6: another.
      if (port === 0 && (err as BrokerError).code === 'port_unavailable' && attempt < 5) continue;
      throw err;
    }
  }
}

/**
 * Listen locally and carry every connection through the gateway to the service, like
 * `ssh -N -L PORT:127.0.0.1:SERVICE_PORT` with the gateway's host key pinned. On the loopback
 * it listens on 127.0.0.1 and ::1, on one port. With `reconnect` it keeps that port through the
 * gateway's restarts (see {@link TunnelOptions.reconnect}); `tunnel.reconnect()` replaces the
 * gateway connection by hand.
 * @example
 * ```ts
 * const t = await openTunnel(new BrokerClient(), 'alice/viz', { localPort: 8888, reconnect: true });
 * // connect to 127.0.0.1:8888 (or [::1]:8888), send t.key + '\n', expect 'OK\n'
 * t.on('disconnect', () => console.log('the broker went away; 8888 is still ours'));
 * ```
 */
export async function openTunnel(
  broker: BrokerClient,
  ref: string,
  opts: TunnelOptions = {},
): Promise<Tunnel> {
  const [loaded, g, user] = await Promise.all([
    broker.load(ref, opts.load ?? {}),
    gatewayInfo(broker),
    principalName(broker),
  ]);
  const localHost = opts.localHost ?? '127.0.0.1';
  if (opts.injectKey && !/^(127\.|::1$|localhost$)/.test(localHost))
    throw new BrokerError(
      'validation_failed',
      '--inject-key sends your key for every connection: it only listens on loopback (127.0.0.1)',
    );
  const ssh = await sshConnect(g, user, broker.credentials.token!);
  const me = process.getuid?.() ?? -1;
  // The kernel's exact socket lookup (netlink; /proc where it cannot run), one per connection.
  const peers = opts.injectKey ? new ServerOwners() : null;
  // eslint-disable-next-line prefer-const -- assigned once the listeners know their port, used by their handler
  let tunnel: Tunnel;
  const onConnection = (local: Socket) => {
    // The key goes only to this user's own processes; whoever the kernel cannot attribute to us
    // is refused like a wrong key (LOC-5).
    const inject = peers
      ? peers.peerUid(local).then((uid) => {
          if (uid === me) return true;
          local.end('DENIED\n');
          tunnel.emit('refused', { uid });
          return false;
        })
      : null;
    tunnel.carry(local, inject);
  };
  let servers: Server[];
  try {
    servers = await listenAll(localHost, opts.localPort ?? 0, onConnection);
  } catch (err) {
    ssh.end();
    throw err;
  }
  /** A new gateway connection; the service again; a new key only once this one has expired. */
  const dial = async (current: LoadResponse) => {
    const renewed = opts.injectKey === true && Date.parse(current.expiresAt) <= Date.now();
    const [gw, loaded] = await Promise.all([
      gatewayInfo(broker),
      renewed
        ? broker.load(ref, opts.load ?? {})
        : broker.get(ref).then((service) => ({ ...current, service })),
    ]);
    return { ssh: await sshConnect(gw, user, broker.credentials.token!), loaded, renewed };
  };
  const r = opts.reconnect;
  tunnel = new Tunnel(
    (servers[0]!.address() as AddressInfo).port,
    loaded,
    servers,
    dial,
    r ? { maxDelayMs: (typeof r === 'object' && r.maxDelayMs) || 10_000 } : null,
  );
  tunnel.once('close', () => peers?.close());
  tunnel.attach(ssh);
  return tunnel;
}

/**
 * One connection to a service through the gateway, after the key handshake: write and read the
 * application protocol on the returned stream. A one-use key is minted for it.
 * @example
 * ```ts
 * const s = await connect(new BrokerClient(), 'alice/viz');
 * s.write('hello'); s.on('data', console.log);
 * ```
 */
export async function connect(broker: BrokerClient, ref: string): Promise<Duplex> {
  const [loaded, g, user] = await Promise.all([
    broker.load(ref, { once: true }),
    gatewayInfo(broker),
    principalName(broker),
  ]);
  const ssh = await sshConnect(g, user, broker.credentials.token!);
  try {
    const ch = await forward(ssh, destination(loaded), { host: '127.0.0.1', port: 0 });
    await handshake(ch, loaded.key);
    ch.once('close', () => ssh.end());
    return ch;
  } catch (err) {
    ssh.end();
    throw err;
  }
}

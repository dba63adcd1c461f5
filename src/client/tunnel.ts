/**
 * Client ends of a brokered connection: `openTunnel()` (like `ssh -N -L` through the gateway) and
 * `connect()` (a socket that has already done the key handshake of DESIGN §7).
 */
import { EventEmitter } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Client as SshClient } from 'ssh2';
import { BrokerError } from '../protocol/errors.js';
import { MAX_KEY_LINE_BYTES } from '../protocol/constants.js';
import { splice } from '../protocol/splice.js';
import type { LoadRequest, LoadResponse } from '../protocol/types.js';
import type { BrokerClient } from './broker-client.js';
import { gatewayInfo, sshConnect } from './ssh.js';
import { PeerUidLookup } from '../host/socket-owner.js';

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
  /** Local address to listen on (default 127.0.0.1). */
  localHost?: string;
  /**
   * Send the key first on every local connection (for clients that know nothing of keys) —
   * only for connections from this Unix user's own processes, attributed by the kernel's socket
   * table: any other local user gets `DENIED` (LOC-5). Needs a loopback `localHost`.
   */
  injectKey?: boolean;
  /** Key request options (TTL); a key is minted per tunnel. */
  load?: LoadRequest;
}

/**
 * A running local forward. Emits `connection` (per local client), `refused` (`{uid}`: another
 * user's connection to an `injectKey` tunnel), `error`, `close`.
 */
export class Tunnel extends EventEmitter {
  constructor(
    readonly localPort: number,
    readonly loaded: LoadResponse,
    private readonly server: Server,
    private readonly ssh: SshClient,
  ) {
    super();
  }

  /** The client key minted for this tunnel (present it yourself unless injectKey). */
  get key(): string {
    return this.loaded.key;
  }

  close(): void {
    this.server.close();
    this.ssh.end();
  }
}

/**
 * Listen locally and carry every connection through the gateway to the service, like
 * `ssh -N -L PORT:127.0.0.1:SERVICE_PORT` with the gateway's host key pinned.
 * @example
 * ```ts
 * const t = await openTunnel(new BrokerClient(), 'alice/viz', { localPort: 8888 });
 * // connect to 127.0.0.1:8888, send t.key + '\n', expect 'OK\n'
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
  const dest = destination(loaded);
  const me = process.getuid?.() ?? -1;
  const peers = opts.injectKey ? new PeerUidLookup() : null;
  // eslint-disable-next-line prefer-const -- assigned once the listener knows its port, used by its handler
  let tunnel: Tunnel;
  const server = createServer(async (local: Socket) => {
    local.setNoDelay(true);
    local.on('error', () => local.destroy());
    local.pause();
    if (peers) {
      // The key goes only to this user's own processes; whoever the kernel cannot attribute to
      // us is refused like a wrong key (LOC-5).
      const uid = await peers.lookup(local);
      if (uid !== me) {
        local.end('DENIED\n');
        tunnel.emit('refused', { uid });
        return;
      }
    }
    forward(ssh, dest, { host: '127.0.0.1', port: local.remotePort ?? 0 })
      .then(async (ch) => {
        if (opts.injectKey) await handshake(ch, loaded.key);
        local.resume();
        splice(local, ch);
        tunnel.emit('connection', local);
      })
      .catch((err: Error) => {
        tunnel.emit('error', err);
        local.destroy();
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      ssh.end();
      reject(
        new BrokerError(
          'validation_failed',
          `cannot listen on ${opts.localHost ?? '127.0.0.1'}:${opts.localPort ?? 0}: ${err.code}`,
        ),
      );
    });
    server.listen(opts.localPort ?? 0, localHost, () => resolve());
  });
  tunnel = new Tunnel((server.address() as { port: number }).port, loaded, server, ssh);
  ssh.on('close', () => {
    server.close();
    tunnel.emit('close');
  });
  ssh.on('error', (err) => tunnel.emit('error', err));
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

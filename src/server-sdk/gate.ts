/**
 * The TCP key gate (DESIGN §7): the client's first bytes are its key and `\n`; the gate verifies
 * it with the broker, answers `OK\n` and hands the socket to the application, or answers
 * `DENIED\n` and closes. A line over 512 bytes, or none within 10 s, is a refusal. Bytes the
 * client sent after the key line are given back to the application untouched.
 */
import type { Socket } from 'node:net';
import { KEY_LINE_TIMEOUT_MS, MAX_KEY_LINE_BYTES } from '../protocol/constants.js';
import type { VerifyResponse } from '../protocol/types.js';
import { KeyWatch, type LiveKeys } from './key-watch.js';

export interface GateOptions {
  /** Ask the broker about a key (normally `client.verify.bind(client)` with a service token). */
  verify: (key: string) => Promise<VerifyResponse>;
  /**
   * Which of these key ids still hold (normally `client.liveKeys`): a connection ends when the
   * key it was opened with is revoked or expires, or its principal loses access (re-checked every
   * 5 s, SES-2). Ignored when `keyWatch` is given.
   */
  live?: LiveKeys;
  /** A shared watch (one broker request per interval for every gate of a service). */
  keyWatch?: KeyWatch;
  timeoutMs?: number;
  maxLineBytes?: number;
  /** Called for every refusal, with a reason (never the key). */
  onDenied?: (reason: string, socket: Socket) => void;
}

export type GatedHandler = (socket: Socket, who: { principal: string; keyId: string }) => void;

/**
 * Wrap a connection handler so only key holders reach it.
 * @example
 * ```ts
 * const broker = new BrokerClient({ token: serviceToken });
 * net.createServer(gate((s) => s.pipe(s), { verify: (k) => broker.verify(k) })).listen(port);
 * ```
 */
export function gate(handler: GatedHandler, opts: GateOptions): (socket: Socket) => void {
  const timeoutMs = opts.timeoutMs ?? KEY_LINE_TIMEOUT_MS;
  const maxLine = opts.maxLineBytes ?? MAX_KEY_LINE_BYTES;
  const keyWatch = opts.keyWatch ?? (opts.live ? new KeyWatch({ live: opts.live }) : null);
  return (socket) => {
    socket.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    let settled = false;
    const deny = (reason: string) => {
      if (settled) return;
      settled = true;
      cleanup();
      opts.onDenied?.(reason, socket);
      socket.end('DENIED\n');
      socket.destroySoon?.();
      setTimeout(() => socket.destroy(), 1000).unref();
    };
    const timer = setTimeout(() => deny('no key line in time'), timeoutMs);
    const onError = () => deny('socket error');
    const onEnd = () => deny('closed before the key line');
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const nl = buf.indexOf(0x0a);
      if (nl === -1) {
        if (buf.length > maxLine) deny('key line too long');
        return;
      }
      if (nl > maxLine) return deny('key line too long');
      const key = buf.subarray(0, nl).toString('utf8').replace(/\r$/, '');
      const rest = buf.subarray(nl + 1);
      socket.pause();
      socket.off('data', onData);
      clearTimeout(timer);
      opts.verify(key).then(
        (r) => {
          if (settled) return;
          if (!r.valid) return deny('invalid key');
          settled = true;
          cleanup();
          if (keyWatch)
            socket.once(
              'close',
              keyWatch.watch(r.keyId, () => socket.destroy()),
            );
          socket.write('OK\n');
          if (rest.length) socket.unshift(rest);
          handler(socket, { principal: r.principal, keyId: r.keyId });
          socket.resume();
        },
        () => deny('broker verify failed'),
      );
    };
    const cleanup = () => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.on('error', () => {});
    };
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('error', onError);
  };
}

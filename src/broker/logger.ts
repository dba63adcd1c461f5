/**
 * The daemon's structured logger: pino, JSON lines on stdout. Writes are buffered (4 KiB or
 * 250 ms, whichever comes first) so the request path never waits on a write syscall; the buffer
 * is flushed synchronously at shutdown and on fatal errors.
 */
import pino, { type Logger } from 'pino';

export interface DaemonLogger {
  log: Logger;
  /** Write everything buffered, synchronously. */
  flush(): void;
  close(): void;
}

export function createLogger(level: string, fd = 1): DaemonLogger {
  const dest = pino.destination({ dest: fd, sync: false, minLength: 4096 });
  const log = pino({ level, base: { pid: process.pid } }, dest);
  const timer = setInterval(() => dest.flush(), 250);
  timer.unref();
  const flush = () => {
    try {
      dest.flushSync();
    } catch {
      /* nothing more can be done about a failing stdout */
    }
  };
  return {
    log,
    flush,
    close() {
      clearInterval(timer);
      flush();
    },
  };
}

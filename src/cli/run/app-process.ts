/**
 * The app of `broker run` as a process tree that `broker run` owns (issue 11): the command runs in
 * its own session and process group, so a signal reaches the whole tree (`kill(-pgid)`) — the
 * server behind `sh -c` or a wrapper script included —, and a reaper process (reaper.ts) stops the
 * group when `broker run` ends, even by SIGKILL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { fileURLToPath } from 'node:url';

/** How long the app's group gets between SIGTERM and SIGKILL (docker stop: 10 s; here 5 s). */
export const STOP_GRACE_MS = 5000;

const REAPER = fileURLToPath(new URL('./reaper.js', import.meta.url));

export interface AppProcess {
  /** The app's pid, which is also its process group id; undefined when it could not start. */
  readonly pid: number | undefined;
  /** Its status once it ends: the exit code, 128 + the signal, or 127 when it could not start. */
  readonly exited: Promise<number>;
  /** True once it has ended. */
  readonly ended: boolean;
  /** Send `sig` to the app's whole process group. */
  signal(sig: NodeJS.Signals): void;
  /** SIGTERM to the group, SIGKILL after `graceMs`; resolves with the app's status. */
  stop(graceMs?: number): Promise<number>;
  /** Let the reaper clean up what is left of the group (normally at exit). */
  release(): void;
}

/**
 * Start `file args` in its own process group, with a reaper watching `broker run`.
 * `onSpawnError` gets the message when the command cannot be started at all.
 */
export function startApp(
  file: string,
  args: string[],
  opts: { env: NodeJS.ProcessEnv; onSpawnError: (message: string) => void },
): AppProcess {
  // The reaper first, so the app is never without one. It is detached too: a signal to
  // `broker run`'s own group (a job scheduler's, a terminal's) does not take it away.
  const reaper: ChildProcess = spawn(process.execPath, [REAPER, String(STOP_GRACE_MS)], {
    stdio: ['pipe', 'ignore', 'inherit'],
    detached: true,
  });
  reaper.on('error', () => {});
  reaper.stdin!.on('error', () => {});
  reaper.unref();
  (reaper.stdin as unknown as { unref?: () => void }).unref?.();

  const child = spawn(file, args, { env: opts.env, stdio: 'inherit', detached: true });
  const pid = child.pid;
  // Written in the same tick as the spawn: there is no moment where the group is unwatched.
  if (pid) reaper.stdin!.write(`${pid}\n`);

  let ended = false;
  const exited = new Promise<number>((resolve) => {
    child.once('exit', (code, signal) => {
      ended = true;
      resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0));
    });
    child.once('error', (err) => {
      ended = true;
      opts.onSpawnError(err.message);
      resolve(127);
    });
  });

  const signal = (sig: NodeJS.Signals) => {
    if (!pid) return;
    try {
      process.kill(-pid, sig);
    } catch {
      /* the group is gone */
    }
  };

  return {
    pid,
    exited,
    get ended() {
      return ended;
    },
    signal,
    async stop(graceMs = STOP_GRACE_MS) {
      if (!ended) {
        signal('SIGTERM');
        const timer = setTimeout(() => signal('SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      }
      return exited;
    },
    release() {
      reaper.stdin!.end();
    },
  };
}

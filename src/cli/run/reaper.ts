/**
 * The reaper: a tiny process that `broker run` starts before its app and keeps a pipe to. The app
 * runs in its own process group; `broker run` writes that group's id down the pipe. When the pipe
 * closes — `broker run` ended, normally or by SIGKILL — the reaper stops the whole group: SIGTERM,
 * then SIGKILL after a grace period. PR_SET_PDEATHSIG (`setpriv --pdeathsig`) would reach only
 * the direct child; a server behind `sh -c` or a wrapper script would be orphaned and keep
 * serving. Processes that leave the group on purpose (setsid, daemonising) are out of its reach.
 *
 * Usage (internal): `node reaper.js GRACE_MS`, the group id on stdin. It ignores SIGINT, SIGTERM
 * and SIGHUP (a Ctrl-C on the terminal is for `broker run`, which passes it on), imports nothing
 * and starts in ~40 ms.
 */
export {};

const graceMs = Number(process.argv[2] ?? 5000) || 5000;
let pgid = 0;
let input = '';

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => {});

/** True while any process of the group exists (zombies included: they go with their parent). */
function alive(): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch {
    return false;
  }
}

function reap(): void {
  if (!pgid || !alive()) process.exit(0);
  try {
    process.kill(-pgid, 'SIGTERM');
  } catch {
    process.exit(0);
  }
  const started = Date.now();
  const poll = setInterval(() => {
    if (!alive()) process.exit(0);
    if (Date.now() - started < graceMs) return;
    clearInterval(poll);
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
    process.exit(0);
  }, 100);
}

process.stdin.on('data', (c: Buffer) => {
  input += c.toString('latin1');
  const m = /^(\d+)\n/.exec(input);
  // Never 0 or 1: kill(-1) would signal every process this user may signal.
  if (m && Number(m[1]) > 1) pgid = Number(m[1]);
});
process.stdin.on('end', reap);
process.stdin.on('error', reap);

/**
 * `broker run --isolate`: the app in its own network namespace (SECURITY.md LOC-3), for apps that
 * have no authentication and cannot listen on a Unix socket (Python's http.server, TensorBoard).
 * Its loopback is its own: no other user on the host can connect to its port. A small relay
 * inside the namespace (ns-relay.ts) carries connections from a Unix socket in broker run's 0700
 * directory to the app's 127.0.0.1:{app_port} (or [::1]), and the gate talks to that socket.
 *
 * It needs unprivileged user namespaces (`unshare --user --map-current-user --net`, util-linux)
 * and `ip` (iproute2) to bring the namespace's loopback up; `setpriv` (util-linux), when present,
 * drops the namespace capabilities before the app starts. The app has no network beyond its own
 * loopback: no downloads, no outside databases.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const RELAY = fileURLToPath(new URL('./ns-relay.js', import.meta.url));

export interface IsolationTools {
  unshare: string;
  ip: string;
  setpriv: string | null;
}

/** The first executable of `names` in `dirs` (then PATH), or null. */
function which(name: string, env: NodeJS.ProcessEnv, extra: string[]): string | null {
  const dirs = [...extra, ...(env.PATH ?? '').split(delimiter).filter(Boolean)];
  for (const d of dirs) {
    const p = join(d, name);
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

const SYSTEM = ['/usr/bin', '/bin', '/usr/sbin', '/sbin'];

/** The user-namespace flags: a namespace with us as ourselves, capabilities kept for `ip`. */
const UNSHARE_FLAGS = ['--user', '--map-current-user', '--keep-caps', '--net'];

/**
 * Can this host isolate an app? Runs the real thing once (a namespace whose loopback `ip` brings
 * up; ~10 ms). Resolves the tools, or the reason it cannot, in words a user can act on.
 */
export function probeIsolation(
  env: NodeJS.ProcessEnv,
): Promise<{ ok: true; tools: IsolationTools } | { ok: false; reason: string }> {
  const unshare = which('unshare', env, SYSTEM);
  const ip = which('ip', env, SYSTEM);
  if (!unshare)
    return Promise.resolve({ ok: false, reason: 'unshare (util-linux) is not installed' });
  if (!ip) return Promise.resolve({ ok: false, reason: 'ip (iproute2) is not installed' });
  const setpriv = which('setpriv', env, SYSTEM);
  return new Promise((resolve) =>
    execFile(
      unshare,
      [...UNSHARE_FLAGS, '--', ip, 'link', 'set', 'lo', 'up'],
      { timeout: 5000 },
      (err, _out, stderr) =>
        resolve(
          err
            ? {
                ok: false,
                reason: `this host does not let you create a network namespace (${(stderr || err.message).trim().split('\n')[0]}; user namespaces may be disabled: sysctl user.max_user_namespaces / kernel.unprivileged_userns_clone)`,
              }
            : { ok: true, tools: { unshare, ip, setpriv } },
        ),
    ),
  );
}

/**
 * The command line that runs `file args` isolated: unshare → the relay (inside the namespace) →
 * setpriv (drop capabilities) → the app. The relay listens on `socket` once the app accepts on
 * `port`, and ends with the app's status.
 */
export function isolatedCommand(
  tools: IsolationTools,
  socket: string,
  port: number,
  file: string,
  args: string[],
): { file: string; args: string[] } {
  const app = tools.setpriv
    ? [tools.setpriv, '--inh-caps=-all', '--ambient-caps=-all', '--', file, ...args]
    : [file, ...args];
  return {
    file: tools.unshare,
    args: [
      ...UNSHARE_FLAGS,
      '--',
      process.execPath,
      RELAY,
      tools.ip,
      socket,
      String(port),
      '--',
      ...app,
    ],
  };
}

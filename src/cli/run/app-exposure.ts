/**
 * How the app behind `broker run` can be reached by other local users, decided before it is
 * registered (the broker records and audits it: SECURITY.md LOC-3), strongest first:
 *
 * - `unix-socket`: the app listens on `{app_socket}` in a 0700 directory: only we can connect.
 * - `private-network`: `--isolate`: the app's loopback is its own network namespace's.
 * - `app-credential`: `--app-auth`: the app checks a per-run secret that only the front presents
 *   (also `--no-gate`: the app checks the broker keys itself).
 * - `open`: a loopback port with no check: any local user reaches the app without a key. broker
 *   run says so loudly and reports it.
 */
import type { AppExposure } from '../../protocol/types.js';
import { UsageError } from '../util.js';
import { parseAppAuthKind } from './app-auth.js';
import { probeIsolation, type IsolationTools } from './isolate.js';

export interface ExposurePlan {
  /** Where the app listens. */
  listen: 'socket' | 'port';
  exposure: AppExposure;
  /** --isolate, when the host allows it. */
  isolation: IsolationTools | null;
  /** --app-auth kind (normalised), or null. */
  appAuth: string | null;
  /** Lines for stderr before the app starts (fallbacks). */
  notes: string[];
}

export interface ExposureOptions {
  mode: 'tcp' | 'https';
  noGate: boolean;
  /** --app-listen, when given. */
  appListen?: string;
  isolate: boolean;
  appAuth?: string;
}

/** Decide from the options and the command's placeholders; probes isolation when asked for. */
export async function planExposure(
  o: ExposureOptions,
  command: string[],
  env: NodeJS.ProcessEnv,
): Promise<ExposurePlan> {
  const usesSocket = command.some((a) => a.includes('{app_socket}'));
  const usesPort = command.some((a) => a.includes('{app_port}'));
  if (usesSocket && usesPort)
    throw new UsageError('give the app {app_socket} or {app_port}, not both');
  if (o.appListen !== undefined && o.appListen !== 'socket' && o.appListen !== 'port')
    throw new UsageError('--app-listen must be socket or port');
  const listen = (o.appListen ?? (usesSocket ? 'socket' : 'port')) as 'socket' | 'port';
  if (listen === 'socket' && usesPort)
    throw new UsageError('--app-listen socket: use {app_socket} in the command, not {app_port}');
  if (listen === 'port' && usesSocket)
    throw new UsageError('--app-listen port: use {app_port} in the command, not {app_socket}');
  const appAuth = o.appAuth !== undefined ? parseAppAuthKind(o.appAuth) : null;
  if (appAuth && o.mode !== 'https')
    throw new UsageError(
      '--app-auth needs --mode https (the credential is an HTTP header); a tcp app: use {app_socket} or --isolate',
    );
  if (appAuth && o.noGate) throw new UsageError('--app-auth needs the gate (drop --no-gate)');
  if (o.isolate && listen === 'socket')
    throw new UsageError(
      '--isolate is for apps on {app_port}; on {app_socket} the app is private already',
    );
  if (o.isolate && o.noGate) throw new UsageError('--isolate needs the gate (drop --no-gate)');

  const notes: string[] = [];
  if (listen === 'socket')
    return { listen, exposure: 'unix-socket', isolation: null, appAuth, notes };
  if (o.isolate) {
    const probe = await probeIsolation(env);
    if (probe.ok)
      return { listen, exposure: 'private-network', isolation: probe.tools, appAuth, notes };
    notes.push(`--isolate is not possible here: ${probe.reason}.`);
  }
  const exposure: AppExposure = appAuth || o.noGate ? 'app-credential' : 'open';
  return { listen, exposure, isolation: null, appAuth, notes };
}

/** The loud warning of an `open` app, one line each. */
export function openWarning(port: number): string[] {
  return [
    `WARNING: any local user can reach this app on 127.0.0.1:${port} without a key: it is not behind the gate there.`,
    'WARNING: the broker records this service as exposure=open. Instead: let the app listen on {app_socket}',
    'WARNING: (e.g. uvicorn --uds {app_socket}), give it a credential with --app-auth, or run it with --isolate.',
  ];
}

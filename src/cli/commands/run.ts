/**
 * broker run: put an existing server behind the broker in one command (DESIGN §8). Registers
 * (with how the app can be reached locally: src/cli/run/app-exposure.ts), starts the command in
 * its own process group with a reaper (src/cli/run/app-process.ts), puts the key gate in front of
 * it (tcp-front.ts, https-front.ts), goes "up" only once the app listens where it should — on its
 * socket, or on a port held by our own UID (app-listener.ts) —, keeps heartbeats and the tunnel up,
 * forwards signals to the app's whole tree, stops the app when its service is removed or it never
 * becomes ready, unregisters and exits with the app's status.
 */
import { createServer, type Server } from 'node:net';
import type { Server as TlsServer } from 'node:https';
import type { Command } from 'commander';
import type { Action } from '../main.js';
import type { Io } from '../io.js';
import { client, parseDuration, sleep, UsageError } from '../util.js';

const EXAMPLES = `
Examples:
  # the app listens on a Unix socket in a private 0700 directory: no other user can connect
  broker run echo -- python3 examples/python-echo/echo_server.py --unix-socket {app_socket}
  broker run nb --mode https --app-auth jupyter -- jupyter lab --no-browser \\
      --ServerApp.sock={app_socket} --ServerApp.allow_remote_access=True \\
      --KernelManager.transport=ipc   # kernels on private sockets too, not on TCP
  broker run api --mode https -- uvicorn app:app --uds {app_socket}
  broker run code --mode https -- code-server --auth none --socket {app_socket}
  # TCP only, but the app checks a credential: broker run makes one, the front presents it
  broker run nb --mode https --app-auth jupyter -- jupyter lab --no-browser --port {app_port} \\
      --KernelManager.transport=ipc
  broker run api --mode https --app-auth header:X-App-Token -- ./server --port {app_port}
  # TCP only and no authentication: its own network namespace (no other network for the app)
  broker run files --mode https --isolate -- python3 -m http.server {app_port} --bind 127.0.0.1
  broker run tb --mode https --isolate -- tensorboard --logdir runs --host 127.0.0.1 --port {app_port}
  # a wrapper script that reads $BROKER_APP_SOCKET; a slow starter; long-idle requests
  broker run web --mode https --app-listen socket -- ./start-web.sh
  broker run big --ready-timeout 10m -- ./load-model-then-serve --unix-socket {app_socket}
  broker run poll --mode https --idle-timeout 30m -- uvicorn app:app --uds {app_socket}
  # a server that checks keys itself (service token in the 0600 file $BROKER_TOKEN_FILE)
  broker run raw --no-gate --tunnel none -- ./server --port {port}

Where the app listens:
  {app_socket}  a Unix socket in a 0700 directory (BROKER_APP_SOCKET): only you can connect.
                Preferred; exposure "unix-socket".
  {app_port}    127.0.0.1:PORT (BROKER_APP_PORT). Any local user can connect there, so broker run
                needs one of: --isolate (exposure "private-network"), --app-auth (exposure
                "app-credential"), or it prints a WARNING and registers exposure "open".
  --app-listen socket|port says which, for commands that read the environment instead of
  {app_socket}/{app_port}. On a port, broker run goes up only when the listener belongs to your
  UID, and every new connection to the app is checked the same way before a byte is sent: a port
  held by another user (at start, or taken while the app restarted) gets nothing, stops the app
  (exit 1) and names the UID.

--app-auth KIND gives the app a fresh 256-bit credential in its environment and in a 0600 file
(never in its arguments); the HTTPS front presents it on every request:
  jupyter       JUPYTER_TOKEN, JUPYTER_TOKEN_FILE; sent as "Authorization: token …"
  bearer        BROKER_APP_TOKEN, BROKER_APP_TOKEN_FILE; sent as "Authorization: Bearer …"
  header:NAME   the same variables; sent as "NAME: …"

--isolate runs the app with unshare (user + network namespace) and a relay from a socket in the
private directory to its loopback; it needs unprivileged user namespaces, unshare and ip. Where
they are missing broker run says why and goes on without (exposure as without --isolate).

The app gets BROKER_SERVICE, BROKER_PORT (the public port) and BROKER_APP_SOCKET or
BROKER_APP_PORT; never a secret in its arguments. The HTTPS front never passes the broker key,
the login cookie or client-sent X-Forwarded-* on; it sets X-Forwarded-For/-Proto/-Host, and
X-Forwarded-User (the principal) unless the app is open.

The app runs in its own process group: SIGINT, SIGTERM and SIGHUP go to all of it (SIGKILL 5 s
after SIGINT/SIGTERM if it is still there), and if broker run itself dies, even by SIGKILL, the
group is stopped. The app is stopped when its service is removed (unregister, lease end; exit 1)
or when it does not listen within --ready-timeout (exit 1, unregistered). Otherwise broker run
exits with the app's status.`;

/** The options as commander gives them. */
interface RunOptions {
  tunnel: string;
  mode: string;
  host?: string;
  ttl?: string;
  gate: boolean;
  readyTimeout: string;
  appListen?: string;
  isolate?: boolean;
  appAuth?: string;
  idleTimeout: string;
}

export function define(program: Command, action: Action): void {
  program
    .command('run')
    .argument('<name>', 'service name (yours)')
    .argument('<command...>', 'the server to start, after --')
    .description(
      'register, start COMMAND behind a key gate, keep it reachable, unregister when it ends',
    )
    .option('--tunnel <kind>', 'ssh (reverse tunnel; the app stays on loopback) or none', 'ssh')
    .option(
      '--mode <mode>',
      'tcp (key line, then a byte pipe) or https (TLS, key or login URL, then an HTTP proxy)',
      'tcp',
    )
    .option(
      '--host <ip>',
      'with --tunnel none: the address to listen on (default: the address you register from)',
    )
    .option('--ttl <dur>', 'lease (heartbeats extend it)')
    .option(
      '--no-gate',
      'no gate: the app listens itself and checks keys (service token in the file $BROKER_TOKEN_FILE)',
    )
    .option(
      '--ready-timeout <dur>',
      'stop and unregister if the app does not listen by then',
      '120s',
    )
    .option(
      '--app-listen <where>',
      'socket ({app_socket}) or port ({app_port}); default: whichever the command names, else port',
    )
    .option('--isolate', 'run the app in its own network namespace (for apps on {app_port})')
    .option(
      '--app-auth <kind>',
      'https: give the app a per-run credential the front presents: jupyter, bearer, header:NAME',
    )
    .option('--idle-timeout <dur>', 'https: close a connection with no traffic for this long', '5m')
    .addHelpText('after', EXAMPLES)
    .action(
      action(async (io, name: string, command: string[], opts: RunOptions) =>
        run(io, name, command, opts),
      ),
    );
}

async function run(io: Io, name: string, command: string[], opts: RunOptions): Promise<number> {
  if (opts.mode !== 'tcp' && opts.mode !== 'https')
    throw new UsageError('--mode must be tcp or https');
  if (opts.tunnel !== 'ssh' && opts.tunnel !== 'none')
    throw new UsageError('--tunnel must be ssh or none');
  const https = opts.mode === 'https';
  const noGate = opts.gate === false;
  const tunnel = opts.tunnel;
  if (https && noGate)
    throw new UsageError('--no-gate with --mode https: use the server SDK (httpGate) in your app');
  if (command.length === 0) throw new UsageError('give the command to run after --');
  const readyMs = parseDuration(opts.readyTimeout, '--ready-timeout') * 1000;
  const idleMs = parseDuration(opts.idleTimeout, '--idle-timeout') * 1000;
  const ttlSeconds = opts.ttl ? parseDuration(opts.ttl, '--ttl') : undefined;

  const { planExposure, openWarning } = await import('../run/app-exposure.js');
  const plan = await planExposure(
    {
      mode: opts.mode,
      noGate,
      appListen: opts.appListen,
      isolate: opts.isolate === true,
      appAuth: opts.appAuth,
    },
    command,
    io.env,
  );
  const say = (s: string) => io.stderr.write(`broker run: ${s}\n`);
  for (const n of plan.notes) say(n);

  const [{ makeWorkDir }, { registerService }, { startApp, STOP_GRACE_MS }, listener] =
    await Promise.all([
      import('../run/work-dir.js'),
      import('../../server-sdk/service.js'),
      import('../run/app-process.js'),
      import('../run/app-listener.js'),
    ]);
  const work = makeWorkDir(io.env);
  const broker = client(io);
  try {
    // The app's own port: a free loopback port (also inside --isolate's namespace), or with
    // --no-gate --tunnel none the public port itself (known after registering).
    const appPublic = noGate && tunnel === 'none';
    const freePort = plan.listen === 'port' && !appPublic ? await freeLoopbackPort() : 0;
    const svc = await registerService({
      broker,
      name,
      tunnel,
      mode: https ? 'https' : 'tcp',
      exposure: plan.exposure,
      ...(opts.host ? { host: opts.host } : {}),
      ...(ttlSeconds ? { ttlSeconds } : {}),
      // Tunnelled connections go to the gate (or straight to the app with --no-gate); the tunnel
      // attaches only once the app listens (retarget below).
      target: { port: 0 },
      startTunnel: false,
    });
    const appPort = plan.listen === 'port' ? (appPublic ? svc.port : freePort) : 0;
    if (plan.exposure === 'open') for (const l of openWarning(appPort)) say(l);

    // Where the gate reaches the app: the socket (the app's, or --isolate's relay), or the port.
    const portTarget = { host: '127.0.0.1', port: appPort };
    const target = plan.listen === 'socket' || plan.isolation ? { path: work.socket } : portTarget;
    type Outcome =
      | { kind: 'exited'; code: number }
      | { kind: 'removed' }
      | { kind: 'timeout' }
      | { kind: 'foreign'; owners: { uid: number; address: string }[] }
      | { kind: 'unverifiable'; message: string };
    let finish!: (o: Outcome) => void;
    const outcome = new Promise<Outcome>((resolve) => (finish = resolve));
    let finished = false;
    void outcome.then(() => (finished = true));
    // Every connection broker run makes to the app's port is attributed before a byte goes
    // through it (app-listener.ts). With --no-gate --tunnel none it makes none: clients reach
    // the app on its public port directly.
    const guard =
      'path' in target || appPublic
        ? null
        : new listener.UpstreamGuard(portTarget, (owners) => finish({ kind: 'foreign', owners }));

    const env: NodeJS.ProcessEnv = { ...io.env };
    for (const k of Object.keys(env))
      if (k === 'BROKER_TOKEN' || k.startsWith('BROKER_APP_') || k === 'BROKER_TOKEN_FILE')
        delete env[k]; // the app never sees the user's token, nor a parent run's variables
    env.BROKER_SERVICE = svc.ref;
    env.BROKER_PORT = String(svc.port);
    if (plan.listen === 'port') env.BROKER_APP_PORT = String(appPort);
    else env.BROKER_APP_SOCKET = work.socket;
    let appAuth: { name: string; value: string } | null = null;
    if (plan.appAuth) {
      const { makeAppAuth } = await import('../run/app-auth.js');
      const a = makeAppAuth(plan.appAuth, work.path);
      Object.assign(env, a.env);
      appAuth = a.upstream;
    }
    if (noGate) {
      // FS-4: the service token goes in a 0600 file whose path is in the environment.
      const { writeFileSync } = await import('node:fs');
      const tokenFile = `${work.path}/service-token`;
      writeFileSync(tokenFile, svc.serviceToken + '\n', { mode: 0o600, flag: 'wx' });
      env.BROKER_TOKEN_FILE = tokenFile;
    }
    const subst = (a: string) =>
      a
        .replaceAll('{port}', String(svc.port))
        .replaceAll('{app_port}', String(appPort))
        .replaceAll('{app_socket}', work.socket);
    const args = command.slice(1).map(subst);
    let spawnTarget = { file: command[0]!, args };
    if (plan.isolation) {
      const { isolatedCommand } = await import('../run/isolate.js');
      spawnTarget = isolatedCommand(plan.isolation, work.socket, appPort, command[0]!, args);
    }
    const app = startApp(spawnTarget.file, spawnTarget.args, {
      env,
      onSpawnError: (m) => say(`cannot start ${command[0]}: ${m}`),
    });
    void app.exited.then((code) => finish({ kind: 'exited', code }));
    svc.once('removed', () => finish({ kind: 'removed' }));
    let killTimer: NodeJS.Timeout | null = null;
    const onSignal = (sig: NodeJS.Signals) => {
      app.signal(sig);
      if (sig !== 'SIGHUP' && !killTimer)
        killTimer = setTimeout(() => app.signal('SIGKILL'), STOP_GRACE_MS);
    };
    const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
    for (const sig of signals) process.on(sig, onSignal);

    let front: Server | TlsServer | null = null;
    let relay: Server | null = null;
    try {
      if (noGate && tunnel === 'ssh' && guard) {
        // The app checks keys itself, so the tunnel's connections go to it as they are — through
        // a relay on the private socket (unused on a port) that hands each to the app only once
        // the kernel says the app's UID answered it, as the fronts do.
        const { carryToApp } = await import('../run/tcp-front.js');
        relay = createServer((s) => carryToApp(s, portTarget, guard));
        await new Promise<void>((resolve, reject) => {
          relay!.once('error', reject);
          relay!.listen(work.socket, () => resolve());
        });
      }
      if (!noGate) {
        front = https
          ? (await import('../run/https-front.js')).httpsFront(svc, target, {
              guard,
              appAuth,
              // Only where no one can reach the app around the front can it trust this header.
              forwardUser: plan.exposure !== 'open',
              idleTimeoutMs: idleMs,
            })
          : (await import('../run/tcp-front.js')).tcpFront(svc, target, guard);
        if (tunnel === 'none') {
          // Its port on both loopback addresses: its name resolves to both (browsers try ::1
          // first), and a twin left free would be another user's to take (pen test 2).
          const { listenOnLoopback } = await import('../../server-sdk/loopback.js');
          try {
            await listenOnLoopback(front, svc.port, svc.service.host);
          } catch (err) {
            const e = err as { code?: string; message?: string };
            say(
              `${e.code ?? 'port_unavailable'}: ${e.message}; stopping ${command[0]} and unregistering ${svc.ref}`,
            );
            await app.stop();
            return 1;
          }
        } else
          await new Promise<void>((resolve, reject) => {
            front!.once('error', reject);
            front!.listen(0, '127.0.0.1', () => resolve());
          });
      }

      // Up once the app listens where it should.
      const where =
        'path' in target
          ? plan.isolation
            ? `127.0.0.1:${appPort} (isolated)`
            : work.socket
          : `127.0.0.1:${appPort}`;
      const deadline = Date.now() + readyMs;
      let up = false;
      while (!up && !finished) {
        if (Date.now() >= deadline) {
          finish({ kind: 'timeout' });
          break;
        }
        if ('path' in target) up = await accepts(target.path);
        else {
          let c: Awaited<ReturnType<typeof listener.checkListener>>;
          try {
            c = await listener.checkListener(appPort);
          } catch (err) {
            finish({
              kind: 'unverifiable',
              message: `cannot read the socket table to check who holds port ${appPort} (${(err as Error).message})`,
            });
            break;
          }
          if (c.kind === 'foreign') finish({ kind: 'foreign', owners: c.owners });
          else if (c.kind === 'ours') {
            portTarget.host = c.host;
            up = true;
            const wide = c.addresses.filter((a) => !/^(127\.|::1$)/.test(a));
            if (wide.length && !appPublic)
              say(
                `WARNING: the app listens on ${wide.join(', ')} port ${appPort}, not only on loopback: other hosts can reach it without a key; bind it to 127.0.0.1`,
              );
          }
        }
        if (!up && !finished) await sleep(100);
      }
      if (up && !finished) {
        if (tunnel === 'none') await svc.ready();
        else if (front) svc.retarget({ port: (front.address() as { port: number }).port });
        else if (relay) svc.retarget({ path: work.socket });
        else svc.retarget('path' in target ? target : { host: portTarget.host, port: appPort });
        say(
          `${svc.ref} is up on port ${svc.port}${noGate ? ' (no gate)' : ', gated'}; the app is on ${where} (exposure ${plan.exposure})`,
        );
      }

      const o = await outcome;
      const cmd = command[0];
      switch (o.kind) {
        case 'exited':
          say(`${cmd} exited with ${o.code}; unregistering ${svc.ref}`);
          return o.code;
        case 'removed':
          say(
            `service_not_found: ${svc.ref} was removed from the broker (unregistered, its owner removed, or its lease ended); stopping ${cmd}`,
          );
          break;
        case 'timeout':
          say(
            `service_not_ready: ${cmd} did not listen on ${where} within ${opts.readyTimeout}; check its output above, that it listens on the ${'path' in target && !plan.isolation ? '{app_socket}' : '{app_port}'} it was given, or allow more time with --ready-timeout; stopping it and unregistering ${svc.ref}`,
          );
          break;
        case 'foreign':
          say(
            `port_unavailable: port ${appPort} is held by ${[...new Set(o.owners.map((w) => listener.describeUid(w.uid)))].join(', ')}, not by you (UID ${process.getuid?.()}): another user may be trying to receive your clients' traffic; nothing was forwarded there. Stopping ${cmd} and unregistering ${svc.ref}. Let the app listen on {app_socket}, or use --isolate`,
          );
          break;
        case 'unverifiable':
          say(
            `port_unavailable: ${o.message}; stopping ${cmd}. Let the app listen on {app_socket}`,
          );
          break;
      }
      await app.stop();
      return 1;
    } finally {
      for (const sig of signals) process.off(sig, onSignal);
      if (killTimer) clearTimeout(killTimer);
      front?.close();
      relay?.close();
      await svc.close().catch(() => {});
      app.release();
    }
  } finally {
    broker.close();
    work.remove();
  }
}

function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function accepts(path: string): Promise<boolean> {
  const { connect } = await import('node:net');
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

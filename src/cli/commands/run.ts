/**
 * broker run: put an existing server behind the broker in one command (DESIGN §8). Registers,
 * starts the command with the ports in its environment and `{port}`/`{app_port}`/`{app_socket}`
 * substituted in its arguments (never a secret), puts the key gate in front of it, keeps
 * heartbeats and the tunnel up, forwards signals, unregisters and exits with the command's status.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { client, parseDuration, sleep, UsageError } from '../util.js';

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

function accepts(target: { port: number } | { path: string }): Promise<boolean> {
  return new Promise((resolve) => {
    const s =
      'path' in target
        ? netConnect(target.path)
        : netConnect({ host: '127.0.0.1', port: target.port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
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
    .option('--ready-timeout <dur>', 'how long to wait for the app to accept connections', '120s')
    .addHelpText(
      'after',
      `
Examples:
  broker run echo -- python3 -m my_echo_server --port {app_port}
  broker run tb --mode https -- tensorboard --logdir runs --host 127.0.0.1 --port {app_port}
  broker run files --mode https -- python3 -m http.server {app_port} --bind 127.0.0.1   # then: broker open files
  broker run raw --no-gate --tunnel none -- ./server --port {port}    # checks keys itself

The command gets BROKER_SERVICE, BROKER_PORT (the public port), BROKER_APP_PORT (where it must
listen, on 127.0.0.1) and BROKER_APP_SOCKET (a path, for apps that can listen on a Unix socket:
use {app_socket} instead of {app_port}). It never gets a secret in its arguments. SIGINT, SIGTERM
and SIGHUP are forwarded; broker run exits with the command's status.`,
    )
    .action(
      action(
        async (
          io,
          name: string,
          command: string[],
          opts: Record<string, string | boolean | undefined>,
        ) => {
          if (opts.mode !== 'tcp' && opts.mode !== 'https') {
            throw new UsageError('--mode must be tcp or https');
          }
          const https = opts.mode === 'https';
          if (https && opts.gate === false) {
            throw new UsageError(
              '--no-gate with --mode https: use the server SDK (httpGate) in your app',
            );
          }
          if (command.length === 0) throw new UsageError('give the command to run after --');
          const { registerService } = await import('../../server-sdk/service.js');
          const { gate } = await import('../../server-sdk/gate.js');
          const { splice } = await import('../../protocol/splice.js');
          const useSocket = command.some((a) => a.includes('{app_socket}'));
          const work = mkdtempSync(join(tmpdir(), 'broker-run-'));
          const appSocket = join(work, 'app.sock');
          const appPort = useSocket ? 0 : await freeLoopbackPort();
          const appTarget: { path: string } | { port: number } = useSocket
            ? { path: appSocket }
            : { port: appPort };
          const tunnel = opts.tunnel === 'none' ? 'none' : 'ssh';
          const noGate = opts.gate === false;
          const broker = client(io);
          const svc = await registerService({
            broker,
            name,
            tunnel,
            mode: https ? 'https' : 'tcp',
            ...(opts.host ? { host: String(opts.host) } : {}),
            ...(opts.ttl ? { ttlSeconds: parseDuration(String(opts.ttl), '--ttl') } : {}),
            // Tunnelled connections go to the gate (or straight to the app with --no-gate); the
            // tunnel attaches only once the app accepts connections (retarget below).
            target: { port: 0 },
            startTunnel: false,
          });
          const say = (s: string) => io.stderr.write(`broker run: ${s}\n`);
          let gateServer: Server | import('node:https').Server | null = null;
          const cleanup = () => rmSync(work, { recursive: true, force: true });
          try {
            const env: NodeJS.ProcessEnv = {
              ...io.env,
              BROKER_SERVICE: svc.ref,
              BROKER_PORT: String(svc.port),
              BROKER_APP_PORT: String(noGate && tunnel === 'none' ? svc.port : appPort || ''),
              BROKER_APP_SOCKET: appSocket,
            };
            delete env.BROKER_TOKEN; // the app never sees the user's token
            if (noGate) {
              // FS-4: the service token goes in a 0600 file whose path is in the environment.
              const tokenFile = join(work, 'service-token');
              writeFileSync(tokenFile, svc.serviceToken + '\n', { mode: 0o600 });
              env.BROKER_TOKEN_FILE = tokenFile;
            }
            const subst = (a: string) =>
              a
                .replaceAll('{port}', String(svc.port))
                .replaceAll('{app_port}', String(noGate && tunnel === 'none' ? svc.port : appPort))
                .replaceAll('{app_socket}', appSocket);
            const child = spawn(command[0]!, command.slice(1).map(subst), {
              env,
              stdio: ['inherit', 'inherit', 'inherit'],
            });
            // The app's status: its exit code, 128 + the signal that killed it, or 127 when it
            // could not be started at all (a spawn error emits no 'exit').
            let ended = false;
            const exited = new Promise<number>((resolve) => {
              child.once('exit', (code, signal) => {
                ended = true;
                resolve(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0));
              });
              child.once('error', (err) => {
                ended = true;
                say(`cannot start ${command[0]}: ${err.message}`);
                resolve(127);
              });
            });
            for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const)
              process.on(sig, () => child.kill(sig));

            // The gate: key line, verify, then a byte-for-byte pipe to the app.
            const target = noGate ? (tunnel === 'none' ? null : appTarget) : appTarget;
            if (!noGate) {
              gateServer = https
                ? (await import('./https-front.js')).httpsFront(svc, appTarget)
                : createServer(
                    gate(
                      (sock: Socket) => {
                        const up =
                          'path' in appTarget
                            ? netConnect(appTarget.path)
                            : netConnect({ host: '127.0.0.1', port: appTarget.port });
                        if (!('path' in appTarget)) up.setNoDelay(true);
                        splice(sock, up);
                      },
                      { verify: (k) => svc.verify(k) },
                    ),
                  );
              const listenHost = tunnel === 'none' ? svc.service.host : '127.0.0.1';
              await new Promise<void>((resolve, reject) => {
                gateServer!.once('error', reject);
                gateServer!.listen(tunnel === 'none' ? svc.port : 0, listenHost, () => resolve());
              });
            }
            // Ready once the app accepts connections.
            const deadline =
              Date.now() + parseDuration(String(opts.readyTimeout), '--ready-timeout') * 1000;
            const probe = target ?? { port: svc.port };
            let up = false;
            while (!up && Date.now() < deadline && !ended) {
              up = await accepts(probe);
              if (!up) await sleep(100);
            }
            if (up) {
              if (tunnel === 'none') await svc.ready();
              else {
                const gatePort = gateServer
                  ? (gateServer.address() as { port: number }).port
                  : appPort;
                svc.retarget(gatePort ? { port: gatePort } : appTarget);
              }
              say(`${svc.ref} is up on port ${svc.port}${noGate ? ' (no gate)' : ', gated'}`);
            } else if (!ended)
              say(`the app did not accept connections within ${opts.readyTimeout}`);
            const code = await exited;
            say(`${command[0]} exited with ${code}; unregistering ${svc.ref}`);
            return code;
          } finally {
            gateServer?.close();
            await svc.close().catch(() => {});
            broker.close();
            cleanup();
          }
        },
      ),
    );
}

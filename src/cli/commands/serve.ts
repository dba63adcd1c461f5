import { setFlagsFromString } from 'node:v8';
import type { Command } from 'commander';
import type { Action } from '../main.js';

export function define(program: Command, action: Action): void {
  program
    .command('serve')
    .description('run the broker daemon: the HTTPS API and the SSH gateway')
    .option('--config <file>', 'JSON config file (unknown keys are an error)')
    .option('--data <dir>', 'state directory (default $BROKER_DATA or ~/.local/state/broker)')
    .option('--listen <host:port>', 'HTTPS API address (default 127.0.0.1:7700)')
    .option('--ssh-listen <host:port>', 'SSH gateway address (default 127.0.0.1:7722)')
    .option('--port-range <a-b>', 'service ports to hand out (default 20000-20999)')
    .option('--public-host <name>', 'the name clients use to reach this host')
    .addHelpText(
      'after',
      `
Examples:
  broker serve                                   # a personal broker on 127.0.0.1:7700
  broker serve --listen 0.0.0.0:7700 --public-host login1.example.org

Logs are JSON lines on stdout. On first start the broker creates its CA, the gateway's SSH host
key, an admin principal and
<data>/credentials.json (0600), which every other command on this host finds by itself.
SIGTERM or Ctrl-C drains requests and exits 0.`,
    )
    .action(
      action(async (io, opts: Record<string, string | undefined>) => {
        // Tunnel traffic allocates at least one Buffer byte per byte carried (every socket
        // read, ssh2's packets). V8 counts that external memory against the old-generation
        // limit, which it set only ~1.4x above the daemon's ~18 MiB heap: a full mark-compact
        // every ~25 MiB forwarded, about half the gateway's CPU (a process whose old space
        // stays under 8 MiB, like a bare ssh2 server, never marks). A fixed 4x factor, the
        // top of V8's own range, leaves room for the Buffers between scavenges (issue #4).
        setFlagsFromString('--heap-growing-percent=300');
        const { loadConfig, ConfigError } = await import('../../broker/config.js');
        const { createBroker } = await import('../../broker/daemon.js');
        const { StateDirError } = await import('../../broker/state-dir.js');
        let broker;
        try {
          const config = loadConfig({
            file: opts.config,
            env: io.env,
            flags: {
              dataDir: opts.data,
              listen: opts.listen,
              sshListen: opts.sshListen,
              portRange: opts.portRange,
              publicHost: opts.publicHost,
            },
          });
          broker = await createBroker({ config });
        } catch (err) {
          if (err instanceof ConfigError || err instanceof StateDirError) {
            io.stderr.write(
              `broker: ${err instanceof ConfigError ? 'config' : 'state_dir'}: ${err.message}\n`,
            );
            return 2;
          }
          if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
            io.stderr.write(
              `broker: listen: ${(err as Error).message}; pick another --listen address\n`,
            );
            return 1;
          }
          throw err;
        }
        if (io.stderr.isTTY) {
          io.stderr.write(
            `broker listening on ${broker.url}\ncredentials: ${broker.credentialsPath}\ntry: broker status\n`,
          );
        }
        const b = broker;
        process.on('uncaughtException', (err) => {
          b.log.fatal(
            { err },
            'uncaught exception: exiting so a supervisor restarts a clean process',
          );
          b.flushLog();
          process.exit(70);
        });
        await new Promise<void>((resolve) => {
          const stop = (signal: string) => {
            b.log.info({ signal }, 'stopping');
            void b.close().then(resolve);
          };
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
        return 0;
      }),
    );
}

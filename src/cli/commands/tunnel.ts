/** tunnel and connect: the client ends through the broker's SSH gateway. */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { client, parseDuration, printJson, sleep, UsageError } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('tunnel')
    .argument('<name>', 'service: NAME (yours) or OWNER/NAME')
    .description(
      'forward a local port to a service through the gateway (stays in the foreground, like ssh -N -L)',
    )
    .option('--local-port <n>', 'local port (default: any free one)')
    .option('--local-host <ip>', 'local address to listen on', '127.0.0.1')
    .option(
      '--inject-key',
      'send the key first on each connection, so clients that know nothing of keys work',
    )
    .option('--ttl <dur>', 'lifetime of the key minted for this tunnel')
    .option('--json', 'print {"localPort","key","keyId",...} once the tunnel is up')
    .addHelpText(
      'after',
      `
Examples:
  broker tunnel viz --local-port 8888                 # then: (echo "$KEY"; cat) | nc 127.0.0.1 8888
  broker tunnel alice/nb --local-port 8888 --inject-key   # key-unaware clients just connect

Reconnects with backoff if the gateway connection drops; Ctrl-C stops it.`,
    )
    .action(
      action(
        async (
          io,
          name: string,
          opts: {
            localPort?: string;
            localHost: string;
            injectKey?: boolean;
            ttl?: string;
            json?: boolean;
          },
        ) => {
          if (opts.localPort !== undefined && !/^\d{1,5}$/.test(opts.localPort))
            throw new UsageError('--local-port must be a number');
          const { openTunnel } = await import('../../client/tunnel.js');
          const broker = client(io);
          const tty = io.stderr.isTTY === true;
          let localPort = opts.localPort ? Number(opts.localPort) : 0;
          let first = true;
          let delay = 500;
          let stopping = false;
          const stop = new Promise<void>((resolve) => {
            process.once('SIGINT', () => ((stopping = true), resolve()));
            process.once('SIGTERM', () => ((stopping = true), resolve()));
          });
          for (;;) {
            let t;
            try {
              t = await openTunnel(broker, name, {
                localPort,
                localHost: opts.localHost,
                injectKey: opts.injectKey,
                load: opts.ttl ? { ttlSeconds: parseDuration(opts.ttl, '--ttl') } : {},
              });
            } catch (err) {
              if (first) throw err;
              if (tty)
                io.stderr.write(
                  `\rreconnecting to ${name}: ${(err as Error).message.slice(0, 80)} (retry in ${Math.round(delay / 1000)}s)  `,
                );
              await Promise.race([sleep(delay), stop]);
              if (stopping) return 0;
              delay = Math.min(delay * 2, 30_000);
              continue;
            }
            delay = 500;
            localPort = t.localPort;
            const s = t.loaded.service;
            if (first) {
              if (opts.json)
                printJson(io, {
                  localHost: opts.localHost,
                  localPort,
                  key: t.key,
                  keyId: t.loaded.keyId,
                  expiresAt: t.loaded.expiresAt,
                  service: s,
                });
              else
                io.stdout.write(
                  `forwarding ${opts.localHost}:${localPort} → ${s.owner}/${s.name} through the gateway\n` +
                    (opts.injectKey
                      ? 'the key is sent for you on each connection\n'
                      : `present this key first on each connection (key ${t.loaded.keyId}, expires ${t.loaded.expiresAt}):\n${t.key}\n`),
                );
            } else if (tty)
              io.stderr.write(
                `\rreconnected to ${s.owner}/${s.name}                                      \n`,
              );
            first = false;
            t.on('error', () => {
              /* one connection failed; the tunnel stays */
            });
            const closed = new Promise<void>((resolve) => t.once('close', () => resolve()));
            await Promise.race([closed, stop]);
            t.close();
            if (stopping) return 0;
          }
        },
      ),
    );

  program
    .command('connect')
    .argument('<name>', 'service: NAME (yours) or OWNER/NAME')
    .description(
      'connect stdin/stdout to a service through the gateway, after the key handshake (usable as an OpenSSH ProxyCommand)',
    )
    .addHelpText(
      'after',
      `
Examples:
  echo hello | broker connect viz
  ssh -o ProxyCommand='broker connect alice/sshd' alice@compute-node   # an sshd registered as a service`,
    )
    .action(
      action(async (io, name: string) => {
        const { connect } = await import('../../client/tunnel.js');
        const { drop } = await import('../../protocol/splice.js');
        const broker = client(io);
        const stream = await connect(broker, name);
        broker.close();
        await new Promise<void>((resolve) => {
          const out = io.stdout as unknown as NodeJS.WritableStream;
          io.stdin.pipe(stream);
          stream.pipe(out);
          io.stdin.once('end', () => stream.end());
          // Whoever read our stdout went away (EPIPE): stop quietly, like a filter in a pipeline.
          out.on('error', () => drop(stream));
          stream.once('close', () => resolve());
        });
        return 0;
      }),
    );

  program
    .command('open')
    .argument('<name>', 'an https service: NAME (yours) or OWNER/NAME')
    .description(
      'print a one-time login URL for an https service (through a local tunnel when it is tunnelled)',
    )
    .option(
      '--local-port <n>',
      'tunnelled services: local port for the tunnel (default: any free one)',
    )
    .option('--json', 'print {"url", ...}')
    .addHelpText(
      'after',
      `
Examples:
  broker open notebook          # open the printed URL in a browser that trusts the broker CA (broker ca)

The URL carries a one-use key; the service exchanges it for a session cookie and redirects to the
same page without it. For a tunnelled service the command stays in the foreground, like broker tunnel.
The browser is not launched for you: a URL with a key must not appear on another process's
command line.`,
    )
    .action(
      action(async (io, name: string, opts: { localPort?: string; json?: boolean }) => {
        if (opts.localPort !== undefined && !/^\d{1,5}$/.test(opts.localPort))
          throw new UsageError('--local-port must be a number');
        const broker = client(io);
        const svc = await broker.get(name);
        if (svc.mode !== 'https')
          throw new UsageError(
            `${svc.owner}/${svc.name} is a ${svc.mode} service; broker open is for https services`,
          );
        const print = (url: string, extra: Record<string, unknown> = {}) => {
          if (opts.json) printJson(io, { url, service: svc, ...extra });
          else io.stdout.write(`${url}\n`);
        };
        // The service's own name (NAME.OWNER.localhost): its certificate names nothing else,
        // and the browser keeps its cookie apart from every other service's (SES-1, SES-3).
        if (svc.tunnel === 'none' && /^(127\.|::1$)/.test(svc.host)) {
          const loaded = await broker.load(name, { once: true });
          broker.close();
          print(`https://${svc.hostname}:${svc.port}/?broker_key=${loaded.key}`, {
            keyId: loaded.keyId,
          });
          return 0;
        }
        const { openTunnel } = await import('../../client/tunnel.js');
        const t = await openTunnel(broker, name, {
          localPort: opts.localPort ? Number(opts.localPort) : 0,
          load: { once: true },
        });
        print(`https://${svc.hostname}:${t.localPort}/?broker_key=${t.key}`, {
          keyId: t.loaded.keyId,
          localPort: t.localPort,
        });
        if (io.stderr.isTTY) io.stderr.write('tunnel open; Ctrl-C to close it\n');
        await new Promise<void>((resolve) => {
          t.once('close', () => resolve());
          process.once('SIGINT', () => resolve());
          process.once('SIGTERM', () => resolve());
        });
        t.close();
        return 0;
      }),
    );
}

/** tunnel and connect: the client ends through the broker's SSH gateway. */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { client, parseDuration, printJson, UsageError } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('tunnel')
    .argument('<name>', 'service: NAME (yours) or OWNER/NAME')
    .description(
      'forward a local port to a service through the gateway (stays in the foreground, like ssh -N -L)',
    )
    .option('--local-port <n>', 'local port (default: any free one)')
    .option(
      '--local-host <ip>',
      'local address to listen on; the loopback is held on 127.0.0.1 and ::1',
      '127.0.0.1',
    )
    .option(
      '--inject-key',
      "send the key first on each connection from your own processes, so clients that know nothing of keys work (other users' connections get DENIED)",
    )
    .option('--ttl <dur>', 'lifetime of the key minted for this tunnel')
    .option('--json', 'print {"localPort","key","keyId",...} once the tunnel is up')
    .addHelpText(
      'after',
      `
Examples:
  broker tunnel viz --local-port 8888                 # then: (echo "$KEY"; cat) | nc 127.0.0.1 8888
  broker tunnel alice/nb --local-port 8888 --inject-key   # key-unaware clients just connect

On the loopback (the default) the port is held on 127.0.0.1 and on ::1, so "localhost" reaches
the tunnel whichever address a client tries first. The local port is held for as long as the
tunnel runs: when the gateway connection drops (a broker restart) the tunnel says so, resets
connections made in the gap and reconnects with backoff, on the same port with the same key
(a new one is printed only if it expired and --inject-key needs one). A local port that cannot
be had (another process holds it on either address) is an error naming who holds it, exit 1.
The tunnel ends, exit 1, when the service or your token is gone; Ctrl-C stops it.`,
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
          const say = (s: string) => io.stderr.write(`broker tunnel: ${s}\n`);
          let stop!: () => void;
          const stopped = new Promise<void>((resolve) => (stop = resolve));
          process.once('SIGINT', () => stop());
          process.once('SIGTERM', () => stop());
          const t = await openTunnel(broker, name, {
            localPort: opts.localPort ? Number(opts.localPort) : 0,
            localHost: opts.localHost,
            injectKey: opts.injectKey,
            load: opts.ttl ? { ttlSeconds: parseDuration(opts.ttl, '--ttl') } : {},
            reconnect: true,
          });
          const s = t.loaded.service;
          const where = t.localAddresses
            .map((a) => (a.includes(':') ? `[${a}]:${t.localPort}` : `${a}:${t.localPort}`))
            .join(' and ');
          const printKey = (l: typeof t.loaded, first: boolean) => {
            if (opts.json)
              printJson(io, {
                localHost: opts.localHost,
                localAddresses: t.localAddresses,
                localPort: t.localPort,
                key: l.key,
                keyId: l.keyId,
                expiresAt: l.expiresAt,
                service: l.service,
              });
            else if (first)
              io.stdout.write(
                `forwarding ${where} → ${s.owner}/${s.name} through the gateway\n` +
                  (opts.injectKey
                    ? 'the key is sent for you on each connection\n'
                    : `present this key first on each connection (key ${l.keyId}, expires ${l.expiresAt}):\n${l.key}\n`),
              );
          };
          printKey(t.loaded, true);
          t.on('error', () => {
            /* one connection failed; the tunnel stays */
          });
          t.on('refused', ({ uid }: { uid: number | null }) =>
            say(
              `refused a connection from ${uid === null ? 'a process the kernel could not attribute' : `uid ${uid}`}: --inject-key serves only your own processes`,
            ),
          );
          // Never silent: each loss and each return of the gateway connection is one line (on a
          // terminal the retries update one line in place).
          t.on('disconnect', () =>
            say(`the gateway connection ended; still holding ${where}, reconnecting`),
          );
          t.on('retry', ({ error, delayMs }: { error: Error; delayMs: number }) => {
            if (tty)
              io.stderr.write(
                `\rreconnecting to ${s.owner}/${s.name}: ${error.message.slice(0, 80)} (retry in ${Math.round(delayMs / 1000)}s)  `,
              );
          });
          t.on('reconnect', () =>
            io.stderr.write(
              `${tty ? '\r' : ''}broker tunnel: reconnected to ${s.owner}/${s.name}${tty ? '                    ' : ''}\n`,
            ),
          );
          t.on('key', (l: typeof t.loaded) => {
            say(`the key expired; a new one (key ${l.keyId}, expires ${l.expiresAt}) is injected`);
            if (opts.json) printKey(l, false);
          });
          const ended = new Promise<Error | undefined>((resolve) =>
            t.once('close', (err?: Error) => resolve(err)),
          );
          const err = await Promise.race([ended, stopped.then(() => undefined)]);
          t.close();
          broker.close();
          if (err) throw err; // the service or the credential is gone: one line, exit 1
          return 0;
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
        // The port is held through gateway reconnects: the page keeps working after a broker
        // restart, and no other user can take the port the browser knows in the meantime.
        const t = await openTunnel(broker, name, {
          localPort: opts.localPort ? Number(opts.localPort) : 0,
          load: { once: true },
          reconnect: true,
        });
        t.on('error', () => {
          /* one connection failed; the tunnel stays */
        });
        print(`https://${svc.hostname}:${t.localPort}/?broker_key=${t.key}`, {
          keyId: t.loaded.keyId,
          localPort: t.localPort,
        });
        if (io.stderr.isTTY) io.stderr.write('tunnel open; Ctrl-C to close it\n');
        const err = await new Promise<Error | undefined>((resolve) => {
          t.once('close', (e?: Error) => resolve(e));
          process.once('SIGINT', () => resolve(undefined));
          process.once('SIGTERM', () => resolve(undefined));
        });
        t.close();
        broker.close();
        if (err) throw err;
        return 0;
      }),
    );
}

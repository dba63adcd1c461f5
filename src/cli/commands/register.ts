import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import type { RegisterRequest } from '../../protocol/types.js';
import type { Action } from '../main.js';
import type { BrokerClient } from '../../client/broker-client.js';
import { ensurePrivateDirectory, writeFileSafely } from '../../host/safe-files.js';
import { client, envLines, formatOf, parseDuration, printJson, UsageError } from '../util.js';

/** The exact `ssh -R` line for a tunnelled service (the gateway's address comes from the API). */
async function attachHint(broker: BrokerClient, owner: string): Promise<string> {
  const g = (await broker.health()).gateway;
  return (
    `next: start your server on a local port APP, then attach it (password: the service token):\n` +
    `  ssh -N -p ${g?.port ?? 7722} -R 0:127.0.0.1:APP ${owner}@${g?.host ?? '<broker host>'}\n` +
    `or from code: registerService({ name, target: { port: APP } }) (server SDK)\n`
  );
}

export function define(program: Command, action: Action): void {
  program
    .command('register')
    .argument('<name>', 'service name (yours): [a-z0-9][a-z0-9._-]*')
    .description('register a service: get its port and a service token (shown once)')
    .option('--mode <mode>', 'tcp (key line handshake) or https (broker certificate)', 'tcp')
    .option(
      '--tunnel <kind>',
      'ssh (reverse tunnel to the gateway) or none (listen on host:port yourself)',
      'ssh',
    )
    .option(
      '--host <ip>',
      'with --tunnel none: the address the server listens on (default: the address you register from)',
    )
    .option('--port <n>', 'with --tunnel none: a specific port from the range')
    .option('--ttl <dur>', 'lease, e.g. 8h (heartbeats extend it)')
    .option('--csr <file>', 'https: a PEM CSR; the private key stays with you')
    .option(
      '--out-dir <dir>',
      'https: write cert.pem, key.pem (0600) and ca.pem here (created 0700; refused if others can write it)',
    )
    .option('--label <k=v...>', 'labels shown by query', (v: string, prev: string[] = []) => [
      ...prev,
      v,
    ])
    .option('--format <fmt>', 'text, json or env (export lines for eval)', 'text')
    .option('--json', 'same as --format json')
    .addHelpText(
      'after',
      `
Examples:
  broker register viz --tunnel none                 # then start your server on the printed port
  eval "$(broker register viz --tunnel none --format env)"   # BROKER_PORT, BROKER_TOKEN in a job script
  broker register nb --mode https --tunnel none --out-dir ~/.nb-tls

With --format env, BROKER_TOKEN is the service token, so broker ready / heartbeat / verify /
unregister work in the same script with no more set-up.`,
    )
    .action(
      action(
        async (io, name: string, opts: Record<string, string | boolean | string[] | undefined>) => {
          const format = formatOf(opts as { format?: string; json?: boolean });
          const req: RegisterRequest = {
            name,
            mode: opts.mode as RegisterRequest['mode'],
            tunnel: opts.tunnel as RegisterRequest['tunnel'],
          };
          if (opts.host !== undefined) req.host = String(opts.host);
          if (opts.port !== undefined) {
            if (!/^\d{1,5}$/.test(String(opts.port)))
              throw new UsageError('--port must be a number');
            req.port = Number(opts.port);
          }
          if (opts.ttl !== undefined) req.ttlSeconds = parseDuration(String(opts.ttl), '--ttl');
          if (opts.csr !== undefined) req.csr = readFileSync(String(opts.csr), 'utf8');
          if (opts.label) {
            req.labels = {};
            for (const kv of opts.label as string[]) {
              const i = kv.indexOf('=');
              if (i < 1) throw new UsageError(`--label must be key=value (got ${kv.slice(0, 40)})`);
              req.labels[kv.slice(0, i)] = kv.slice(i + 1);
            }
          }
          // FS-5: check (or create) the directory before registering, so an unsafe one costs
          // nothing at the broker.
          const dir =
            opts.outDir && req.mode === 'https'
              ? ensurePrivateDirectory(String(opts.outDir))
              : null;
          const broker = client(io);
          const res = await broker.register(req);
          let caPath: string | undefined = io.env.BROKER_CA;
          if (dir && res.tls) {
            writeFileSafely(join(dir, 'cert.pem'), res.tls.cert, 0o644);
            if (res.tls.key) writeFileSafely(join(dir, 'key.pem'), res.tls.key, 0o600);
            caPath = writeFileSafely(join(dir, 'ca.pem'), res.tls.ca, 0o644);
          }
          const s = res.service;
          if (format === 'json') printJson(io, res);
          else if (format === 'env') {
            io.stdout.write(
              envLines({
                BROKER_SERVICE: `${s.owner}/${s.name}`,
                BROKER_HOST: s.host,
                BROKER_PORT: s.port,
                BROKER_TOKEN: res.serviceToken,
                BROKER_URL: broker.url,
                BROKER_CA: caPath,
                BROKER_CERT: dir && res.tls ? join(dir, 'cert.pem') : undefined,
                BROKER_KEY_FILE: dir && res.tls?.key ? join(dir, 'key.pem') : undefined,
              }),
            );
          } else {
            const where =
              s.tunnel === 'ssh' ? `port ${s.port} (reverse tunnel)` : `${s.host}:${s.port}`;
            io.stdout.write(
              `registered ${s.owner}/${s.name} (${s.mode}, tunnel ${s.tunnel}) on ${where}, status ${s.status}\n` +
                `service token (shown once, keep it secret):\n${res.serviceToken}\n` +
                (s.tunnel === 'none'
                  ? `next: start your server on port ${s.port}, then run: BROKER_TOKEN=<service token> broker ready ${s.name}\n`
                  : await attachHint(broker, s.owner)),
            );
          }
          broker.close();
          return 0;
        },
      ),
    );
}

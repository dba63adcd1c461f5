import type { Command } from 'commander';
import { BrokerError } from '../../protocol/errors.js';
import type { Action } from '../main.js';
import { client, envLines, formatOf, parseDuration, printJson, sleep } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('load')
    .argument('<name>', 'service: NAME (yours) or OWNER/NAME')
    .description('get a service\'s port and a client key (the "magic key") to present to it')
    .option('--once', 'the key works for one connection only')
    .option('--ttl <dur>', 'key lifetime, e.g. 2h (default 12h)')
    .option('--wait <dur>', 'wait up to this long for the service to appear and be ready')
    .option('--format <fmt>', 'text, json or env', 'text')
    .option('--json', 'same as --format json')
    .addHelpText(
      'after',
      `
Examples:
  broker load viz
  eval "$(broker load alice/viz --format env)"; (echo "$BROKER_KEY"; cat) | nc 127.0.0.1 "$BROKER_PORT"
  broker load nb --wait 10m --json`,
    )
    .action(
      action(
        async (
          io,
          name: string,
          opts: { once?: boolean; ttl?: string; wait?: string; format?: string; json?: boolean },
        ) => {
          const format = formatOf(opts);
          const broker = client(io);
          const req = {
            ...(opts.once ? { once: true } : {}),
            ...(opts.ttl ? { ttlSeconds: parseDuration(opts.ttl, '--ttl') } : {}),
          };
          const deadline = opts.wait ? Date.now() + parseDuration(opts.wait, '--wait') * 1000 : 0;
          const tty = io.stderr.isTTY === true;
          let res;
          for (let attempt = 0; ; attempt++) {
            try {
              res = await broker.load(name, req);
              break;
            } catch (err) {
              const waitable =
                err instanceof BrokerError &&
                (err.code === 'service_not_found' || err.code === 'service_not_ready');
              if (!waitable || Date.now() >= deadline) throw err;
              if (tty)
                io.stderr.write(
                  `\rwaiting for ${name}: ${(err as BrokerError).code} (${Math.ceil((deadline - Date.now()) / 1000)}s left)  `,
                );
              await sleep(Math.min(2000, 250 * 2 ** Math.min(attempt, 3)));
            }
          }
          if (tty && opts.wait) io.stderr.write('\n');
          broker.close();
          const s = res.service;
          if (s.exposure === 'open')
            io.stderr.write(
              `broker load: WARNING: the app behind ${s.owner}/${s.name} is reachable by any local user on its host without a key (exposure: open)\n`,
            );
          if (format === 'json') printJson(io, res);
          else if (format === 'env') {
            io.stdout.write(
              envLines({
                BROKER_SERVICE: `${s.owner}/${s.name}`,
                BROKER_HOST: res.connect.host,
                BROKER_PORT: res.connect.port,
                BROKER_KEY: res.key,
                BROKER_KEY_ID: res.keyId,
                BROKER_KEY_EXPIRES: res.expiresAt,
              }),
            );
          } else {
            io.stdout.write(
              `key for ${s.owner}/${s.name} (${s.mode} on ${res.connect.host}:${res.connect.port}), id ${res.keyId}, ` +
                `expires ${res.expiresAt}${res.once ? ', one use' : ''}:\n${res.key}\n` +
                `tunnel: ${res.connect.ssh}\n` +
                (res.connect.knownHosts
                  ? `        (host key, for ~/.ssh/known_hosts: ${res.connect.knownHosts})\n`
                  : '') +
                (res.connect.netcat
                  ? `then:   BROKER_KEY=<key above>; ${res.connect.netcat}\n`
                  : '') +
                (res.connect.url
                  ? `then:   ${res.connect.url} with Authorization: Bearer <key>\n`
                  : ''),
            );
          }
          return 0;
        },
      ),
    );
}

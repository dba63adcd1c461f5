/** query, unregister, ready, heartbeat, keys, revoke: the small service commands. */
import type { Command } from 'commander';
import type { Service } from '../../protocol/types.js';
import type { Action } from '../main.js';
import { client, formatOf, printJson } from '../util.js';

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return (
    rows
      .map((r) =>
        r
          .map((c, i) => c.padEnd(widths[i]!))
          .join('  ')
          .trimEnd(),
      )
      .join('\n') + '\n'
  );
}

export function serviceTable(services: Service[]): string {
  if (services.length === 0) return 'no services\n';
  return (
    table([
      ['SERVICE', 'MODE', 'TUNNEL', 'ADDRESS', 'STATUS', 'EXPIRES'],
      ...services.map((s) => [
        `${s.owner}/${s.name}`,
        s.mode,
        s.tunnel,
        `${s.host}:${s.port}`,
        s.status,
        s.expiresAt,
      ]),
    ]) +
    services
      .filter((s) => s.exposure === 'open')
      .map(
        (s) =>
          `WARNING: ${s.owner}/${s.name}: its app is reachable by any local user without a key (exposure: open)\n`,
      )
      .join('')
  );
}

export function define(program: Command, action: Action): void {
  program
    .command('query')
    .argument('[glob]', 'match names with * and ?; with a / it matches OWNER/NAME')
    .description('list the services you can see')
    .option('--json', 'print {"services": [...]}')
    .addHelpText(
      'after',
      `\nExamples:\n  broker query\n  broker query 'viz*' --json\n  broker query 'alice/*'`,
    )
    .action(
      action(async (io, glob: string | undefined, opts: { json?: boolean }) => {
        const broker = client(io);
        const services = await broker.queryAll(glob ? { match: glob } : {});
        broker.close();
        if (formatOf(opts, ['text', 'json']) === 'json') printJson(io, { services });
        else io.stdout.write(serviceTable(services));
        return 0;
      }),
    );

  program
    .command('unregister')
    .argument('<name>', 'NAME or OWNER/NAME')
    .description('remove a service; its keys stop working at once')
    .option('--json', 'print {"removed": "owner/name"}')
    .addHelpText(
      'after',
      `\nExamples:\n  broker unregister viz\n  BROKER_TOKEN="$SERVICE_TOKEN" broker unregister viz   # from the job itself`,
    )
    .action(
      action(async (io, name: string, opts: { json?: boolean }) => {
        const broker = client(io);
        const ref = await broker.ref(name);
        await broker.unregister(name);
        broker.close();
        if (opts.json) printJson(io, { removed: `${ref.owner}/${ref.name}` });
        else io.stdout.write(`unregistered ${ref.owner}/${ref.name}\n`);
        return 0;
      }),
    );

  for (const [cmd, what] of [
    ['ready', 'confirm the server listens on its port (service token; tunnel none)'],
    ['heartbeat', 'extend the lease (service token)'],
  ] as const) {
    program
      .command(cmd)
      .argument('<name>', 'NAME or OWNER/NAME')
      .description(what)
      .option('--json', 'print {"service": {...}}')
      .addHelpText('after', `\nExample:\n  BROKER_TOKEN="$SERVICE_TOKEN" broker ${cmd} viz`)
      .action(
        action(async (io, name: string, opts: { json?: boolean }) => {
          const broker = client(io);
          const service = cmd === 'ready' ? await broker.ready(name) : await broker.heartbeat(name);
          broker.close();
          if (opts.json) printJson(io, { service });
          else
            io.stdout.write(
              `${service.owner}/${service.name}: ${service.status}, lease until ${service.expiresAt}\n`,
            );
          return 0;
        }),
      );
  }

  const keys = program
    .command('keys')
    .description('list or revoke client keys (never shows a key)')
    .addHelpText(
      'after',
      `\nExamples:\n  broker keys viz                      # id, principal, expiry, last use\n  broker keys revoke key_0123456789abcdef`,
    );
  keys
    .command('list', { isDefault: true })
    .argument('<name>', 'NAME or OWNER/NAME')
    .description("list a service's live keys")
    .option('--json', 'print {"keys": [...]}')
    .addHelpText('after', `\nExample:\n  broker keys list viz`)
    .action(
      action(async (io, name: string, opts: { json?: boolean }) => {
        const broker = client(io);
        const list = await broker.listKeys(name);
        broker.close();
        if (opts.json) printJson(io, { keys: list });
        else if (list.length === 0) io.stdout.write('no live keys\n');
        else
          io.stdout.write(
            table([
              ['KEY ID', 'PRINCIPAL', 'EXPIRES', 'ONCE', 'LAST USED'],
              ...list.map((k) => [
                k.keyId,
                k.principal,
                k.expiresAt,
                k.once ? 'yes' : 'no',
                k.lastUsedAt ?? '-',
              ]),
            ]),
          );
        return 0;
      }),
    );
  keys
    .command('revoke')
    .argument('<keyId>', 'the key id (key_…) printed by load')
    .description('revoke a client key')
    .addHelpText('after', `\nExample:\n  broker keys revoke key_0123456789abcdef`)
    .action(
      action(async (io, keyId: string) => {
        const broker = client(io);
        await broker.revokeKey(keyId);
        broker.close();
        io.stdout.write(`revoked ${keyId}\n`);
        return 0;
      }),
    );
}

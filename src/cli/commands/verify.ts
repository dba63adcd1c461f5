import type { Command } from 'commander';
import type { Action } from '../main.js';
import { client, formatOf, printJson, readStdin, UsageError } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('verify')
    .argument('<name>', 'the service the key was presented to (the service token must be its own)')
    .argument(
      '[key]',
      "the client key; omit it or use '-' to read it from stdin (keeps it out of ps)",
    )
    .description(
      'check a client key with the broker (needs the service token in BROKER_TOKEN); exit 0 valid, 1 invalid',
    )
    .option('--json', 'print the verify response as JSON')
    .addHelpText(
      'after',
      `
Examples:
  printf '%s\\n' "$KEY" | BROKER_TOKEN="$SERVICE_TOKEN" broker verify viz
  broker verify viz - < keyfile && echo allowed`,
    )
    .action(
      action(async (io, name: string, keyArg: string | undefined, opts: { json?: boolean }) => {
        const format = formatOf(opts, ['text', 'json']);
        let key: string;
        if (keyArg === undefined || keyArg === '-') {
          key = (await readStdin(io)).split('\n')[0]!.trim();
        } else {
          io.stderr.write(
            'broker: warning: a key on the command line is visible to other users (ps); pipe it on stdin instead\n',
          );
          key = keyArg;
        }
        if (!key) throw new UsageError('no key: give it on stdin (one line)');
        const broker = client(io);
        const me = await broker.me();
        const ref = await broker.ref(name);
        if (
          me.kind !== 'service' ||
          me.service.owner !== ref.owner ||
          me.service.name !== ref.name
        ) {
          throw new UsageError(
            `BROKER_TOKEN must be the service token of ${ref.owner}/${ref.name}`,
          );
        }
        const res = await broker.verify(key);
        broker.close();
        if (format === 'json') printJson(io, res);
        else
          io.stdout.write(
            res.valid
              ? `valid: ${res.principal} (key ${res.keyId}, expires ${res.expiresAt})\n`
              : 'invalid\n',
          );
        return res.valid ? 0 : 1;
      }),
    );
}

/** ca, status and audit: what is this broker, and what happened. */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { writeFileSafely } from '../../host/safe-files.js';
import { printable } from '../../protocol/text.js';
import { client, parseDuration, printJson } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('ca')
    .option(
      '--out <file>',
      'write the PEM to a file (0644) instead of stdout; refused in a directory others can write',
    )
    .description('print the broker CA certificate (what clients pin)')
    .addHelpText(
      'after',
      `\nExample:\n  broker ca --out ~/broker-ca.pem && export BROKER_CA=~/broker-ca.pem`,
    )
    .action(
      action(async (io, opts: { out?: string }) => {
        const broker = client(io);
        const pem = await broker.caPem();
        broker.close();
        if (opts.out) writeFileSafely(opts.out, pem, 0o644);
        else io.stdout.write(pem);
        return 0;
      }),
    );

  program
    .command('status')
    .option('--json', 'print one JSON document')
    .description('show which broker you talk to, as whom, and its health')
    .addHelpText('after', `\nExamples:\n  broker status\n  broker status --json | jq .health`)
    .action(
      action(async (io, opts: { json?: boolean }) => {
        const broker = client(io);
        const health = await broker.health();
        const who = broker.credentials.token ? await broker.whoami() : null;
        broker.close();
        const doc = {
          url: broker.url,
          health,
          whoami: who,
          credentialSources: broker.credentials.sources,
        };
        if (opts.json) printJson(io, doc);
        else {
          const as = !who
            ? 'no token'
            : who.kind === 'principal'
              ? `${who.principal.name} (${who.principal.role})`
              : `service ${who.service.owner}/${who.service.name}`;
          io.stdout.write(
            `broker:  ${broker.url} (${health.status}, version ${health.version})\nas:      ${as}\n` +
              (health.gateway
                ? `gateway: ${health.gateway.host}:${health.gateway.port} host key ${health.gateway.fingerprint}${health.gateway.nativeCrypto === false ? ' (WARNING: ssh2 native crypto missing: tunnels will be slow; reinstall with build tools)' : ''}\n`
                : '') +
              Object.entries(broker.credentials.sources)
                .map(([k, v]) => `${k.padEnd(8)} from ${v}`)
                .join('\n') +
              '\n',
          );
        }
        return 0;
      }),
    );

  program
    .command('audit')
    .option('--since <dur>', 'only events newer than this, e.g. 1h')
    .option('--limit <n>', 'at most this many events', '100')
    .option('--json', 'print {"events": [...]}')
    .description('show audit events (admins: all; users: their own)')
    .addHelpText(
      'after',
      `
Examples:
  broker audit --since 1h                 # what happened in the last hour
  broker audit --since 1d --json | jq '.events[] | select(.outcome != "ok")'

Repeated events inside a short window are one line with a count (×N), so a flood of failed
verifies or SSH logins stays readable.`,
    )
    .action(
      action(async (io, opts: { since?: string; limit: string; json?: boolean }) => {
        const broker = client(io);
        const since = opts.since
          ? new Date(Date.now() - parseDuration(opts.since, '--since') * 1000).toISOString()
          : undefined;
        const events = await broker.audit({
          ...(since ? { since } : {}),
          limit: Number(opts.limit),
        });
        broker.close();
        if (opts.json) printJson(io, { events });
        else
          for (const e of events)
            io.stdout.write(
              // printable(): the broker escapes these already; a terminal deserves two locks.
              `${e.at} ${e.outcome.padEnd(7)} ${printable(e.action)} ${printable(e.target ?? '-')} by ${printable(e.actor ?? 'broker')}${e.count > 1 ? ` ×${e.count}` : ''}\n`,
            );
        return 0;
      }),
    );
}

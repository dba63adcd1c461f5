/** ca, status and audit: what is this broker, and what happened. */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { writeFileSafely } from '../../host/safe-files.js';
import { printable } from '../../protocol/text.js';
import type { Health, Service } from '../../protocol/types.js';
import type { BrokerError } from '../../protocol/errors.js';
import { client, parseDuration, printJson, sleep } from '../util.js';

/** What a user should fix: an unprotected port range, apps open to every local user. */
function warnings(health: Health, openApps: Service[]): string[] {
  const out: string[] = [];
  if (health.ports && !health.ports.protected)
    out.push(
      `service ports ${health.ports.range} can be taken by any local user while the broker restarts; ` +
        'an admin can protect them (docs/operations.md, "Protect service ports")',
    );
  for (const s of openApps)
    out.push(
      `${s.owner}/${s.name}: its app listens on a loopback port with no check of its own, so any local user ` +
        'reaches it without a key; run it on {app_socket}, with --app-auth, or with --isolate (broker run --help)',
    );
  return out;
}

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
      `
Works whatever is pinned: with no CA pinned (or another one) it prints the broker's CA with a
warning and its fingerprint on stderr; compare that with what your admin published.

Examples:
  broker ca --out ~/broker-ca.pem && export BROKER_CA=~/broker-ca.pem
  broker ca --fingerprint`,
    )
    .option('--fingerprint', "print only the CA's SHA-256 fingerprint")
    .action(
      action(async (io, opts: { out?: string; fingerprint?: boolean }) => {
        // Whatever is pinned — nothing, a CA file that is missing, another CA: the broker's CA
        // is fetched without trusting it, then compared with the pin.
        const broker = client(io, undefined, { autoLogin: false });
        const ca = await broker.caUnverified();
        broker.close();
        const pinSource = broker.credentials.sources.ca;
        if (ca.pinned === 'different')
          io.stderr.write(
            `broker: WARNING: the broker at ${broker.url} has CA ${ca.fingerprint}, but ${pinSource} pins another CA (${ca.pinnedFingerprint}). ` +
              `If your admin re-issued the CA, check this fingerprint with them, then replace the CA in ${pinSource}.\n`,
          );
        else if (ca.pinned === 'none')
          io.stderr.write(
            `broker: not verified: nothing pins a CA for ${broker.url} yet` +
              (broker.credentials.caProblem ? ` (${broker.credentials.caProblem.message})` : '') +
              `; its SHA-256 fingerprint is ${ca.fingerprint}: compare it with the one your admin published before you trust it\n`,
          );
        if (opts.fingerprint) io.stdout.write(`${ca.fingerprint}\n`);
        else if (opts.out) writeFileSafely(opts.out, ca.pem, 0o644);
        else io.stdout.write(ca.pem);
        return 0;
      }),
    );

  program
    .command('status')
    .option('--json', 'print one JSON document')
    .option(
      '--wait <dur>',
      'wait up to this long for the broker to answer (scripts, right after start)',
    )
    .description('show which broker you talk to, as whom, and its health')
    .addHelpText(
      'after',
      `\nExamples:\n  broker status\n  broker status --wait 30s     # right after starting the broker\n  broker status --json | jq .health`,
    )
    .action(
      action(async (io, opts: { json?: boolean; wait?: string }) => {
        const deadline = opts.wait ? Date.now() + parseDuration(opts.wait, '--wait') * 1000 : 0;
        let broker = client(io);
        let health: Health;
        for (;;) {
          try {
            health = await broker.health();
            break;
          } catch (err) {
            if ((err as BrokerError).code !== 'unreachable' || Date.now() >= deadline) throw err;
            broker.close();
            await sleep(250);
            broker = client(io); // the daemon may only now have written its credentials
          }
        }
        const who = broker.credentials.token ? await broker.whoami() : null;
        // The caller's services whose app any local user reaches without a key (LOC-3).
        const openApps =
          who?.kind === 'principal'
            ? (await broker.queryAll({ match: `${who.principal.name}/*` })).filter(
                (s) => s.exposure === 'open',
              )
            : [];
        broker.close();
        const doc = {
          url: broker.url,
          health,
          whoami: who,
          credentialSources: broker.credentials.sources,
          warnings: warnings(health, openApps),
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
              (health.ports
                ? `ports:   ${health.ports.range} (${health.ports.protected ? 'protected: no other user can bind them' : 'not protected'})\n`
                : '') +
              Object.entries(broker.credentials.sources)
                .map(([k, v]) => `${k.padEnd(8)} from ${v}`)
                .join('\n') +
              '\n' +
              doc.warnings.map((w) => `WARNING: ${w}\n`).join(''),
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

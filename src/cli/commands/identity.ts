/** login, logout, whoami, site-config: who you are to the broker, with nothing to copy (issue 12). */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { writeFileSafely } from '../../host/safe-files.js';
import { forgetLogin, type LoginMethod } from '../../client/login.js';
import { BrokerError } from '../../protocol/errors.js';
import { client, printJson, UsageError } from '../util.js';

export function define(program: Command, action: Action): void {
  program
    .command('login')
    .option('--method <m>', 'munge (anywhere munge.key reaches) or peer (on the broker host)')
    .option('--no-cache', 'do not keep the token in ~/.config/broker/credentials.json')
    .option('--json', 'print {"principal", "expiresAt", "method", "cachedIn"} (never the token)')
    .description('log in as the Unix user you are (MUNGE, or on the broker host your connection)')
    .addHelpText(
      'after',
      `
Commands log in on their own when they need to; "broker login" does it now, e.g. to see the
site's verdict. The token is cached in ~/.config/broker/credentials.json (0600) for this broker.

Examples:
  broker login                 # MUNGE if the broker accepts it and munge is installed here
  broker login --method peer   # on the broker host, without munged
  broker login --json | jq .principal.groups`,
    )
    .action(
      action(async (io, opts: { method?: string; cache?: boolean; json?: boolean }) => {
        if (opts.method !== undefined && opts.method !== 'munge' && opts.method !== 'peer')
          throw new UsageError('--method must be munge or peer');
        const broker = client(io, undefined, { autoLogin: false, quiet: true });
        const res = await broker.login({
          method: opts.method as LoginMethod | undefined,
          cache: opts.cache !== false,
        });
        broker.close();
        const out = {
          principal: res.principal,
          expiresAt: res.expiresAt,
          method: res.method,
          tokenId: res.tokenId,
          cachedIn: res.cachedIn,
        };
        if (opts.json) printJson(io, out);
        else
          io.stdout.write(
            `logged in to ${broker.url} as ${res.principal.name} (${res.principal.role}, uid ${res.principal.uid ?? '-'}) by ${res.method}\n` +
              `token valid until ${res.expiresAt}` +
              (res.cachedIn ? `, cached in ${res.cachedIn}\n` : ' (not cached)\n'),
          );
        return 0;
      }),
    );

  program
    .command('logout')
    .option('--keep', 'only forget the token here; do not revoke it at the broker')
    .description('revoke and forget the token a login cached')
    .addHelpText(
      'after',
      `
A token you wrote into the credentials file yourself is left alone.

Example:
  broker logout`,
    )
    .action(
      action(async (io, opts: { keep?: boolean }) => {
        const broker = client(io, undefined, { autoLogin: false, quiet: true });
        const path = broker.credentials.userFile;
        const gone = forgetLogin(path, { url: broker.url });
        if (!gone) {
          broker.close();
          io.stdout.write(`no cached login in ${path}\n`);
          return 0;
        }
        let revoked = false;
        if (!opts.keep && gone.login?.tokenId) {
          try {
            const b = client(io, gone.token, { autoLogin: false, quiet: true });
            await b.revokeToken(gone.login.tokenId);
            b.close();
            revoked = true;
          } catch (err) {
            // Expired or revoked already, or the broker is away: the local copy is gone anyway.
            if (!(err instanceof BrokerError)) throw err;
          }
        }
        broker.close();
        io.stdout.write(
          `forgot the token for ${gone.login?.url ?? broker.url}${revoked ? ' and revoked it' : ''} (${path})\n`,
        );
        return 0;
      }),
    );

  program
    .command('whoami')
    .option('--json', 'print the whoami document')
    .description('show who your credentials say you are: principal, UID, groups, token expiry')
    .addHelpText(
      'after',
      `\nExamples:\n  broker whoami\n  broker whoami --json | jq .principal.groups`,
    )
    .action(
      action(async (io, opts: { json?: boolean }) => {
        const broker = client(io);
        const who = await broker.whoami();
        broker.close();
        if (opts.json) printJson(io, who);
        else if (who.kind === 'service')
          io.stdout.write(`service ${who.service.owner}/${who.service.name} (a service token)\n`);
        else {
          const p = who.principal;
          io.stdout.write(
            `principal: ${p.name} (${p.role}${p.disabled ? ', disabled' : ''}${p.managed ? ', managed by site policy' : ''})\n` +
              `uid:       ${p.uid ?? '-'}\n` +
              `groups:    ${p.groups?.join(' ') ?? '-'}\n` +
              `token:     ${who.token?.id ?? '-'}, ${who.token?.expiresAt ? `valid until ${who.token.expiresAt}` : 'no expiry'}\n` +
              `broker:    ${broker.url}\n`,
          );
        }
        return 0;
      }),
    );

  program
    .command('site-config')
    .option('--out <file>', 'write it here (0644), e.g. /etc/broker/client.json on every node')
    .option('--url <url...>', 'the broker URL(s) clients use (default: this broker)')
    .option(
      '--ca-path <path>',
      'name the CA by path (put it there: broker ca --out PATH) instead of embedding the PEM',
    )
    .description('print the site client config: broker URL(s) and CA, for /etc/broker/client.json')
    .addHelpText(
      'after',
      `
Written once by an admin and copied to every node (like /etc/krb5.conf); users then need
nothing else: with munge installed, commands log in on their own. It holds no secret.

Examples:
  broker site-config --url https://login1.example.org:8443 --out /etc/broker/client.json
  broker ca --out /etc/broker/ca.pem && broker site-config --ca-path /etc/broker/ca.pem`,
    )
    .action(
      action(async (io, opts: { out?: string; url?: string[]; caPath?: string }) => {
        const broker = client(io, undefined, { autoLogin: false, quiet: true });
        const pem = await broker.caPem();
        broker.close();
        const urls = opts.url ?? [broker.url!];
        for (const u of urls) {
          let parsed: URL;
          try {
            parsed = new URL(u);
          } catch {
            throw new UsageError(`--url ${u} is not a URL`);
          }
          if (parsed.protocol !== 'https:') throw new UsageError(`--url ${u} must be https://`);
        }
        const doc = { urls, ca: opts.caPath ?? pem };
        const text = JSON.stringify(doc, null, 2) + '\n';
        if (opts.out) {
          const written = writeFileSafely(opts.out, text, 0o644);
          io.stderr.write(`wrote ${written}\n`);
        } else io.stdout.write(text);
        if (urls.some((u) => /^https:\/\/(127\.|\[::1\]|localhost)/.test(u)))
          io.stderr.write(
            `note: ${urls.join(', ')} is loopback: only this host can use it; other nodes need --url https://HOST:PORT (and publicHost in the broker config)\n`,
          );
        return 0;
      }),
    );
}

/** user and token commands (admins; `token create` also for yourself). */
import type { Command } from 'commander';
import type { Action } from '../main.js';
import { readFileSync } from 'node:fs';
import { client, parseDuration, printJson, readStdin, UsageError } from '../util.js';

function parseUid(v: string): number {
  if (!/^\d{1,10}$/.test(v) || Number(v) > 2 ** 32 - 2)
    throw new UsageError(`--uid must be a numeric UID (got ${JSON.stringify(v).slice(0, 20)})`);
  return Number(v);
}

export function define(program: Command, action: Action): void {
  const user = program
    .command('user')
    .description('manage principals (admin)')
    .addHelpText(
      'after',
      `\nExamples:\n  broker user add bob          # prints bob's first token once\n  broker user list\n  broker user disable bob      # his tokens stop working at once`,
    );
  user
    .command('add')
    .argument('<name>', 'principal name, like a Unix user name')
    .option('--admin', 'make it an admin')
    .option('--uid <uid>', 'bind it to this Unix user: logging in as that UID reaches it')
    .option('--json', 'print {"principal", "token"}')
    .description('create a principal and its first token (shown once)')
    .addHelpText(
      'after',
      `\nExample:\n  broker user add alice   # hand the printed token to alice over a trusted channel`,
    )
    .action(
      action(async (io, name: string, opts: { admin?: boolean; uid?: string; json?: boolean }) => {
        const broker = client(io);
        const res = await broker.createPrincipal(
          name,
          opts.admin ? 'admin' : 'user',
          opts.uid === undefined ? undefined : parseUid(opts.uid),
        );
        broker.close();
        if (opts.json) printJson(io, res);
        else
          io.stdout.write(
            `added ${res.principal.role} ${res.principal.name}\ntoken (shown once):\n${res.token}\n`,
          );
        return 0;
      }),
    );
  user
    .command('list')
    .option('--json', 'print {"principals": [...]}')
    .description('list principals')
    .addHelpText('after', `\nExample:\n  broker user list --json | jq -r '.principals[].name'`)
    .action(
      action(async (io, opts: { json?: boolean }) => {
        const broker = client(io);
        const principals = await broker.listPrincipals();
        broker.close();
        if (opts.json) printJson(io, { principals });
        else
          for (const p of principals)
            io.stdout.write(
              `${p.name}\t${p.role}\tuid=${p.uid ?? '-'}${p.managed ? '\tmanaged' : ''}${p.disabled ? '\tdisabled' : ''}\n`,
            );
        return 0;
      }),
    );
  user
    .command('remove')
    .argument('<name>')
    .description('remove a principal, its tokens and its services')
    .addHelpText('after', `\nExample:\n  broker user remove bob`)
    .action(
      action(async (io, name: string) => {
        const broker = client(io);
        await broker.removePrincipal(name);
        broker.close();
        io.stdout.write(`removed ${name}\n`);
        return 0;
      }),
    );
  for (const [cmd, disabled] of [
    ['disable', true],
    ['enable', false],
  ] as const) {
    user
      .command(cmd)
      .argument('<name>')
      .description(`${cmd} a principal's tokens`)
      .addHelpText('after', `\nExample:\n  broker user ${cmd} bob`)
      .action(
        action(async (io, name: string) => {
          const broker = client(io);
          await broker.updatePrincipal(name, { disabled });
          broker.close();
          io.stdout.write(`${cmd}d ${name}\n`);
          return 0;
        }),
      );
  }

  user
    .command('set')
    .argument('<name>')
    .option('--uid <uid>', 'bind it to this Unix user (logging in as that UID reaches it)')
    .option('--no-uid', 'unbind it from its Unix user')
    .option('--role <role>', 'user or admin')
    .option('--json', 'print {"principal"}')
    .description("change a principal's Unix user (UID) or role")
    .addHelpText(
      'after',
      `
A principal created by hand is not anyone's login until it is bound: a Unix user who logs in
(MUNGE, same host) with a matching name is refused until an admin binds the name to its UID.

Examples:
  broker user set alice --uid "$(id -u alice)"
  broker user set bob --role admin`,
    )
    .action(
      action(
        async (io, name: string, opts: { uid?: string | false; role?: string; json?: boolean }) => {
          const patch: { uid?: number | null; role?: 'user' | 'admin' } = {};
          if (opts.uid === false) patch.uid = null;
          else if (opts.uid !== undefined) patch.uid = parseUid(opts.uid);
          if (opts.role !== undefined) {
            if (opts.role !== 'user' && opts.role !== 'admin')
              throw new UsageError('--role must be user or admin');
            patch.role = opts.role;
          }
          if (Object.keys(patch).length === 0)
            throw new UsageError('say what to change: --uid UID, --no-uid or --role ROLE');
          const broker = client(io);
          const principal = await broker.updatePrincipal(name, patch);
          broker.close();
          if (opts.json) printJson(io, { principal });
          else
            io.stdout.write(`${principal.name}: ${principal.role}, uid ${principal.uid ?? '-'}\n`);
          return 0;
        },
      ),
    );

  user
    .command('add-key')
    .argument('<name>', 'principal')
    .argument('<file>', "public key file (e.g. ~/.ssh/id_ed25519.pub), or '-' for stdin")
    .description('register an SSH public key for the gateway (publickey auth instead of a token)')
    .addHelpText(
      'after',
      `\nExample:\n  broker user add-key alice ~/.ssh/id_ed25519.pub\n  ssh -N -p 7722 -L 8888:127.0.0.1:20007 alice@broker-host   # no token needed`,
    )
    .action(
      action(async (io, name: string, file: string) => {
        const text = file === '-' ? await readStdin(io, 16384) : readFileSync(file, 'utf8');
        const broker = client(io);
        const { key } = await broker.addSshKey(name, text);
        broker.close();
        io.stdout.write(
          `added ${key.fingerprint} for ${name}${key.comment ? ` (${key.comment})` : ''}\n`,
        );
        return 0;
      }),
    );
  user
    .command('keys')
    .argument('<name>', 'principal')
    .option('--json', 'print {"keys": [...]}')
    .description("list a principal's SSH public keys")
    .addHelpText('after', `\nExample:\n  broker user keys bob`)
    .action(
      action(async (io, name: string, opts: { json?: boolean }) => {
        const broker = client(io);
        const keys = await broker.listSshKeys(name);
        broker.close();
        if (opts.json) printJson(io, { keys });
        else
          for (const k of keys)
            io.stdout.write(`${k.fingerprint}\t${k.key.split(' ')[0]}\t${k.comment ?? ''}\n`);
        return 0;
      }),
    );
  user
    .command('remove-key')
    .argument('<name>', 'principal')
    .argument('<fingerprint>', 'SHA256:… from user keys')
    .description('remove an SSH public key')
    .addHelpText(
      'after',
      `\nExample:\n  broker user remove-key bob SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s`,
    )
    .action(
      action(async (io, name: string, fingerprint: string) => {
        const broker = client(io);
        await broker.removeSshKey(name, fingerprint);
        broker.close();
        io.stdout.write(`removed ${fingerprint}\n`);
        return 0;
      }),
    );

  const token = program
    .command('token')
    .description('create, list and revoke user tokens')
    .addHelpText(
      'after',
      `\nExamples:\n  broker token create --label laptop --ttl 30d\n  broker token list\n  broker token revoke tok_0123456789abcdef`,
    );
  token
    .command('create')
    .argument('[principal]', 'whose token (default: yourself)')
    .option('--label <text>', 'a note shown by token list')
    .option('--ttl <dur>', 'expire after this long, e.g. 30d')
    .option('--json', 'print {"token", "tokenInfo"}')
    .description('create a user token (shown once)')
    .addHelpText(
      'after',
      `\nExamples:\n  broker token create --label laptop --ttl 30d\n  broker token create alice`,
    )
    .action(
      action(
        async (
          io,
          principal: string | undefined,
          opts: { label?: string; ttl?: string; json?: boolean },
        ) => {
          const broker = client(io);
          const who = principal ?? (await broker.selfName());
          const res = await broker.createToken(who, {
            ...(opts.label ? { label: opts.label } : {}),
            ...(opts.ttl ? { ttlSeconds: parseDuration(opts.ttl, '--ttl') } : {}),
          });
          broker.close();
          if (opts.json) printJson(io, res);
          else
            io.stdout.write(`token ${res.tokenInfo.id} for ${who} (shown once):\n${res.token}\n`);
          return 0;
        },
      ),
    );
  token
    .command('list')
    .argument('[principal]', 'whose tokens (default: yourself)')
    .option('--json', 'print {"tokens": [...]}')
    .description('list user tokens (ids only, never the tokens)')
    .addHelpText(
      'after',
      `\nExamples:\n  broker token list          # yours\n  broker token list bob      # an admin listing bob's`,
    )
    .action(
      action(async (io, principal: string | undefined, opts: { json?: boolean }) => {
        const broker = client(io);
        const who = principal ?? (await broker.selfName());
        const tokens = await broker.listTokens(who);
        broker.close();
        if (opts.json) printJson(io, { tokens });
        else
          for (const t of tokens)
            io.stdout.write(
              `${t.id}\t${t.label ?? '-'}\t${t.revoked ? 'revoked' : (t.expiresAt ?? 'no expiry')}\n`,
            );
        return 0;
      }),
    );
  token
    .command('revoke')
    .argument('<tokenId>', 'tok_… from token list')
    .description('revoke a user token')
    .addHelpText('after', `\nExample:\n  broker token revoke tok_0123456789abcdef`)
    .action(
      action(async (io, tokenId: string) => {
        const broker = client(io);
        await broker.revokeToken(tokenId);
        broker.close();
        io.stdout.write(`revoked ${tokenId}\n`);
        return 0;
      }),
    );
}

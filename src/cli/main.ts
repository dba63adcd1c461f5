/**
 * The CLI entry: builds the commander program from one file per command, runs it with injected
 * I/O and returns the exit code (0 ok, 1 negative answer, 2 usage, 3 unreachable).
 */
import { Command, CommanderError } from 'commander';
import type { Io } from './io.js';
import { EXIT, printError } from './util.js';
import * as serve from './commands/serve.js';
import * as register from './commands/register.js';
import * as load from './commands/load.js';
import * as verify from './commands/verify.js';
import * as services from './commands/services.js';
import * as admin from './commands/admin.js';
import * as status from './commands/status.js';

/** Wraps a command body: its return value is the exit code; errors print one line. */
/* eslint-disable @typescript-eslint/no-explicit-any -- commander passes untyped arguments */
export type Action = (
  body: (io: Io, ...args: any[]) => Promise<number>,
) => (...args: any[]) => Promise<void>;
/* eslint-enable @typescript-eslint/no-explicit-any */

export async function main(argv: string[], io: Io): Promise<number> {
  let code: number = EXIT.ok;
  const action: Action =
    (body) =>
    async (...args) => {
      try {
        code = await body(io, ...args.slice(0, -1));
      } catch (err) {
        code = printError(io, err);
      }
    };
  const program = new Command('broker')
    .description('reach servers in batch jobs safely: register a service, load a key, verify it')
    .version(await version(), '-V, --version')
    .exitOverride()
    .showHelpAfterError('(run with --help for usage)')
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      outputError: (s, write) => write(`broker: usage: ${s.replace(/^error: /, '')}`),
    })
    .addHelpText(
      'after',
      `
The four verbs:
  server side   broker register viz --tunnel none     → port + service token
  client side   broker load viz                       → port + client key
  client        (echo "$KEY"; cat) | nc HOST PORT     → presents the key
  server side   broker verify viz  (key on stdin)     → exit 0 valid, 1 invalid

Credentials: --token/env BROKER_URL, BROKER_TOKEN, BROKER_CA (path), ~/.config/broker/credentials.json,
then the local daemon's <state dir>/credentials.json. Exit codes: 0 ok, 1 negative answer,
2 usage error, 3 broker unreachable or TLS failure.`,
    );
  for (const mod of [serve, register, load, verify, services, admin, status])
    mod.define(program, action);
  for (const cmd of program.commands) {
    cmd.exitOverride();
    for (const sub of cmd.commands) sub.exitOverride();
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ||
        err.code === 'commander.helpDisplayed' ||
        err.code === 'commander.version'
        ? EXIT.ok
        : EXIT.usage;
    }
    return printError(io, err);
  }
  return code;
}

async function version(): Promise<string> {
  const { readFileSync } = await import('node:fs');
  return (
    JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    }
  ).version;
}

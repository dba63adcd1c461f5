/**
 * The CLI entry: builds the commander program from one file per command, runs it with injected
 * I/O and returns the exit code (0 ok, 1 negative answer, 2 usage, 3 unreachable).
 */
import { Command, CommanderError } from 'commander';
import type { Io } from './io.js';
import { EXIT, printError } from './util.js';

type CommandModule = { define(program: Command, action: Action): void };

/**
 * Where each command is defined. Only the invoked command's module is loaded (a CLI process pays
 * for every module it imports before it does anything: PERFORMANCE.md fact 6); help and unknown
 * commands load them all.
 */
const MODULES: Record<string, () => Promise<CommandModule>> = {
  serve: () => import('./commands/serve.js'),
  register: () => import('./commands/register.js'),
  load: () => import('./commands/load.js'),
  verify: () => import('./commands/verify.js'),
  services: () => import('./commands/services.js'),
  admin: () => import('./commands/admin.js'),
  status: () => import('./commands/status.js'),
  tunnel: () => import('./commands/tunnel.js'),
  cert: () => import('./commands/cert.js'),
  run: () => import('./commands/run.js'),
  backup: () => import('./commands/backup.js'),
  identity: () => import('./commands/identity.js'),
};
const MODULE_OF: Record<string, string> = {
  serve: 'serve',
  register: 'register',
  load: 'load',
  verify: 'verify',
  query: 'services',
  unregister: 'services',
  ready: 'services',
  heartbeat: 'services',
  keys: 'services',
  user: 'admin',
  token: 'admin',
  ca: 'status',
  status: 'status',
  audit: 'status',
  tunnel: 'tunnel',
  connect: 'tunnel',
  open: 'tunnel',
  cert: 'cert',
  run: 'run',
  backup: 'backup',
  restore: 'backup',
  login: 'identity',
  logout: 'identity',
  whoami: 'identity',
  'site-config': 'identity',
};

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
  server side   broker run viz -- APP ARGS {app_socket}   → registers, gates and serves APP
  client side   broker load viz                           → port + client key
  client        broker connect viz                        → presents the key, then stdin/stdout
  server side   broker verify viz  (key on stdin)         → exit 0 valid, 1 invalid

Credentials, each of URL, token and CA on its own, first hit wins: env BROKER_URL, BROKER_TOKEN,
BROKER_CA (a path), ~/.config/broker/credentials.json (0600), the local daemon's
<state dir>/credentials.json, then the site's /etc/broker/client.json (BROKER_CLIENT_CONFIG).
With no token, commands log in as your Unix user (MUNGE, or on the broker host your connection)
and cache the token (broker login / broker logout).
Secrets are never options (a command line is visible to every user).
Exit codes: 0 ok, 1 negative answer, 2 usage error, 3 broker unreachable or TLS failure.`,
    );
  const only = MODULE_OF[argv[0] ?? ''];
  const names = only ? [only] : Object.keys(MODULES);
  for (const mod of await Promise.all(names.map((n) => MODULES[n]!()))) mod.define(program, action);
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

export async function version(): Promise<string> {
  const { readFileSync } = await import('node:fs');
  return (
    JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      version: string;
    }
  ).version;
}

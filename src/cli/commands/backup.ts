/** backup and restore: the broker's state in one file, taken while the daemon runs. */
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { checkSafeDirectory } from '../../host/safe-files.js';
import type { Io } from '../io.js';
import type { Action } from '../main.js';
import { EXIT, printJson } from '../util.js';

type Opts = { data?: string; force?: boolean; json?: boolean };

async function dataDirOf(io: Io, opts: Opts): Promise<string> {
  const { defaultDataDir } = await import('../../broker/config.js');
  return opts.data ? resolve(opts.data) : defaultDataDir(io.env);
}

/** Local failures (no daemon involved) print `broker: backup: …` and exit 1. */
async function local(io: Io, body: () => Promise<number>): Promise<number> {
  const { BackupError } = await import('../../broker/backup.js');
  const { StateDirError } = await import('../../broker/state-dir.js');
  try {
    return await body();
  } catch (err) {
    if (err instanceof BackupError || err instanceof StateDirError) {
      io.stderr.write(`broker: backup: ${err.message.replace(/^refusing to start: /, '')}\n`);
      return EXIT.negative;
    }
    throw err;
  }
}

/**
 * FS-5: the nearest existing directory above `path` and its ancestors must be writable by the
 * caller and root only. Both files hold the CA key: in a directory another user can write, they
 * could swap the file SQLite writes into, or the state directory restore fills, for their own.
 * Throws BrokerError `insecure_path`.
 */
function checkParents(path: string): void {
  let dir = dirname(path);
  while (!existsSync(dir) && dir !== dirname(dir)) dir = dirname(dir);
  checkSafeDirectory(dir);
}

function kib(bytes: number): string {
  return `${(bytes / 1024).toFixed(0)} KiB`;
}

export function define(program: Command, action: Action): void {
  program
    .command('backup')
    .argument(
      '<file>',
      'where to write the backup (a SQLite file, created 0600; refused in a directory others can write)',
    )
    .option('--data <dir>', 'state directory (default $BROKER_DATA or ~/.local/state/broker)')
    .option('--force', 'replace FILE if it exists')
    .option('--json', 'print the summary as JSON')
    .description("copy the broker's state to FILE while it runs (SQLite online backup)")
    .addHelpText(
      'after',
      `
Examples:
  broker backup /backups/broker-$(date +%F).db
  sudo -u broker broker backup --data /var/lib/broker /backups/broker.db

Run it on the broker host as the broker's user: it reads the state directory directly. The copy
is consistent however busy the daemon is and holds the registry, the CA and the SSH host key
(no plaintext tokens) — keep it as private as the state directory. Restore with broker restore.`,
    )
    .action(
      action(async (io, file: string, opts: Opts) =>
        local(io, async () => {
          const { backup } = await import('../../broker/backup.js');
          const { version } = await import('../main.js');
          checkParents(resolve(file));
          const s = await backup(await dataDirOf(io, opts), resolve(file), {
            force: opts.force,
            version: await version(),
          });
          if (opts.json) printJson(io, s);
          else
            io.stdout.write(
              `backup written to ${s.file} (${kib(s.bytes)}): ${s.services} services, ` +
                `${s.principals} principals, ${s.keys} client keys, schema v${s.schemaVersion}\n`,
            );
          return EXIT.ok;
        }),
      ),
    );

  program
    .command('restore')
    .argument('<file>', 'a file written by broker backup')
    .option('--data <dir>', 'state directory to restore into (default as for serve)')
    .option('--force', 'replace the database already in the state directory')
    .option('--json', 'print the summary as JSON')
    .description('make a state directory hold the state in a backup (the broker must be stopped)')
    .addHelpText(
      'after',
      `
Examples:
  broker restore /backups/broker.db --data /var/lib/broker          # a new host
  systemctl stop broker && broker restore --force /backups/broker.db && systemctl start broker

Services, keys, principals, tokens and the audit trail come back as they were when the backup
was taken; the CA and the SSH host key too, so clients' pinned CA and host key still match. The
next broker serve writes a fresh admin token to credentials.json. Services whose servers have
gone are reaped by their leases as usual.`,
    )
    .action(
      action(async (io, file: string, opts: Opts) =>
        local(io, async () => {
          const { restore } = await import('../../broker/backup.js');
          const dir = await dataDirOf(io, opts);
          checkParents(dir);
          const s = await restore(resolve(file), dir, { force: opts.force });
          if (opts.json) printJson(io, { ...s, dataDir: dir });
          else
            io.stdout.write(
              `restored ${s.file} (taken ${s.takenAt}) into ${dir}: ${s.services} services, ` +
                `${s.principals} principals, ${s.keys} client keys\nnext: broker serve --data ${dir}\n`,
            );
          return EXIT.ok;
        }),
      ),
    );
}

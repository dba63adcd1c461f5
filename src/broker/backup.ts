/**
 * `broker backup` and `broker restore`: a consistent copy of a broker's state in one SQLite file,
 * taken with SQLite's online backup API while the daemon runs (WAL readers never block its
 * writers), like `consul snapshot save` or `sqlite3 .backup`.
 *
 * The file is the registry database plus one table holding what a restored broker needs to keep
 * its identity: the CA (so issued certificates and pinned CAs stay valid) and the SSH host key
 * (so pinned host keys match). Plaintext credentials are not in it: a restored broker issues a
 * fresh admin token into credentials.json, as it does whenever that file is missing. The file is
 * as sensitive as the state directory (it holds the CA key) and is written 0600.
 */
import {
  closeSync,
  constants,
  existsSync,
  fsyncSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './store/migrations.js';
import { STATE_FILES, StateDir, StateDirError } from './state-dir.js';

/** The state files carried in a backup, besides the database. */
const CARRIED = ['caKey', 'caCert', 'hostKey'] as const;
const FILES_TABLE = 'broker_backup_files';
const META_TABLE = 'broker_backup_meta';

export class BackupError extends Error {
  override name = 'BackupError';
}

export interface BackupSummary {
  file: string;
  bytes: number;
  schemaVersion: number;
  services: number;
  principals: number;
  keys: number;
  takenAt: string;
}

function counts(db: Database.Database): Pick<BackupSummary, 'services' | 'principals' | 'keys'> {
  const n = (table: string) =>
    (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
  return { services: n('services'), principals: n('principals'), keys: n('client_keys') };
}

function integrityOk(db: Database.Database): string {
  const rows = db.pragma('integrity_check') as { integrity_check: string }[];
  return rows.map((r) => r.integrity_check).join('; ');
}

function fsyncFile(path: string): void {
  const fd = openSync(path, constants.O_RDONLY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Copy the state in `dataDir` to `file` (which must not exist unless `force`). */
export async function backup(
  dataDir: string,
  file: string,
  opts: { force?: boolean; version?: string } = {},
): Promise<BackupSummary> {
  const dir = StateDir.check(dataDir);
  const dbPath = dir.file('db');
  if (!existsSync(dbPath)) {
    throw new BackupError(`no broker database in ${dataDir}; pass --data DIR of the broker`);
  }
  if (existsSync(file) && !opts.force) {
    throw new BackupError(`${file} exists; choose a new file or pass --force to replace it`);
  }
  if (!existsSync(dirname(file)))
    throw new BackupError(`directory ${dirname(file)} does not exist`);
  const tmp = join(dirname(file), `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  // Create it 0600 before SQLite touches it: the CA key goes in.
  closeSync(openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
  const source = new Database(dbPath, { fileMustExist: true });
  try {
    source.pragma('busy_timeout = 5000');
    // The first step only opens the backup; the rest goes in one step, so the copy is one read
    // transaction: a consistent snapshot however busy the daemon is.
    await source.backup(tmp, { progress: () => 0x7fffffff });
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new BackupError(`backup of ${dbPath} failed: ${(err as Error).message}`);
  } finally {
    source.close();
  }
  const copy = new Database(tmp);
  let summary: BackupSummary;
  try {
    copy.pragma('journal_mode = DELETE');
    const takenAt = new Date().toISOString();
    copy.exec(
      `CREATE TABLE ${FILES_TABLE} (name TEXT PRIMARY KEY, content BLOB NOT NULL);
       CREATE TABLE ${META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL);`,
    );
    const put = copy.prepare(`INSERT INTO ${FILES_TABLE} (name, content) VALUES (?, ?)`);
    for (const f of CARRIED) {
      const path = dir.file(f);
      if (existsSync(path)) put.run(STATE_FILES[f], readFileSync(path));
    }
    const meta = copy.prepare(`INSERT INTO ${META_TABLE} (key, value) VALUES (?, ?)`);
    meta.run('taken_at', takenAt);
    meta.run('broker_version', opts.version ?? 'unknown');
    const integrity = integrityOk(copy);
    if (integrity !== 'ok') throw new BackupError(`the copy failed integrity_check: ${integrity}`);
    summary = {
      file,
      bytes: 0,
      schemaVersion: copy.pragma('user_version', { simple: true }) as number,
      ...counts(copy),
      takenAt,
    };
  } catch (err) {
    copy.close();
    rmSync(tmp, { force: true });
    throw err;
  }
  copy.close();
  fsyncFile(tmp);
  renameSync(tmp, file);
  fsyncFile(dirname(file));
  return { ...summary, bytes: statSync(file).size };
}

/**
 * Make `dataDir` hold the state in backup `file`. Refuses while a broker runs on `dataDir`, and
 * refuses to replace an existing database unless `force`.
 */
export async function restore(
  file: string,
  dataDir: string,
  opts: { force?: boolean } = {},
): Promise<BackupSummary> {
  if (!existsSync(file)) throw new BackupError(`${file} does not exist`);
  let src: Database.Database;
  try {
    src = new Database(file, { readonly: true, fileMustExist: true });
  } catch (err) {
    throw new BackupError(`${file} is not a broker backup: ${(err as Error).message}`);
  }
  let summary: BackupSummary;
  const files = new Map<string, Buffer>();
  try {
    const tables = new Set(
      (
        src.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as {
          name: string;
        }[]
      ).map((r) => r.name),
    );
    if (!tables.has(FILES_TABLE) || !tables.has(META_TABLE) || !tables.has('services')) {
      throw new BackupError(`${file} is not a broker backup (made by broker backup)`);
    }
    const integrity = integrityOk(src);
    if (integrity !== 'ok') throw new BackupError(`${file} fails integrity_check: ${integrity}`);
    const schemaVersion = src.pragma('user_version', { simple: true }) as number;
    if (schemaVersion > MIGRATIONS.length) {
      throw new BackupError(
        `${file} has schema version ${schemaVersion}; this broker knows up to ${MIGRATIONS.length}: upgrade the broker first`,
      );
    }
    for (const r of src.prepare(`SELECT name, content FROM ${FILES_TABLE}`).all() as {
      name: string;
      content: Buffer;
    }[]) {
      files.set(r.name, r.content);
    }
    const takenAt = (
      src.prepare(`SELECT value FROM ${META_TABLE} WHERE key = 'taken_at'`).get() as
        { value: string } | undefined
    )?.value;
    summary = {
      file,
      bytes: statSync(file).size,
      schemaVersion,
      ...counts(src),
      takenAt: takenAt ?? 'unknown',
    };
  } catch (err) {
    src.close();
    if (err instanceof BackupError) throw err;
    throw new BackupError(`${file} is not a broker backup: ${(err as Error).message}`);
  }

  const dir = StateDir.open(dataDir);
  // Hold the daemon lock for the whole restore: no broker can start on a half-written state.
  let lock;
  try {
    lock = await dir.lock();
  } catch (err) {
    src.close();
    if (err instanceof StateDirError) {
      throw new BackupError(`${err.message.replace(/^refusing to start: /, '')}; stop it first`);
    }
    throw err;
  }
  try {
    const dbPath = dir.file('db');
    if (existsSync(dbPath) && !opts.force) {
      throw new BackupError(
        `${dataDir} already holds a broker database; pass --force to replace it`,
      );
    }
    const tmp = join(dataDir, `.restore.${randomBytes(6).toString('hex')}.tmp`);
    closeSync(openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600));
    try {
      await src.backup(tmp, { progress: () => 0x7fffffff });
      const db = new Database(tmp);
      try {
        db.exec(`DROP TABLE ${FILES_TABLE}; DROP TABLE ${META_TABLE};`);
        db.pragma('journal_mode = WAL');
      } finally {
        db.close();
      }
      fsyncFile(tmp);
      // The old database's WAL must not be replayed onto the restored file.
      rmSync(`${dbPath}-wal`, { force: true });
      rmSync(`${dbPath}-shm`, { force: true });
      renameSync(tmp, dbPath);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw err;
    }
    for (const f of CARRIED) {
      const content = files.get(STATE_FILES[f]);
      if (content) dir.writePrivate(f, content.toString('utf8'));
    }
    // credentials.json held a token of the old state: the broker issues a fresh one at start.
    rmSync(dir.file('credentials'), { force: true });
    rmSync(dir.file('apiCert'), { force: true });
    rmSync(dir.file('apiKey'), { force: true });
    fsyncFile(dataDir);
  } finally {
    src.close();
    lock.close();
  }
  return summary;
}

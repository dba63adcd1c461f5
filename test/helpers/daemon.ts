/**
 * Test fixture: a real `broker serve` process on port 0 with an isolated temp state dir and HOME,
 * plus helpers to call the API over real TLS (pinning the broker CA) and to spawn the CLI.
 * Every secret a test sees is recorded so the suite can prove none reached the logs or the
 * database (KEY-2, LOG-1).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import {
  mkdtempSync,
  readFileSync,
  writeFileSync,
  createWriteStream,
  existsSync,
  readdirSync,
} from 'node:fs';
import { request, Agent } from 'node:https';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const BIN = join(ROOT, 'bin', 'broker');

export interface DaemonOptions {
  portRange?: string;
  extraArgs?: string[];
  env?: Record<string, string>;
  /** Reuse a state dir (restart tests). */
  dataDir?: string;
  home?: string;
  /** Daemon configuration, written to a 0600 config file and passed with --config. */
  config?: Record<string, unknown>;
  /** Options for node itself, before the script (e.g. `--import` a fault injector). */
  nodeArgs?: string[];
  /** A command the daemon runs under, e.g. `['ip', 'netns', 'exec', 'NS']`. */
  wrap?: string[];
}

export interface ApiResponse<T = unknown> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  text: string;
}

/** Every secret seen by tests in this process (for the leak scans). */
export const issuedSecrets = new Set<string>();
const SECRET_RE = /bk[usk]_[A-Za-z0-9_-]{43}/g;
export function recordSecrets(text: string): void {
  for (const m of text.matchAll(SECRET_RE)) issuedSecrets.add(m[0]);
}

export class Daemon {
  proc!: ChildProcess;
  url!: string;
  adminToken!: string;
  ca!: string;
  agent!: Agent;
  readonly logPath: string;
  private exited: Promise<number | null> | null = null;

  constructor(
    readonly home: string,
    readonly dataDir: string,
    readonly opts: DaemonOptions,
  ) {
    this.logPath = join(home, `daemon-${Date.now()}-${Math.random().toString(36).slice(2)}.log`);
  }

  static async start(opts: DaemonOptions = {}): Promise<Daemon> {
    const home = opts.home ?? mkdtempSync(join(tmpdir(), 'broker-test-'));
    const d = new Daemon(home, opts.dataDir ?? join(home, 'state'), opts);
    await d.launch();
    return d;
  }

  /** Environment for CLI runs: isolated HOME and XDG dirs, discovery through the state dir. */
  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH,
      HOME: this.home,
      XDG_CONFIG_HOME: join(this.home, '.config'),
      XDG_STATE_HOME: join(this.home, '.state'),
      BROKER_DATA: this.dataDir,
      ...extra,
    };
  }

  async launch(): Promise<void> {
    const args = [
      ...(this.opts.nodeArgs ?? []),
      BIN,
      'serve',
      '--data',
      this.dataDir,
      '--listen',
      '127.0.0.1:0',
      '--ssh-listen',
      '127.0.0.1:0',
      ...(this.opts.portRange ? ['--port-range', this.opts.portRange] : []),
      ...(this.opts.config ? ['--config', this.configFile(this.opts.config)] : []),
      ...(this.opts.extraArgs ?? []),
    ];
    const [cmd, ...pre] = [...(this.opts.wrap ?? []), process.execPath];
    this.proc = spawn(cmd!, [...pre, ...args], {
      env: { ...this.env(), ...this.opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = createWriteStream(this.logPath, { flags: 'a' });
    this.proc.stdout!.pipe(log);
    this.proc.stderr!.pipe(log);
    this.exited = new Promise((res) => this.proc.once('exit', (code) => res(code)));
    const ready = await new Promise<{ url: string; credentials: string }>((res, rej) => {
      let buf = '';
      let err = '';
      const timer = setTimeout(
        () => rej(new Error(`daemon did not start in 20 s:\n${buf}\n${err}`)),
        20_000,
      );
      this.proc.stderr!.on('data', (c: Buffer) => (err += c.toString()));
      this.proc.stdout!.on('data', (c: Buffer) => {
        buf += c.toString();
        for (const line of buf.split('\n')) {
          if (!line.includes('"broker ready"')) continue;
          clearTimeout(timer);
          res(JSON.parse(line) as { url: string; credentials: string });
        }
      });
      this.proc.once('exit', (code) => {
        clearTimeout(timer);
        rej(new Error(`daemon exited with ${code} before it was ready:\n${buf}\n${err}`));
      });
    });
    const creds = JSON.parse(readFileSync(ready.credentials, 'utf8')) as {
      url: string;
      token: string;
      ca: string;
    };
    this.url = ready.url;
    this.adminToken = creds.token;
    this.ca = creds.ca;
    recordSecrets(creds.token);
    this.agent?.destroy();
    this.agent = new Agent({ ca: this.ca, keepAlive: true, maxSockets: 256 });
  }

  private configFile(config: Record<string, unknown>): string {
    const file = join(this.home, 'config.json');
    writeFileSync(file, JSON.stringify(config), { mode: 0o600 });
    return file;
  }

  /** An HTTPS request to the API over pinned TLS. `body` objects are sent as JSON. */
  api<T = any>(
    method: string,
    path: string,
    opts: {
      token?: string | null;
      body?: unknown;
      raw?: Buffer | string;
      headers?: Record<string, string>;
    } = {},
  ): Promise<ApiResponse<T>> {
    const headers: Record<string, string> = { ...(opts.headers ?? {}) };
    const token = opts.token === undefined ? this.adminToken : opts.token;
    if (token) headers.authorization = `Bearer ${token}`;
    let payload: Buffer | undefined;
    if (opts.raw !== undefined) payload = Buffer.from(opts.raw);
    else if (opts.body !== undefined) {
      payload = Buffer.from(JSON.stringify(opts.body));
      headers['content-type'] ??= 'application/json';
    }
    if (payload) headers['content-length'] ??= String(payload.length);
    return new Promise((res, rej) => {
      const req = request(new URL(path, this.url), { method, headers, agent: this.agent }, (r) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          recordSecrets(text);
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            /* not JSON */
          }
          res({ status: r.statusCode ?? 0, headers: r.headers, body: body as T, text });
        });
        r.on('error', rej);
      });
      req.on('error', rej);
      req.end(payload);
    });
  }

  /** Run the CLI as a separate process (`bin/broker …`). */
  cli(
    args: string[],
    opts: { env?: Record<string, string>; input?: string } = {},
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    return runCli(args, this.env(opts.env), opts.input);
  }

  /** Create a principal and return its token. */
  async addUser(name: string, role: 'user' | 'admin' = 'user'): Promise<string> {
    const r = await this.api<{ token: string }>('POST', '/v1/principals', { body: { name, role } });
    if (r.status !== 201) throw new Error(`addUser ${name}: ${r.status} ${r.text}`);
    return r.body.token;
  }

  async stop(): Promise<number | null> {
    this.agent?.destroy();
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      await this.exited;
    }
    this.assertNoLeaks();
    return this.proc.exitCode;
  }

  async kill9(): Promise<void> {
    this.agent?.destroy();
    this.proc.kill('SIGKILL');
    await this.exited;
    this.assertNoLeaks();
  }

  /**
   * LOG-1/KEY-2 for every daemon of every suite: once it has stopped, no secret this test process
   * saw (tokens, keys, service tokens) is in its logs, its database (and so its audit table), or
   * its WAL. Throws, failing the test or hook that stopped it.
   */
  assertNoLeaks(): void {
    const db = join(this.dataDir, 'broker.db');
    const logs = existsSync(this.home)
      ? readdirSync(this.home)
          .filter((f) => f.startsWith('daemon-') && f.endsWith('.log'))
          .map((f) => join(this.home, f))
      : [];
    const leaks = findLeaks([...logs, db, `${db}-wal`]);
    if (leaks.length > 0)
      throw new Error(`secrets leaked to disk (LOG-1/KEY-2):\n${leaks.join('\n')}`);
  }

  logs(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8') : '';
  }

  /** Every log this home has collected (all launches). */
  allLogs(): string {
    return readdirSync(this.home)
      .filter((f) => f.startsWith('daemon-') && f.endsWith('.log'))
      .map((f) => readFileSync(join(this.home, f), 'utf8'))
      .join('\n');
  }
}

export function runCli(
  args: string[],
  env: NodeJS.ProcessEnv,
  input?: string,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    const child = execFile(
      process.execPath,
      [BIN, ...args],
      { env, timeout: 30_000 },
      (err, stdout, stderr) => {
        recordSecrets(stdout);
        const code = err
          ? typeof (err as { code?: unknown }).code === 'number'
            ? (err as { code: number }).code
            : 1
          : 0;
        res({ code, stdout, stderr });
      },
    );
    child.stdin!.on('error', () => undefined); // a command that exits without reading: EPIPE
    child.stdin!.end(input ?? '');
  });
}

/** Scan files for any recorded secret; returns the offending (file, secret prefix) pairs. */
export function findLeaks(files: string[]): string[] {
  const leaks: string[] = [];
  for (const f of files) {
    if (!existsSync(f)) continue;
    const content = readFileSync(f).toString('latin1');
    for (const s of issuedSecrets) if (content.includes(s)) leaks.push(`${f}: ${s.slice(0, 8)}…`);
  }
  return leaks;
}

export function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value));
}

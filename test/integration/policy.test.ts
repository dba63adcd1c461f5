/**
 * Policy checks that hold for the whole code base (SECURITY.md FUZZ-2, FUZZ-4, SSH-7, SUP-1):
 * names cannot become paths, nothing runs through a shell, the SSH gateway speaks only modern
 * algorithms with strict key exchange, and the supply chain is pinned.
 */
import { execFile } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon, ROOT } from '../helpers/daemon.js';
import { PRINCIPAL_RE, SERVICE_NAME_RE } from '../../src/protocol/names.js';

const execFileP = promisify(execFile);

function filesUnder(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir)) {
    const p = join(dir, entry);
    if (entry === 'node_modules' || entry === '__pycache__' || entry.startsWith('.')) continue;
    if (statSync(p).isDirectory()) out.push(...filesUnder(p, exts));
    else if (exts.some((e) => p.endsWith(e))) out.push(p);
  }
  return out;
}

const SOURCES = [
  ...filesUnder(join(ROOT, 'src'), ['.ts']),
  ...filesUnder(join(ROOT, 'bin'), ['']),
  ...filesUnder(join(ROOT, 'clients', 'python'), ['.py']),
  ...filesUnder(join(ROOT, 'examples'), ['.py', '.mjs', '.sh']),
];

describe('FUZZ-2: names are allow-listed and never become paths', () => {
  it('every accepted service or principal name is a plain, bounded, printable token', () => {
    const arb = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc.stringMatching(/^[a-z0-9._/-]{1,70}$/),
      fc.constantFrom('..', '.', '../etc', 'a/../b', '%2e%2e', 'a\0b', 'con', '-rf', '.hidden'),
    );
    fc.assert(
      fc.property(arb, (s) => {
        for (const re of [SERVICE_NAME_RE, PRINCIPAL_RE]) {
          if (!re.test(s)) continue;
          expect(s.length).toBeLessThanOrEqual(63);
          expect(s).not.toMatch(/[/\\\0%\s]/);
          expect(s.startsWith('.')).toBe(false);
          expect(s.startsWith('-')).toBe(false);
        }
      }),
      { numRuns: 20_000, seed: 2 },
    );
  });

  it('only the state-directory, config, CA, host-key and backup modules touch the file system', () => {
    // The daemon's file access is confined to modules that take fixed names (STATE_FILES) or an
    // operator's path; request handlers, the store and the gateway never import node:fs/path.
    const allowed = new Set([
      'src/broker/backup.ts',
      'src/broker/ca/local-ca.ts',
      'src/broker/config.ts',
      'src/broker/daemon.ts',
      'src/broker/ssh/host-key.ts',
      'src/broker/state-dir.ts',
    ]);
    const touching = filesUnder(join(ROOT, 'src', 'broker'), ['.ts'])
      .filter((f) => /from 'node:(fs|path|fs\/promises)'/.test(readFileSync(f, 'utf8')))
      .map((f) => relative(ROOT, f));
    expect(touching.filter((f) => !allowed.has(f))).toEqual([]);
  });
});

/** What runs a shell: child_process.exec/execSync (not RegExp#exec or SQLite's db.exec). */
const SHELL_FORMS = [
  /import\s*{[^}]*\bexec(Sync)?\b[^}]*}\s*from\s*'(node:)?child_process'/,
  /\b(cp|childProcess|child_process)\.exec(Sync)?\s*\(/,
  /child_process'\)\.exec(Sync)?\s*\(/,
  /(^|[^.\w])exec(Sync)?\s*\(/,
  /shell\s*:\s*true/,
  /\bshell\s*=\s*True/,
  /\bos\.(system|popen)\s*\(/,
];

describe('FUZZ-4: no shell anywhere', () => {
  it('no exec/execSync, no shell: true, no os.system or shell=True in the sources', () => {
    const bad: string[] = [];
    for (const f of SOURCES) {
      const lines = readFileSync(f, 'utf8').split('\n');
      lines.forEach((line, i) => {
        if (SHELL_FORMS.some((p) => p.test(line)))
          bad.push(`${relative(ROOT, f)}:${i + 1}: ${line.trim()}`);
      });
    }
    expect(bad).toEqual([]);
  });

  it('the detector itself catches the forms it forbids', () => {
    const sample = [
      "require('child_process').exec('ls')",
      "import { execFile, exec } from 'node:child_process';",
      'cp.execSync(cmd)',
      'exec(cmd, cb)',
      'spawn(cmd, { shell: true })',
      'subprocess.run(cmd, shell=True)',
      'os.system(cmd)',
    ];
    for (const s of sample)
      expect(
        SHELL_FORMS.some((p) => p.test(s)),
        s,
      ).toBe(true);
    for (const ok of ['/^a$/.exec(v)', 'this.db.exec(sql)', "execFile('ssh', args)"]) {
      expect(
        SHELL_FORMS.some((p) => p.test(ok)),
        ok,
      ).toBe(false);
    }
  });
});

describe('SSH-7: modern algorithms only, strict key exchange', () => {
  let d: Daemon;
  let port: number;
  beforeAll(async () => {
    d = await Daemon.start();
    port = (await d.api('GET', '/v1/health', { token: null })).body.gateway.port;
  });
  afterAll(async () => {
    await d.stop();
  });

  it('ssh2 is at least 1.15 (strict KEX, Terrapin) in node_modules and the lockfile', () => {
    const atLeast = (v: string) => {
      const [maj, min] = v.split('.').map(Number) as [number, number];
      return maj > 1 || (maj === 1 && min >= 15);
    };
    const installed = JSON.parse(
      readFileSync(join(ROOT, 'node_modules', 'ssh2', 'package.json'), 'utf8'),
    ) as { version: string };
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {
      packages: Record<string, { version?: string }>;
    };
    expect(atLeast(installed.version), installed.version).toBe(true);
    expect(atLeast(lock.packages['node_modules/ssh2']!.version!)).toBe(true);
  });

  const ssh = (opts: string[]) =>
    execFileP(
      'ssh',
      [
        '-vvv',
        '-F',
        '/dev/null',
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'ConnectTimeout=10',
        ...opts,
        '-p',
        String(port),
        'nobody@127.0.0.1',
        'true',
      ],
      { timeout: 20_000 },
    ).then(
      () => '',
      (e: { stderr?: string }) => e.stderr ?? '',
    );

  it.each([
    ['a CBC cipher', ['-o', 'Ciphers=aes128-cbc'], /no matching cipher/],
    [
      'SHA-1 key exchange',
      ['-o', 'KexAlgorithms=diffie-hellman-group14-sha1'],
      /no matching key exchange/,
    ],
    ['an RSA/SHA-1 host key', ['-o', 'HostKeyAlgorithms=ssh-rsa'], /no matching host key type/],
    ['an HMAC-SHA1 MAC', ['-o', 'Ciphers=aes128-ctr', '-o', 'MACs=hmac-sha1'], /no matching MAC/],
  ])('stock OpenSSH offering only %s is refused', async (_what, opts, refusal) => {
    expect(await ssh(opts)).toMatch(refusal);
  });

  it('stock OpenSSH negotiates strict KEX and an AEAD cipher by default', async () => {
    const out = await ssh([]);
    expect(out).toMatch(/will use strict KEX ordering/);
    expect(out).toMatch(
      /kex: server->client cipher: (chacha20-poly1305@openssh\.com|aes\d+-gcm@openssh\.com)/,
    );
    expect(out).toMatch(/Permission denied/); // and then, without credentials, nothing more
  });
});

describe('SUP-1: the supply chain is pinned', () => {
  it('package-lock.json is committed and matches package.json', async () => {
    const tracked = await execFileP('git', ['ls-files', '--error-unmatch', 'package-lock.json'], {
      cwd: ROOT,
    }).then(
      () => true,
      () => false,
    );
    expect(tracked, 'package-lock.json must be committed').toBe(true);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as {
      lockfileVersion: number;
      packages: Record<
        string,
        { dependencies?: Record<string, string>; devDependencies?: Record<string, string> }
      >;
    };
    expect(lock.lockfileVersion).toBeGreaterThanOrEqual(2);
    expect(lock.packages['']!.dependencies).toEqual(pkg.dependencies);
    expect(lock.packages['']!.devDependencies).toEqual(pkg.devDependencies);
  });

  it('npm audit --omit=dev reports no high or critical advisory', async (ctx) => {
    const r = await execFileP('npm', ['audit', '--omit=dev', '--json'], {
      cwd: ROOT,
      timeout: 60_000,
    }).then(
      (o) => ({ ok: true, stdout: o.stdout }),
      (e: { stdout?: string; stderr?: string }) => ({
        ok: false,
        stdout: e.stdout ?? '',
        stderr: e.stderr,
      }),
    );
    let report: { metadata?: { vulnerabilities?: Record<string, number> }; error?: unknown };
    try {
      report = JSON.parse(r.stdout) as typeof report;
    } catch {
      report = {};
    }
    if (!report.metadata?.vulnerabilities) {
      console.log(
        `[SUP-1] SKIP: the npm audit endpoint did not answer here (${JSON.stringify(report.error ?? r).slice(0, 200)}); CI with registry access runs it`,
      );
      ctx.skip();
      return;
    }
    const v = report.metadata.vulnerabilities;
    expect({ high: v.high ?? 0, critical: v.critical ?? 0 }).toEqual({ high: 0, critical: 0 });
  }, 90_000);
});

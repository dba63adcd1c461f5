/**
 * The README as a test (issue 11): its commands must work when pasted. The walk-through's shell
 * blocks run in order, as one bash script, in a copy of this tree with a fresh HOME — `npm start`
 * included (it builds and serves) — and must succeed with the output the README promises. Every
 * other code block of the README is either run (TypeScript snippets as ES modules against a real
 * broker, shell blocks in the walk-through's shell) or carries a
 * `<!-- readme-test: skip REASON -->` comment saying why not; a block with neither fails.
 *
 * Only `npm ci` is not run for real: the copy links this checkout's node_modules, installed from
 * the same lockfile (a real `npm ci` would delete the link and download everything again).
 */
import { execFileSync, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import {
  copyFileSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/daemon.js';

interface Block {
  lang: string;
  code: string;
  section: string;
  /** `skip REASON` or `background`, from a `<!-- readme-test: … -->` line just above it. */
  directive: string | null;
  line: number;
}

/** The fenced code blocks of a Markdown text, with their section and directive. */
export function codeBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  let section = '';
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i]!;
    if (l.startsWith('## ')) section = l.slice(3).trim();
    const open = /^```(\w+)\s*$/.exec(l);
    if (!open) continue;
    const start = i;
    const body: string[] = [];
    for (i++; i < lines.length && lines[i] !== '```'; i++) body.push(lines[i]!);
    const above = lines[start - 1] ?? '';
    const directive = /^<!-- readme-test: (.+?) -->$/.exec(above)?.[1] ?? null;
    blocks.push({ lang: open[1]!, code: body.join('\n'), section, directive, line: start + 1 });
  }
  return blocks;
}

const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const blocks = codeBlocks(README);
const WALK = 'Walk-through: the four verbs';

/** A copy of the working tree (tracked and new files, not ignored ones) with node_modules linked. */
function copyTree(): string {
  const dest = mkdtempSync(join(tmpdir(), 'broker-readme-'));
  const files = execFileSync('git', ['ls-files', '-co', '--exclude-standard', '-z'], {
    cwd: ROOT,
    encoding: 'utf8',
  })
    .split('\0')
    .filter(Boolean);
  for (const f of files) {
    const from = join(ROOT, f);
    let st;
    try {
      st = statSync(from);
    } catch {
      continue; // deleted in the working tree
    }
    if (!st.isFile()) continue;
    mkdirSync(dirname(join(dest, f)), { recursive: true });
    copyFileSync(from, join(dest, f));
  }
  symlinkSync(join(ROOT, 'node_modules'), join(dest, 'node_modules'));
  return dest;
}

const cleanups: (() => void)[] = [];
afterAll(() => {
  for (const c of cleanups) c();
});

/** Run a bash script in `cwd` with a fresh HOME; resolves with its output and exit code. */
function bash(
  cwd: string,
  home: string,
  script: string,
  ms: number,
): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const lo = 21000 + randomInt(0, 40) * 100;
    const env = {
      HOME: home,
      PATH: process.env.PATH,
      LANG: 'C.UTF-8',
      // No fixed ports in a test: the daemon takes any free ones (clients find them in its
      // credentials file, as they would the defaults).
      BROKER_LISTEN: '127.0.0.1:0',
      BROKER_SSH_LISTEN: '127.0.0.1:0',
      BROKER_PORT_RANGE: `${lo}-${lo + 99}`,
    };
    const p = spawn('bash', ['-c', script], {
      cwd,
      env,
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (b: Buffer) => (out += b.toString()));
    p.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const kill = () => {
      try {
        process.kill(-p.pid!, 'SIGTERM');
      } catch {
        /* gone */
      }
    };
    cleanups.push(kill);
    const timer = setTimeout(kill, ms);
    // 'exit', not 'close': the broker and servers the script left in the background keep its
    // output pipes open until they are killed.
    p.on('exit', (code) => {
      clearTimeout(timer);
      setTimeout(() => resolve({ code, out }), 200);
    });
  });
}

/** Run one snippet as an ES module inside the copy (so `session-broker/…` resolves to it). */
function snippet(
  tree: string,
  home: string,
  b: Block,
  n: number,
): Promise<{ code: number | null; out: string; running: boolean }> {
  const file = join(tree, `readme-snippet-${n}.mjs`);
  writeFileSync(file, b.code + '\n');
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [file], {
      cwd: tree,
      env: { HOME: home, PATH: process.env.PATH },
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const kill = () => {
      try {
        process.kill(-p.pid!, 'SIGTERM');
      } catch {
        /* gone */
      }
    };
    cleanups.push(kill);
    // A server snippet must still be serving after 3 s; any other one must end within 20 s.
    const background = b.directive === 'background';
    const timer = setTimeout(
      () => resolve({ code: null, out, running: true }),
      background ? 3000 : 20_000,
    );
    p.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, running: false });
    });
  });
}

describe('README', () => {
  it('every code block is run by this test or says why not', () => {
    const unexplained = blocks.filter(
      (b) => b.directive === null && !['sh', 'ts'].includes(b.lang),
    );
    expect(unexplained.map((b) => `README.md:${b.line} (${b.lang})`)).toEqual([]);
    for (const b of blocks.filter((b) => b.directive?.startsWith('skip')))
      expect(b.directive!.length, `README.md:${b.line}: give the reason`).toBeGreaterThan(10);
    expect(
      blocks.filter((b) => b.directive === null || b.directive === 'background').length,
    ).toBeGreaterThan(10);
  });

  it('ok/the walk-through, then every other shell block and TypeScript snippet, run as written in a fresh HOME', async () => {
    const shell = blocks.filter((b) => b.lang === 'sh' && b.directive === null);
    expect(shell.filter((b) => b.section === WALK).length).toBeGreaterThanOrEqual(6);
    const tree = copyTree();
    const home = mkdtempSync(join(tmpdir(), 'broker-readme-home-'));
    const script = [
      'set -eu',
      // `npm ci` only: node_modules is linked from this checkout (see the header).
      'npm() { if [ "$1" = ci ]; then echo "(readme test: node_modules is linked)"; else command npm "$@"; fi; }',
      ...shell.map((b) => `echo "### README.md:${b.line}"\n${b.code}`),
      'echo "### shell done"',
    ].join('\n');
    const r = await bash(tree, home, script, 170_000);
    const out = r.out;
    expect(out, out).toContain('### shell done');
    expect(r.code, out).toBe(0);
    // What the README says each step prints.
    expect(out).toMatch(/^as:\s+\S+ \(admin\)$/m); // broker status
    expect(out).toMatch(/^OK\necho:hello$/m); // the key, then the app
    expect(out).toMatch(/^DENIED$/m); // a wrong key
    expect(out.match(/^echo:hello$/gm)?.length).toBe(2); // nc and broker connect
    expect(out).toMatch(/^valid$/m); // broker verify
    expect(out).toMatch(/^unregistered \S+\/demo$/m);
    expect(out).toMatch(/^echo:hi$/m); // broker run
    expect(statSync(join(home, '.local', 'state', 'broker', 'credentials.json')).mode & 0o777).toBe(
      0o600,
    );
    // The TypeScript snippets, in order, against the broker the walk-through started.
    const ts = blocks.filter(
      (b) => b.lang === 'ts' && (b.directive === null || b.directive === 'background'),
    );
    expect(ts.length).toBeGreaterThanOrEqual(4);
    for (const [n, b] of ts.entries()) {
      const s = await snippet(tree, home, b, n);
      const where = `README.md:${b.line}\n${s.out}`;
      if (b.directive === 'background') expect(s.running, where).toBe(true);
      else expect(s.code, where).toBe(0);
      expect(s.out, where).not.toMatch(/Error|error:/);
    }
  }, 200_000);
});

/**
 * src/host/safe-files.ts (SECURITY.md FS-5): OpenSSH's safe_path() walk, output directories,
 * link-proof writes and secret reads. The threat in every `fail/` case is another Unix user who
 * can write a directory on the path (bt-mallory) or who owns the file.
 */
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  checkSafeDirectory,
  ensurePrivateDirectory,
  readPrivateFile,
  writeFileSafely,
} from '../../src/host/safe-files.js';
import { BrokerError } from '../../src/protocol/errors.js';
import { ROOT } from '../helpers/daemon.js';
import { announceSkip, nodeAs, unixUser, userTmp, type UnixUser } from '../helpers/users.js';

const noUsers = announceSkip('safe-files cases with another owner (test/unit/safe-files.test.ts)');
const root = mkdtempSync(join(tmpdir(), 'broker-safe-files-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
/** A fresh directory with `mode` (set after creation: this is the test's set-up, not the code). */
function dir(mode = 0o700, parent = root): string {
  const p = join(parent, `d${n++}`);
  mkdirSync(p);
  chmodSync(p, mode);
  return p;
}

/** The refusal: a BrokerError `code` whose message contains each of `parts`. */
function refused(fn: () => unknown, parts: string[], code = 'insecure_path'): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, 'expected a refusal').toBeInstanceOf(BrokerError);
  expect((err as BrokerError).code).toBe(code);
  for (const p of parts) expect((err as BrokerError).message).toContain(p);
}

describe('checkSafeDirectory (safe_path)', () => {
  it('ok/own 0700 and 0755 directories under sticky /tmp; the real path is returned', () => {
    const a = dir(0o700);
    const b = dir(0o755, a);
    expect(checkSafeDirectory(a)).toBe(realpathSync(a));
    expect(checkSafeDirectory(b)).toBe(realpathSync(b));
  });

  it('ok/a link among the ancestors is resolved, and the real directory checked', () => {
    const real = dir();
    const link = join(root, `link${n++}`);
    symlinkSync(real, link);
    expect(checkSafeDirectory(join(link))).toBe(realpathSync(real));
  });

  it('ok/a sticky world-writable ancestor whose child is ours', () => {
    const shared = dir(0o1777);
    const mine = dir(0o700, shared);
    expect(checkSafeDirectory(mine)).toBe(realpathSync(mine));
  });

  const loose: [string, number, string][] = [
    ['fail/own, group-writable', 0o770, 'writable by group (mode 0770)'],
    ['fail/own, world-writable, not sticky', 0o777, 'writable by group and other (mode 0777)'],
    ['fail/other-writable only', 0o703, 'writable by other (mode 0703)'],
  ];
  for (const [name, mode, text] of loose) {
    it(name, () => {
      const d = dir(mode);
      refused(() => checkSafeDirectory(d), [d, text, `chmod go-w ${d}`]);
    });
  }

  it('fail/the directory itself is a sticky shared one (/tmp): no chmod advice', () => {
    const d = dir(0o1777);
    refused(() => checkSafeDirectory(d), [d, 'mode 1777', 'a directory of your own in it']);
  });

  it('fail/an unsafe ancestor is named, not the safe directory below it', () => {
    const top = dir(0o777);
    const below = dir(0o700, top);
    refused(() => checkSafeDirectory(below), [`${top} is writable`]);
  });

  it('fail/a missing directory is a usage error, not a crash', () => {
    refused(() => checkSafeDirectory(join(root, 'nope')), ['does not exist'], 'validation_failed');
  });
});

describe.skipIf(noUsers)('checkSafeDirectory with bt-mallory', () => {
  let mallory: UnixUser;
  beforeAll(() => (mallory = unixUser('bt-mallory')));

  it("fail/bt-mallory's 0755 directory: she can swap what is in it", () => {
    const d = dir(0o755);
    chownSync(d, mallory.uid, mallory.gid);
    refused(() => checkSafeDirectory(d), [`${d} is owned by uid ${mallory.uid}`]);
  });

  it("fail/sticky /tmp-like parent, but the child on the path is bt-mallory's", () => {
    const shared = dir(0o1777);
    const hers = dir(0o755, shared);
    chownSync(hers, mallory.uid, mallory.gid);
    const mine = dir(0o700, hers);
    refused(() => checkSafeDirectory(mine), [`${hers} is owned by uid ${mallory.uid}`]);
  });

  it("fail/root's directory that bt-mallory's group may write", () => {
    const d = dir(0o775);
    chownSync(d, 0, mallory.gid);
    refused(() => checkSafeDirectory(d), [`${d} is writable by group`]);
  });
});

describe('ensurePrivateDirectory', () => {
  it('ok/creates every missing level 0700, even with umask 0', () => {
    const base = dir();
    const target = join(base, 'a', 'b');
    const old = process.umask(0);
    try {
      expect(ensurePrivateDirectory(target)).toBe(realpathSync(target));
    } finally {
      process.umask(old);
    }
    expect(statSync(join(base, 'a')).mode & 0o7777).toBe(0o700);
    expect(statSync(target).mode & 0o7777).toBe(0o700);
  });

  it('ok/an existing safe directory is kept as it is', () => {
    const d = dir(0o755);
    expect(ensurePrivateDirectory(d)).toBe(realpathSync(d));
    expect(statSync(d).mode & 0o777).toBe(0o755);
  });

  it('fail/a symbolic link, even to a safe directory: nothing is created through it', () => {
    const real = dir();
    const link = join(root, `l${n++}`);
    symlinkSync(real, link);
    refused(() => ensurePrivateDirectory(link), [link, 'symbolic link', real]);
    refused(() => ensurePrivateDirectory(join(link, 'sub')), [link, 'symbolic link']);
    expect(readdirSync(real)).toEqual([]);
  });

  it('fail/a regular file', () => {
    const f = join(dir(), 'file');
    writeFileSync(f, '');
    refused(() => ensurePrivateDirectory(f), [f, 'not a directory']);
  });

  it('fail/a missing directory below a world-writable one is not created', () => {
    const shared = dir(0o777);
    refused(() => ensurePrivateDirectory(join(shared, 'tls')), [shared]);
    expect(existsSync(join(shared, 'tls'))).toBe(false);
  });
});

describe('writeFileSafely', () => {
  it('ok/replaces a link at the target instead of writing through it; mode at creation', () => {
    const d = dir();
    const victim = join(dir(), 'bashrc');
    writeFileSync(victim, 'victim\n');
    symlinkSync(victim, join(d, 'key.pem'));
    const old = process.umask(0);
    try {
      expect(writeFileSafely(join(d, 'key.pem'), 'KEY\n', 0o600)).toBe(
        join(realpathSync(d), 'key.pem'),
      );
    } finally {
      process.umask(old);
    }
    expect(readFileSync(victim, 'utf8')).toBe('victim\n');
    expect(lstatSync(join(d, 'key.pem')).isFile()).toBe(true);
    expect(statSync(join(d, 'key.pem')).mode & 0o7777).toBe(0o600);
    expect(readFileSync(join(d, 'key.pem'), 'utf8')).toBe('KEY\n');
    expect(readdirSync(d)).toEqual(['key.pem']); // no temporary file left
  });

  it('ok/straight into a sticky shared directory: the file is ours', () => {
    const shared = dir(0o1777);
    writeFileSafely(join(shared, 'ca.pem'), 'CA\n', 0o644);
    expect(statSync(join(shared, 'ca.pem')).mode & 0o777).toBe(0o644);
  });

  it('fail/into a world-writable directory: nothing is written, no temporary file left', () => {
    const shared = dir(0o777);
    refused(() => writeFileSafely(join(shared, 'ca.pem'), 'CA\n', 0o644), [shared]);
    expect(readdirSync(shared)).toEqual([]);
  });

  it('fail/a directory at the target', () => {
    const d = dir();
    mkdirSync(join(d, 'ca.pem'));
    refused(() => writeFileSafely(join(d, 'ca.pem'), 'CA\n', 0o644), ['is a directory']);
  });
});

describe.skipIf(noUsers)(
  'writeFileSafely as bt-alice, with bt-mallory in a sticky directory',
  () => {
    it("fail/the name is bt-mallory's file in a shared sticky directory: not replaced", async () => {
      const alice = unixUser('bt-alice');
      const mallory = unixUser('bt-mallory');
      const shared = mkdtempSync(join(tmpdir(), 'broker-safe-sticky-')); // alice can traverse it
      chmodSync(shared, 0o1777);
      const hers = join(shared, 'ca.pem');
      writeFileSync(hers, 'mallory\n', { mode: 0o666 });
      chownSync(hers, mallory.uid, mallory.gid);
      const mod = join(ROOT, 'dist', 'host', 'safe-files.js');
      const r = await nodeAs(
        alice,
        `import { writeFileSafely } from ${JSON.stringify(mod)};
       try { writeFileSafely(${JSON.stringify(hers)}, 'alice\\n', 0o644); console.log('written'); }
       catch (e) { console.log(e.code + ': ' + e.message); }`,
      );
      expect(r.stdout).toMatch(/^insecure_path: .*ca\.pem exists and belongs to another user/);
      expect(readFileSync(hers, 'utf8')).toBe('mallory\n');
      expect(readdirSync(shared)).toEqual(['ca.pem']);
      rmSync(shared, { recursive: true, force: true });
    });
  },
);

describe('readPrivateFile (sshkey_perm_ok)', () => {
  const file = (mode: number, content = '{"token":"t"}') => {
    const p = join(dir(), 'credentials.json');
    writeFileSync(p, content, { mode });
    chmodSync(p, mode);
    return p;
  };

  it('ok/0600 and 0400 are read; a missing file is null', () => {
    expect(readPrivateFile(file(0o600))).toBe('{"token":"t"}');
    expect(readPrivateFile(file(0o400))).toBe('{"token":"t"}');
    expect(readPrivateFile(join(root, 'missing.json'))).toBeNull();
  });

  for (const [mode, text] of [
    [0o644, 'group and other (mode 0644)'],
    [0o640, 'group (mode 0640)'],
    [0o604, 'other (mode 0604)'],
    [0o620, 'group (mode 0620)'],
  ] as const) {
    it(`fail/mode ${mode.toString(8)}: refused with the chmod that fixes it`, () => {
      const p = file(mode);
      refused(() => readPrivateFile(p), [p, text, `run: chmod 600 ${p}`]);
    });
  }

  it('ok/a link is judged by the file it points to; fail/when that file is loose', () => {
    const good = file(0o600);
    const bad = file(0o644);
    const l1 = join(dir(), 'ok.json');
    const l2 = join(dir(), 'bad.json');
    symlinkSync(good, l1);
    symlinkSync(bad, l2);
    expect(readPrivateFile(l1)).toBe('{"token":"t"}');
    refused(() => readPrivateFile(l2), [l2, 'chmod 600']);
  });

  it.skipIf(noUsers)("fail/bt-mallory's 0600 file (root can read it, must not trust it)", () => {
    const mallory = unixUser('bt-mallory');
    const p = file(0o600);
    chownSync(p, mallory.uid, mallory.gid);
    refused(() => readPrivateFile(p), [p, `owned by uid ${mallory.uid}`]);
  });

  it.skipIf(noUsers)('ok/bt-alice reads her own 0600 file; fail/her 0644 one', async () => {
    const alice = unixUser('bt-alice');
    const home = userTmp(alice, 'broker-safe-read-');
    try {
      const p = join(home, 'c.json');
      writeFileSync(p, 'x', { mode: 0o600 });
      chownSync(p, alice.uid, alice.gid);
      const mod = join(ROOT, 'dist', 'host', 'safe-files.js');
      const src = `import { readPrivateFile } from ${JSON.stringify(mod)};
        try { console.log(readPrivateFile(${JSON.stringify(p)})); }
        catch (e) { console.log(e.code); }`;
      expect((await nodeAs(alice, src)).stdout).toBe('x\n');
      chmodSync(p, 0o644);
      expect((await nodeAs(alice, src)).stdout).toBe('insecure_path\n');
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

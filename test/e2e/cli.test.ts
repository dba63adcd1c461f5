/**
 * The CLI contract of DESIGN §8, spawned through bin/broker: exit codes (0 ok, 1 negative,
 * 2 usage, 3 unreachable), `--json` prints exactly one JSON document, errors are one line with the
 * code, `--format env` is eval-able, secrets never need to be on the command line.
 */
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon, runCli } from '../helpers/daemon.js';

const ONE_ERROR_LINE = /^broker: [a-z_]+: .+\n$/;

describe('CLI contract', () => {
  let d: Daemon;
  let server: Server;
  let svcToken: string;
  beforeAll(async () => {
    d = await Daemon.start();
    const reg = await d.cli(['register', 'app', '--tunnel', 'none', '--json']);
    const res = JSON.parse(reg.stdout);
    svcToken = res.serviceToken;
    server = createServer((s) => s.end());
    await new Promise<void>((r) => server.listen(res.service.port, '127.0.0.1', r));
    expect((await d.cli(['ready', 'app'], { env: { BROKER_TOKEN: svcToken } })).code).toBe(0);
  });
  afterAll(async () => {
    server?.close();
    await d?.stop();
  });

  it('--json on register/load/query prints the API document and nothing else', async () => {
    const reg = await d.cli(['register', 'json1', '--tunnel', 'none', '--json']);
    expect(reg.code).toBe(0);
    expect(reg.stderr).toBe('');
    const doc = JSON.parse(reg.stdout);
    expect(Object.keys(doc).sort()).toEqual(['service', 'serviceToken']);
    const load = await d.cli(['load', 'app', '--json']);
    expect(Object.keys(JSON.parse(load.stdout))).toEqual(
      expect.arrayContaining(['service', 'key', 'keyId', 'expiresAt', 'connect']),
    );
    const q = await d.cli(['query', '--json']);
    expect(JSON.parse(q.stdout).services.length).toBeGreaterThanOrEqual(2);
    expect((await d.cli(['status', '--json'])).stdout).toMatch(/^\{[\s\S]*\}\n$/);
  });

  it('--format env output can be eval-ed by sh', async () => {
    const load = await d.cli(['load', 'app', '--format', 'env']);
    const out = await new Promise<string>((resolve) =>
      execFile(
        'sh',
        [
          '-c',
          'eval "$0"; printf "%s|%s|%s" "$BROKER_SERVICE" "$BROKER_PORT" "${#BROKER_KEY}"',
          load.stdout,
        ],
        (_e, o) => resolve(o),
      ),
    );
    const [svc, port, keyLen] = out.split('|');
    expect(svc).toMatch(/\/app$/);
    expect(Number(port)).toBeGreaterThanOrEqual(20000);
    expect(keyLen).toBe('47');
  });

  it('exit 1 + one line with the code for a negative answer', async () => {
    for (const args of [
      ['load', 'missing'],
      ['unregister', 'missing'],
      ['keys', 'revoke', 'key_0000000000000000'],
    ]) {
      const r = await d.cli(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(ONE_ERROR_LINE);
      expect(r.stdout).toBe('');
    }
    const taken = await d.cli(['register', 'app', '--tunnel', 'none']);
    expect(taken.code).toBe(1);
    expect(taken.stderr).toMatch(/^broker: name_taken: /);
  });

  it('exit 2 for usage errors: unknown option, missing argument, bad value, bad name', async () => {
    for (const args of [
      ['load'],
      ['register', 'x', '--bogus'],
      ['load', 'app', '--ttl', 'soon'],
      ['register', 'Bad_Name!'],
      ['nosuchcommand'],
    ]) {
      const r = await d.cli(args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(/^broker: (usage|validation_failed): /m);
    }
  });

  it('exit 3 when the broker is unreachable or its certificate is not from the pinned CA', async () => {
    const r = await d.cli(['query'], { env: { BROKER_URL: 'https://127.0.0.1:1' } });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(
      /^broker: unreachable: cannot reach https:\/\/127\.0\.0\.1:1 \(ECONNREFUSED\)/,
    );
    const other = await Daemon.start();
    try {
      const tls = await d.cli(['query'], { env: { BROKER_URL: other.url } });
      expect(tls.code).toBe(3);
      // It names the file that pins the CA, and what to do (issue 12).
      expect(tls.stderr).toMatch(
        /not signed by the CA pinned by \S+\/credentials\.json; .*broker ca --fingerprint/,
      );
    } finally {
      await other.stop();
    }
  });

  it('verify: key on stdin; a key as argument works but warns (FS-4)', async () => {
    const { key } = JSON.parse((await d.cli(['load', 'app', '--json'])).stdout);
    const viaStdin = await d.cli(['verify', 'app'], {
      env: { BROKER_TOKEN: svcToken },
      input: key + '\n',
    });
    expect(viaStdin.code).toBe(0);
    expect(viaStdin.stderr).toBe('');
    const viaArg = await d.cli(['verify', 'app', key], { env: { BROKER_TOKEN: svcToken } });
    expect(viaArg.code).toBe(0);
    expect(viaArg.stderr).toMatch(/warning: a key on the command line is visible/);
    const wrongService = await d.cli(['verify', 'json1'], {
      env: { BROKER_TOKEN: svcToken },
      input: key,
    });
    expect(wrongService.code).toBe(2);
  });

  it('--help of every command and subcommand has an example; --version prints the version', async () => {
    /** Command names listed under "Commands:" in a help text (wrapped lines are indented more). */
    const commandsIn = (help: string) =>
      [
        ...(help.split(/^Commands:$/m)[1] ?? '')
          .split(/\n\s*\n/)[0]!
          .matchAll(/^ {2}([a-z][a-z-]*)/gm),
      ]
        .map((m) => m[1]!)
        .filter((c) => c !== 'help');
    const top = await runCli(['--help'], d.env());
    const commands = commandsIn(top.stdout);
    // The contract's verbs are all there (DESIGN.md), plus the operator commands.
    for (const c of [
      'register',
      'run',
      'load',
      'verify',
      'query',
      'tunnel',
      'connect',
      'open',
      'backup',
    ]) {
      expect(commands).toContain(c);
    }
    const missing: string[] = [];
    for (const cmd of commands) {
      const r = await runCli([cmd, '--help'], d.env());
      expect(r.code, cmd).toBe(0);
      if (!/Example/.test(r.stdout)) missing.push(cmd);
      for (const sub of commandsIn(r.stdout)) {
        const rs = await runCli([cmd, sub, '--help'], d.env());
        expect(rs.code, `${cmd} ${sub}`).toBe(0);
        if (!/Example/.test(rs.stdout)) missing.push(`${cmd} ${sub}`);
      }
    }
    expect(missing).toEqual([]);
    expect((await runCli(['--version'], d.env())).stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
  }, 60_000);

  it('user and token management round trip (admin)', async () => {
    const add = await d.cli(['user', 'add', 'bob', '--json']);
    expect(add.code, add.stderr).toBe(0);
    const bobToken = JSON.parse(add.stdout).token;
    expect(bobToken).toMatch(/^bku_/);
    const mine = await d.cli(['token', 'create', '--label', 'laptop', '--json'], {
      env: { BROKER_TOKEN: bobToken },
    });
    expect(mine.code, mine.stderr).toBe(0);
    const { tokenInfo } = JSON.parse(mine.stdout);
    expect(tokenInfo.principal).toBe('bob');
    expect(
      (await d.cli(['token', 'revoke', tokenInfo.id], { env: { BROKER_TOKEN: bobToken } })).code,
    ).toBe(0);
    expect((await d.cli(['user', 'list'], { env: { BROKER_TOKEN: bobToken } })).stderr).toMatch(
      /^broker: forbidden: /,
    );
    expect((await d.cli(['user', 'remove', 'bob'])).code).toBe(0);
    expect((await d.cli(['status'], { env: { BROKER_TOKEN: bobToken } })).stderr).toMatch(
      /^broker: unauthenticated: /,
    );
  });

  it('load --wait: a client started before the job gets its key once the service is ready', async () => {
    const waiting = d.cli(['load', 'later', '--wait', '20s', '--json']);
    await new Promise((r) => setTimeout(r, 700));
    const reg = JSON.parse(
      (await d.cli(['register', 'later', '--tunnel', 'none', '--json'])).stdout,
    );
    const srv = createServer((s) => s.end());
    await new Promise<void>((r) => srv.listen(reg.service.port, '127.0.0.1', r));
    await new Promise((r) => setTimeout(r, 500));
    expect(
      (await d.cli(['ready', 'later'], { env: { BROKER_TOKEN: reg.serviceToken } })).code,
    ).toBe(0);
    const r = await waiting;
    srv.close();
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).service.status).toBe('ready');
    const timeout = await d.cli(['load', 'never', '--wait', '1s']);
    expect(timeout.code).toBe(1);
    expect(timeout.stderr).toMatch(/^broker: service_not_found: /);
  });

  it('ca prints the PEM the daemon pins', async () => {
    const r = await d.cli(['ca']);
    expect(r.stdout).toBe(d.ca);
  });
});

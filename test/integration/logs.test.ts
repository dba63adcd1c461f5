/**
 * LOG-2: structured logs and audit rows a hostile name cannot forge or garble — control
 * characters and bidi overrides are escaped, fields are truncated, and failures are logged at a
 * bounded rate with exact accounting of what was left out.
 */
import { readFileSync, rmSync } from 'node:fs';
import ssh2 from 'ssh2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

const HOSTILE = 'evil\n{"level":50,"msg":"forged"}\r\x1b[31mRED\x1b[0m\u202egnp.exe\x07';
// eslint-disable-next-line no-control-regex
const RAW_CONTROL = /[\x00-\x08\x0b-\x1f\x7f\u202e]/;
const PER_SECOND = 20;

describe('LOG-2: hostile names, long fields and failure floods', () => {
  let d: Daemon;
  let alice: string;

  beforeAll(async () => {
    d = await Daemon.start({ config: { logFailuresPerSecond: PER_SECOND } });
    alice = await d.addUser('alice');
  });
  afterAll(async () => {
    await d.stop();
    if (!process.env.KEEP_TEST_STATE) rmSync(d.home, { recursive: true, force: true });
  });

  /** Log lines as parsed objects; every line must be one JSON object. */
  function logLines(): Record<string, any>[] {
    return d
      .logs()
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => {
        expect(() => JSON.parse(l), `not a JSON log line: ${JSON.stringify(l)}`).not.toThrow();
        return JSON.parse(l) as Record<string, any>;
      });
  }

  it('an SSH user name full of newlines and ANSI escapes is escaped in the audit trail', async () => {
    const h = await d.api('GET', '/v1/health', { token: null });
    const error = await new Promise<string>((resolve) => {
      const c = new ssh2.Client();
      c.on('error', (e) => resolve(e.message));
      c.on('ready', () => {
        c.end();
        resolve('ready');
      });
      c.connect({
        host: '127.0.0.1',
        port: h.body.gateway.port,
        username: HOSTILE,
        password: 'wrong',
        tryKeyboard: false,
        readyTimeout: 10_000,
      });
    });
    expect(error).not.toBe('ready');

    let row: any;
    await until(
      async () => {
        const r = await d.api('GET', '/v1/audit?limit=50');
        row = r.body.events.find(
          (e: any) => e.action === 'ssh.auth' && e.actor?.startsWith('evil'),
        );
        return row !== undefined;
      },
      15_000,
      'the refused SSH login to reach the audit table',
    );
    expect(row.actor).not.toMatch(RAW_CONTROL);
    expect(row.actor).toContain('\\u000a');
    expect(row.actor).toContain('\\u001b');

    // `broker audit` prints one line per event and no escape sequence reaches the terminal.
    const out = await d.cli(['audit', '--limit', '50']);
    expect(out.code, out.stderr).toBe(0);
    expect(out.stdout).not.toMatch(RAW_CONTROL);
    const line = out.stdout.split('\n').find((l) => l.includes('ssh.auth') && l.includes('evil'));
    expect(line).toBeDefined();
    expect(line).not.toContain('forged"}'.replace('"}', '"}\n'));
    expect(out.stdout.split('\n').some((l) => l.startsWith('{"level"'))).toBe(false);
  });

  it('a label with control or bidi characters is refused with 400, nothing registered', async () => {
    for (const value of ['a\x1b[2Jb', 'x\u202ey', 'line\nbreak']) {
      const r = await d.api('POST', '/v1/services', {
        token: alice,
        body: { name: 'labelled', tunnel: 'none', labels: { note: value } },
      });
      expect(r.status, r.text).toBe(400);
      expect(r.body.error.code).toBe('validation_failed');
    }
    expect((await d.api('GET', '/v1/services/alice/labelled', { token: alice })).status).toBe(404);
  });

  it('paths are logged without query strings, escaped and truncated', async () => {
    const long = 'a'.repeat(5000);
    await d.api('GET', `/v1/services/alice/%0a%1b%5b31m${long}?token=should-not-appear`, {
      token: alice,
    });
    await until(
      () => logLines().some((l) => l.msg === 'request' && String(l.path).includes('%1b')),
      15_000,
      'the request line to be flushed',
    );
    const text = d.logs();
    expect(text).not.toContain('should-not-appear');
    expect(text).not.toMatch(RAW_CONTROL);
    const line = logLines().find((l) => l.msg === 'request' && String(l.path).includes('%1b'))!;
    expect(line.path.length).toBeLessThanOrEqual(200);
    expect(line.level).toBe(40); // a 4xx is a warning
  });

  it('1,000 failed requests: at most the budget per second is logged, every one is accounted for', async () => {
    const before = logLines();
    const t0 = Date.now();
    const N = 1000;
    let next = 0;
    await Promise.all(
      Array.from({ length: 20 }, async () => {
        while (next < N) {
          next++;
          const r = await d.api('GET', '/v1/services/alice/does-not-exist', { token: alice });
          expect(r.status).toBe(404);
        }
      }),
    );
    const seconds = (Date.now() - t0) / 1000;
    const fresh = () => logLines().slice(before.length);
    const suppressedSum = () =>
      fresh()
        .filter((l) => typeof l.suppressed === 'number')
        .reduce((a, l) => a + (l.suppressed as number), 0);
    const logged = () =>
      fresh().filter((l) => l.msg === 'request' && l.path === '/v1/services/alice/does-not-exist')
        .length;
    await until(() => logged() + suppressedSum() === N, 10_000, 'every failure logged or counted');
    console.log(
      `[LOG-2] ${N} failures in ${seconds.toFixed(1)} s: ${logged()} lines, ${suppressedSum()} counted`,
    );
    expect(logged()).toBeLessThanOrEqual(PER_SECOND * (Math.ceil(seconds) + 1));
    expect(suppressedSum()).toBeGreaterThan(0);
    // Successes are never held back by the failure budget.
    const ok = await d.api('GET', '/v1/health', { token: alice });
    expect(ok.status).toBe(200);
    await until(
      () =>
        fresh().some(
          (l) => l.requestId === ok.body.requestId || l.requestId === ok.headers['x-request-id'],
        ),
      15_000,
      'the health request to be logged',
    );
  });

  it('no raw control character anywhere in the log file', () => {
    expect(readFileSync(d.logPath, 'utf8')).not.toMatch(RAW_CONTROL);
  });
});

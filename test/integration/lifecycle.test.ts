/**
 * Daemon hygiene (issue #6 item 6, SECURITY.md DUR-5): SIGTERM drains in-flight requests and
 * exits 0 without losing what it acknowledged; an unexpected error answers a generic 500 without
 * a stack trace; an uncaught exception exits non-zero so a supervisor restarts a clean process.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

const homes: string[] = [];
afterAll(() => {
  if (!process.env.KEEP_TEST_STATE)
    for (const h of homes) rmSync(h, { recursive: true, force: true });
});

function exitOf(d: Daemon): Promise<{ code: number | null; signal: string | null; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    if (d.proc.exitCode !== null || d.proc.signalCode !== null) {
      resolve({ code: d.proc.exitCode, signal: d.proc.signalCode, ms: 0 });
      return;
    }
    d.proc.once('exit', (code, signal) => resolve({ code, signal, ms: Date.now() - t0 }));
  });
}

describe('SIGTERM drains and exits 0', () => {
  it('a request in flight when SIGTERM arrives completes, is kept, and the daemon exits 0', async () => {
    const d = await Daemon.start();
    homes.push(d.home);
    const alice = await d.addUser('alice');
    // An idle keep-alive connection must not hold the exit up.
    expect((await d.api('GET', '/v1/health')).status).toBe(200);

    const body = JSON.stringify({ name: 'drained', tunnel: 'none' });
    const half = body.length >> 1;
    const response = new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(
        new URL('/v1/services', d.url),
        {
          method: 'POST',
          ca: d.ca,
          agent: false,
          headers: {
            authorization: `Bearer ${alice}`,
            'content-type': 'application/json',
            'content-length': String(Buffer.byteLength(body)),
          },
        },
        (res) => {
          let text = '';
          res.on('data', (c: Buffer) => (text += c.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        },
      );
      req.on('error', reject);
      req.write(body.slice(0, half));
      // The rest arrives after SIGTERM.
      setTimeout(() => {
        d.proc.kill('SIGTERM');
        setTimeout(() => req.end(body.slice(half)), 300);
      }, 200);
    });
    const exit = exitOf(d);
    const r = await response;
    expect(r.status, r.text).toBe(201);
    const { code, signal, ms } = await exit;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    expect(ms).toBeLessThan(5000);
    expect(d.logs()).toContain('"broker stopped"');

    // What it acknowledged while draining is there after a restart on the same state.
    const again = await Daemon.start({ home: d.home, dataDir: d.dataDir });
    try {
      const s = await again.api('GET', '/v1/services/alice/drained', { token: alice });
      expect(s.status, s.text).toBe(200);
    } finally {
      await again.stop();
    }
  });

  it('after SIGTERM no new connection is accepted', async () => {
    const d = await Daemon.start();
    homes.push(d.home);
    // Keep one request open so the daemon is still draining when we knock.
    const { hostname, port } = new URL(d.url);
    const hold = spawn('openssl', ['s_client', '-quiet', '-connect', `${hostname}:${port}`], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    hold.stdin!.write('POST /v1/services HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{');
    await new Promise((r) => setTimeout(r, 500));
    const exit = exitOf(d);
    d.proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    const knock = await d.api('GET', '/v1/health').then(
      (r) => `answered ${r.status}`,
      (e: NodeJS.ErrnoException) => e.code,
    );
    expect(knock).toMatch(/ECONNREFUSED|ECONNRESET/);
    hold.kill();
    expect((await exit).code).toBe(0);
  });
});

describe('DUR-5: unexpected errors', () => {
  it('a database held locked by another process: a generic 500, no stack trace, the daemon lives on', async () => {
    const d = await Daemon.start();
    homes.push(d.home);
    // Someone opens the live database with sqlite3 and holds a write transaction.
    const locker = spawn('sqlite3', [join(d.dataDir, 'broker.db')], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    const lockerGone = new Promise((res) => locker.once('exit', res));
    locker.stdin!.write('BEGIN EXCLUSIVE;\nSELECT 1;\n');
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    const r = await d.api('POST', '/v1/services', { body: { name: 'busy', tunnel: 'none' } });
    const waited = Date.now() - t0;
    locker.stdin!.end('COMMIT;\n');
    expect(r.status, r.text).toBe(500);
    expect(r.body.error.code).toBe('internal');
    expect(r.body.requestId).toMatch(/\S/);
    expect(r.text).not.toMatch(/SQLITE|sqlite|\bat \S+ \(|\.js:\d+/);
    expect(waited).toBeGreaterThan(900); // it waited out busy_timeout rather than failing at once
    // The log has the details under that request id, for the operator.
    await until(() => d.logs().includes(r.body.requestId), 5000, 'the error in the log');
    const line = d
      .logs()
      .split('\n')
      .find((l) => l.includes(r.body.requestId) && l.includes('unexpected error'));
    expect(line).toMatch(/SQLITE_BUSY|database is locked/);
    // Once the lock is gone the same request succeeds: nothing was left half-done.
    await lockerGone;
    const ok = await d.api('POST', '/v1/services', { body: { name: 'busy', tunnel: 'none' } });
    expect(ok.status, ok.text).toBe(201);
    await d.stop();
  }, 30_000);

  it('an uncaught exception is logged as fatal and exits non-zero (70)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'broker-dur5-'));
    homes.push(dir);
    // A fault injected from outside the product code: SIGUSR2 makes the process throw.
    const fault = join(dir, 'fault.mjs');
    writeFileSync(
      fault,
      `process.on('SIGUSR2', () => setImmediate(() => { throw new Error('injected fault'); }));\n`,
    );
    const d = await Daemon.start({ home: dir, nodeArgs: ['--import', fault] });
    d.proc.kill('SIGUSR2');
    const { code, signal } = await exitOf(d);
    expect({ code, signal }).toEqual({ code: 70, signal: null });
    const fatal = d
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { level: number; msg: string; err?: { message: string } })
      .find((l) => l.level === 60);
    expect(fatal?.msg).toMatch(/uncaught exception/);
    expect(fatal?.err?.message).toBe('injected fault');
    // A supervisor's restart on the same state works: the lock was not left held.
    const again = await Daemon.start({ home: dir, dataDir: d.dataDir });
    expect((await again.api('GET', '/v1/health')).status).toBe(200);
    await again.stop();
  }, 30_000);
});

/**
 * `broker run` owns its app's whole process tree (issue 11): a server behind `sh -c` ends with
 * broker run — on SIGTERM, and on SIGKILL of broker run through the reaper —; the app is stopped
 * when its service is removed from another shell, and when it never listens (--ready-timeout).
 * Real processes throughout; "gone" means no live (non-zombie) process left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon, ROOT } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

const ECHO = join(ROOT, 'examples', 'python-echo', 'echo_server.py');

/** Live processes (zombies excluded) whose command line contains `marker`, broker run excluded. */
function live(marker: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (!cmd.includes(marker) || cmd.includes('bin/broker')) continue;
      const state = readFileSync(`/proc/${p}/stat`, 'utf8').replace(/^.*\) /, '')[0];
      if (state !== 'Z') out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

describe('broker run: the app tree lives and ends with broker run', () => {
  let d: Daemon;
  let owner: string;
  const procs: ChildProcess[] = [];
  const markers: string[] = [];

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
  });
  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (const m of markers) for (const pid of live(m)) process.kill(pid, 'SIGKILL');
    await d.stop();
  });

  /** broker run NAME … -- sh -c 'python3 echo … ; echo after': the server is a grandchild. */
  function wrapped(name: string, extra: string[] = []) {
    const marker = `${name}-${process.pid}-${Date.now()}`;
    markers.push(marker);
    const p = spawn(
      process.execPath,
      [BIN, 'run', name, ...extra, '--']
        .concat(['sh', '-c', `python3 "$0" --unix-socket "$1" --count-file "$2"; echo after`])
        .concat([ECHO, '{app_socket}', `/tmp/${marker}`]),
      { env: d.env(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    procs.push(p);
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
    return { p, marker, exited, err: () => err };
  }
  const status = async (name: string) =>
    (await d.api('GET', `/v1/services/${owner}/${name}`)).body.service?.status;
  const ready = (name: string) =>
    until(async () => (await status(name)) === 'ready', 20_000, `${name} ready`);

  it('ok/SIGTERM to broker run ends the server behind sh -c too, not only sh', async () => {
    const r = wrapped('wrap-term');
    await ready('wrap-term');
    expect(live(`/tmp/${r.marker}`).length).toBeGreaterThanOrEqual(1); // sh and python
    r.p.kill('SIGTERM');
    await r.exited;
    await until(() => live(`/tmp/${r.marker}`).length === 0, 5000, 'the whole tree to end');
    expect((await d.api('GET', `/v1/services/${owner}/wrap-term`)).status).toBe(404);
  });

  it('ok/SIGKILL to broker run: the reaper ends the whole tree within seconds', async () => {
    const r = wrapped('wrap-kill');
    await ready('wrap-kill');
    const server = live(`/tmp/${r.marker}`);
    expect(server.length).toBeGreaterThanOrEqual(1);
    r.p.kill('SIGKILL');
    await r.exited;
    await until(() => live(`/tmp/${r.marker}`).length === 0, 5000, 'the whole tree to end');
  });

  it(
    'ok/unregister from another shell: the app is stopped, broker run says why and exits 1',
    { timeout: 60_000 },
    async () => {
      const r = wrapped('wrap-unreg');
      await ready('wrap-unreg');
      const u = await d.cli(['unregister', 'wrap-unreg']);
      expect(u.code, u.stderr).toBe(0);
      const t0 = Date.now();
      expect(await r.exited).toBe(1);
      // The broker ends the removed service's own SSH connection at once (SES-2); the SDK's
      // reconnect is refused and it reports the removal within a second or two.
      expect(Date.now() - t0).toBeLessThan(5_000);
      expect(r.err()).toMatch(/service_not_found: \S+\/wrap-unreg was removed from the broker/);
      await until(() => live(`/tmp/${r.marker}`).length === 0, 5000, 'the app to end');
    },
  );

  it('fail/--ready-timeout 2s with an app that never listens: stopped, unregistered, exit 1 with what to check', async () => {
    const marker = `never-${process.pid}`;
    markers.push(marker);
    const p = spawn(
      process.execPath,
      [BIN, 'run', 'never', '--ready-timeout', '2s', '--'].concat([
        'python3',
        '-c',
        'import time; time.sleep(60)',
        '{app_socket}',
        marker,
      ]),
      { env: d.env(), stdio: ['ignore', 'ignore', 'pipe'] },
    );
    procs.push(p);
    let err = '';
    p.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const t0 = Date.now();
    expect(await new Promise((r) => p.once('exit', r))).toBe(1);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(err).toMatch(/service_not_ready: python3 did not listen on \S+app\.sock within 2s/);
    expect(err).toMatch(/--ready-timeout/);
    expect((await d.api('GET', `/v1/services/${owner}/never`)).status).toBe(404);
    await until(() => live(marker).length === 0, 5000, 'the app to end');
  });
});

/**
 * The examples in examples/ run as documented: the Node SDK server and the batch job script
 * (eval "$(broker register … --format env)" with a Python server gated by the Python helper).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, Daemon, ROOT, runCli } from '../helpers/daemon.js';
import { until } from '../helpers/wait.js';

function talk(port: number, payload: string): Promise<string> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port });
    let out = '';
    const t = setTimeout(() => (s.destroy(), resolve(out)), 3000);
    s.on('data', (c) => {
      out += c.toString();
      if (out.includes('echo') || out === 'DENIED\n') {
        clearTimeout(t);
        setTimeout(() => (s.destroy(), resolve(out)), 50);
      }
    });
    s.on('error', () => resolve(out));
    s.write(payload);
  });
}

describe('examples', () => {
  let d: Daemon;
  let owner: string;
  const procs: ChildProcess[] = [];
  const bin = mkdtempSync(join(tmpdir(), 'broker-bin-'));

  beforeAll(async () => {
    d = await Daemon.start();
    owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    // `broker` on PATH, as a site would install it.
    writeFileSync(join(bin, 'broker'), `#!/bin/sh\nexec "${process.execPath}" "${BIN}" "$@"\n`);
    chmodSync(join(bin, 'broker'), 0o755);
  });
  afterAll(async () => {
    for (const p of procs) p.kill('SIGKILL');
    await d.stop();
  });

  const env = () => ({ ...d.env(), PATH: `${bin}:${process.env.PATH}` });
  const key = async (name: string) =>
    (await d.api('POST', `/v1/services/${owner}/${name}/keys`, { body: {} })).body;

  it('ok/examples/node-sdk/echo-server.mjs: registers, tunnels, gates; SIGTERM unregisters', async () => {
    const p = spawn(
      process.execPath,
      [join(ROOT, 'examples', 'node-sdk', 'echo-server.mjs'), 'nodeecho'],
      { env: env(), stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(p);
    let out = '';
    p.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await until(() => out.includes('nodeecho: ready'), 20_000, 'node example ready');
    const k = await key('nodeecho');
    expect(await talk(k.service.port, `${k.key}\nhi`)).toBe(`OK\necho(${owner}): hi`);
    expect(await talk(k.service.port, 'bkk_' + 'q'.repeat(43) + '\nhi')).toBe('DENIED\n');
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
    expect((await d.api('GET', `/v1/services/${owner}/nodeecho`)).status).toBe(404);
  });

  it('ok/examples/jobscript/job.sh: eval register --format env, Python gate, ready, unregister at exit', async () => {
    const p = spawn('sh', [join(ROOT, 'examples', 'jobscript', 'job.sh'), 'jobecho'], {
      env: env(),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    procs.push(p);
    let out = '';
    p.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    await until(() => out.includes('ready on'), 20_000, 'job script ready');
    const k = await key('jobecho');
    expect(await talk(k.service.port, `${k.key}\nfrom-a-job`)).toBe('OK\necho:from-a-job');
    expect(await talk(k.service.port, 'wrong\nfrom-a-job')).toBe('DENIED\n');
    process.kill(-p.pid!, 'SIGTERM'); // the batch system ends the job
    await until(
      async () => (await d.api('GET', `/v1/services/${owner}/jobecho`)).status === 404,
      10_000,
      'unregistered',
    );
  });
});

describe('examples/systemd', () => {
  const dir = join(ROOT, 'examples', 'systemd');
  const unit = readFileSync(join(dir, 'broker.service'), 'utf8');
  const execStart = /^ExecStart=(.*)$/m.exec(unit)![1]!.split(/\s+/);

  it('ok/the unit passes systemd-analyze verify (with this checkout as the binary)', async (ctx) => {
    const analyze = await new Promise<boolean>((res) =>
      execFile('systemd-analyze', ['--version'], (err) => res(!err)),
    );
    if (!analyze) {
      console.log('[systemd] SKIP: systemd-analyze is not installed on this machine');
      ctx.skip();
    }
    const tmp = mkdtempSync(join(tmpdir(), 'broker-unit-'));
    const copy = join(tmp, 'broker.service');
    writeFileSync(copy, unit.replace('/usr/local/bin/broker', BIN));
    const out = await new Promise<{ code: number; stderr: string }>((res) =>
      execFile('systemd-analyze', ['verify', copy], (err, _o, stderr) =>
        res({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stderr }),
      ),
    );
    // Only complaints about this unit count (the host's other units are not ours to judge).
    const ours = out.stderr.split('\n').filter((l) => l.includes('broker.service'));
    expect(ours, out.stderr).toEqual([]);
  });

  it('ok/its ExecStart flags and config file are ones broker serve accepts', async () => {
    expect(execStart[0]).toBe('/usr/local/bin/broker');
    expect(execStart[1]).toBe('serve');
    const help = await runCli(['serve', '--help'], { PATH: process.env.PATH });
    for (const flag of execStart.filter((a) => a.startsWith('--')))
      expect(help.stdout).toContain(flag);
    const { loadConfig } = (await import(join(ROOT, 'dist', 'broker', 'config.js'))) as {
      loadConfig: (o: { file: string; env: NodeJS.ProcessEnv }) => { listen: string };
    };
    expect(loadConfig({ file: join(dir, 'config.json'), env: {} }).listen).toBe('0.0.0.0:7700');
    // Exit 2 is a config/state error: systemd must not restart-loop on it.
    expect(unit).toMatch(/^RestartPreventExitStatus=2$/m);
    expect(unit).toMatch(/^StateDirectoryMode=0700$/m);
  });
});

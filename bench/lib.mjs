// Shared bench helpers: spawn a real daemon, call its API, run wrk, time commands.
import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, openSync } from 'node:fs';
import { request, Agent } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
export const BIN = join(ROOT, 'bin', 'broker');

export function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;
}

/**
 * Start a real daemon on a fresh state dir. `extra`: more `broker serve` arguments;
 * `nodeArgs`: flags for node itself (e.g. ['--cpu-prof', '--cpu-prof-dir', dir]); `bin`: another
 * tree's `bin/broker` (A/B runs against an older build).
 */
export async function startDaemon(extra = [], { nodeArgs = [], bin = BIN } = {}) {
  const home = mkdtempSync(join(tmpdir(), 'broker-bench-'));
  const dataDir = join(home, 'state');
  const logFd = openSync(join(home, 'daemon.log'), 'a');
  const proc = spawn(
    process.execPath,
    [
      ...nodeArgs,
      bin,
      'serve',
      '--data',
      dataDir,
      '--listen',
      '127.0.0.1:0',
      '--ssh-listen',
      '127.0.0.1:0',
      ...extra,
    ],
    {
      env: { PATH: process.env.PATH, HOME: home },
      stdio: ['ignore', logFd, logFd],
    },
  );
  const credsPath = join(dataDir, 'credentials.json');
  for (let i = 0; i < 200; i++) {
    await new Promise((r) => setTimeout(r, 100));
    try {
      const log = readFileSync(join(home, 'daemon.log'), 'utf8');
      if (log.includes('"broker ready"')) break;
    } catch {
      // not written yet
    }
  }
  const creds = JSON.parse(readFileSync(credsPath, 'utf8'));
  const agent = new Agent({ ca: creds.ca, keepAlive: true, maxSockets: 64 });
  // A keep-alive socket the daemon closed while this process was blocked (execFileSync of wrk)
  // is only found dead when reused: retry once then, as Node's docs advise (req.reusedSocket).
  const api = (method, path, token, body, retried = false) =>
    new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        new URL(path, creds.url),
        {
          method,
          agent,
          headers: {
            authorization: `Bearer ${token}`,
            ...(payload
              ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }
              : {}),
          },
        },
        (res) => {
          let text = '';
          res.on('data', (c) => (text += c));
          res.on('end', () =>
            resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null }),
          );
        },
      );
      req.on('error', (err) => {
        if (!retried && req.reusedSocket && err.code === 'ECONNRESET')
          resolve(api(method, path, token, body, true));
        else reject(err);
      });
      req.end(payload);
    });
  return {
    pid: proc.pid,
    home,
    dataDir,
    url: creds.url,
    token: creds.token,
    ca: creds.ca,
    api,
    agent,
    stop: () =>
      new Promise((r) => {
        agent.destroy();
        proc.once('exit', r);
        proc.kill('SIGTERM');
      }),
    env: { PATH: process.env.PATH, HOME: home, BROKER_DATA: dataDir },
  };
}

/** Run wrk for `seconds` at concurrency `c`; returns {rps, p50ms, p99ms, errors}. */
export function wrk(url, { c, seconds, method = 'POST', body, headers = {} }) {
  const script = join(mkdtempSync(join(tmpdir(), 'wrk-')), 's.lua');
  const hdr = Object.entries(headers)
    .map(([k, v]) => `wrk.headers["${k}"] = "${v}"`)
    .join('\n');
  writeFileSync(
    script,
    `wrk.method = "${method}"\n${body ? `wrk.body = '${body}'` : ''}\n${hdr}\n
done = function(summary, latency, requests)
  io.write(string.format("JSON {\\"requests\\":%d,\\"errors\\":%d,\\"non2xx\\":%d,\\"p50\\":%f,\\"p99\\":%f,\\"duration\\":%d}\\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50), latency:percentile(99), summary.duration))
end`,
  );
  const out = execFileSync('wrk', ['-t1', `-c${c}`, `-d${seconds}s`, '-s', script, url], {
    encoding: 'utf8',
  });
  const j = JSON.parse(/JSON (\{.*\})/.exec(out)[1]);
  return {
    rps: j.requests / (j.duration / 1e6),
    p50ms: j.p50 / 1000,
    p99ms: j.p99 / 1000,
    errors: j.errors + j.non2xx,
  };
}

export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
export const fmt = (x, d = 0) =>
  x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

/** A free loopback port (bound then released). */
export const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });

/** Poll `pred` every 100 ms until it holds; throws after `ms`. */
export async function waitFor(pred, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('timed out');
}

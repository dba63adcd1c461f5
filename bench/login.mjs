// npm run bench:login — issue 12's benchmarks, ratios against baselines measured in the same run:
//   1. POST /v1/login with a MUNGE credential, p50/p99 and logins/s at c=8, against the bare
//      decode (`unmunge`, credential on stdin, 8 at once) — goal ≤ 1.5× the bare decode, p99 ≤ 10 ms;
//   2. verify and load (key minting) throughput with MUNGE on, while a login storm of 200/s runs,
//      against no storm — goal within 10 %;
//   3. a cold `broker load` for a user with no cached token (the login included) against one with.
// Needs root (a second Unix user makes the credentials), munge/munged and wrk.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync, chownSync } from 'node:fs';
import { request, Agent } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, fmt, have, median, startDaemon, wrk } from './lib.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const USER = 'bt-bench';
const line = (s = '') => process.stdout.write(s + '\n');
const pct = (xs, p) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((xs.length * p) / 100))];

function why() {
  if (process.getuid?.() !== 0) return 'needs root (credentials of a second Unix user)';
  if (!have('munge') || !have('unmunge')) return 'munge is not installed (apt-get install munge)';
  if (spawnSync('sh', ['-c', 'munge -n | unmunge'], { stdio: 'ignore' }).status !== 0)
    return 'munged is not running';
  if (!have('wrk')) return 'wrk is not installed';
  return null;
}

function ensureUser() {
  if (spawnSync('id', [USER], { stdio: 'ignore' }).status !== 0)
    execFileSync('useradd', ['-m', '-U', '-s', '/bin/sh', USER]);
  const [uid, gid] = execFileSync('sh', ['-c', `id -u ${USER}; id -g ${USER}`], {
    encoding: 'utf8',
  })
    .trim()
    .split('\n')
    .map(Number);
  return {
    uid,
    gid,
    home: execFileSync('sh', ['-c', `getent passwd ${USER} | cut -d: -f6`], {
      encoding: 'utf8',
    }).trim(),
  };
}

/** `n` fresh credentials of the bench user (restricted to root, the broker here). */
function credentials(n) {
  const out = execFileSync(
    'runuser',
    [
      '-u',
      USER,
      '--',
      'sh',
      '-c',
      `i=0; while [ $i -lt ${n} ]; do munge -n -u 0; i=$((i+1)); done`,
    ],
    { encoding: 'utf8', maxBuffer: 1 << 26 },
  );
  return out.trim().split('\n');
}

/** Run `task(i)` for i < n, `c` at a time; per-task latencies in ms and the rate. */
async function concurrently(n, c, task) {
  const lat = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: c }, async () => {
      while (next < n) {
        const i = next++;
        const t = performance.now();
        await task(i);
        lat.push(performance.now() - t);
      }
    }),
  );
  return { p50: pct(lat, 50), p99: pct(lat, 99), rate: n / ((performance.now() - t0) / 1000) };
}

function unmunge(cred) {
  return new Promise((resolve, reject) => {
    const p = spawn('unmunge', ['-N', '-k', 'STATUS,UID,GID,ENCODE_TIME,TTL', '-o', '/dev/null']);
    p.stdout.resume();
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`unmunge ${code}`))));
    p.stdin.end(cred + '\n');
  });
}

function loginOf(d, agent) {
  return (cred) =>
    new Promise((resolve, reject) => {
      const req = request(
        new URL('/v1/login', d.url),
        { method: 'POST', agent, headers: { authorization: `MUNGE ${cred}` } },
        (res) => {
          res.resume();
          res.on('end', () =>
            res.statusCode === 200 ? resolve() : reject(new Error(`login ${res.statusCode}`)),
          );
        },
      );
      req.on('error', reject);
      req.end();
    });
}

async function loginLatency(d) {
  line('## 1. POST /v1/login (MUNGE) vs the bare decode (unmunge), at c=1 and c=8');
  const N = 400;
  const agent = new Agent({ ca: d.ca, keepAlive: true, maxSockets: 8 });
  const login = loginOf(d, agent);
  const warm = credentials(40);
  await concurrently(40, 8, (i) => login(warm[i])); // TLS sessions, NSS cache, JIT
  line(`| c | | p50 ms | p99 ms | per s |`);
  line(`|---|---|---|---|---|`);
  for (const c of [1, 8]) {
    const rows = [];
    for (let r = 0; r < ROUNDS; r++) {
      const a = credentials(N);
      const b = credentials(N);
      const bare = await concurrently(N, c, (i) => unmunge(a[i]));
      const api = await concurrently(N, c, (i) => login(b[i]));
      rows.push({ bare, api });
    }
    const m = (k, f) => median(rows.map((r) => r[k][f]));
    const row = (what, k) =>
      line(
        `| ${c} | ${what} | ${fmt(m(k, 'p50'), 2)} | ${fmt(m(k, 'p99'), 2)} | ${fmt(m(k, 'rate'))} |`,
      );
    row('bare decode (unmunge)', 'bare');
    row('POST /v1/login', 'api');
    line(
      `| ${c} | login/bare | ${fmt(m('api', 'p50') / m('bare', 'p50'), 2)}× | ${fmt(m('api', 'p99') / m('bare', 'p99'), 2)}× | ${fmt(m('api', 'rate') / m('bare', 'rate'), 2)}× |`,
    );
  }
  agent.destroy();
  line('goal: login latency ≤ 1.5× the bare decode, p99 ≤ 10 ms');
  line();
}

async function underStorm(d) {
  line('## 2. verify and load throughput with MUNGE on: no storm vs 200 logins/s');
  const reg = await d.api('POST', '/v1/services', d.token, { name: 'bench', tunnel: 'none' });
  const owner = reg.body.service.owner;
  const listener = createServer((s) => s.end());
  await new Promise((r) => listener.listen(reg.body.service.port, '127.0.0.1', r));
  await d.api('POST', `/v1/services/${owner}/bench/ready`, reg.body.serviceToken, {});
  const { key } = (await d.api('POST', `/v1/services/${owner}/bench/keys`, d.token, {})).body;
  // The storm runs in its own process: wrk blocks this one while it measures.
  const storm = (creds) => {
    const dir = mkdtempSync(join(tmpdir(), 'bench-storm-'));
    writeFileSync(join(dir, 'creds'), creds.join('\n'));
    writeFileSync(join(dir, 'ca.pem'), d.ca);
    const child = spawn(process.execPath, ['--input-type=module', '-e', STORM, d.url, dir], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (c) => (out += c));
    return () =>
      new Promise((resolve) => {
        child.once('exit', () => {
          rmSync(dir, { recursive: true, force: true });
          resolve(JSON.parse(out.trim().split('\n').pop()));
        });
        child.kill('SIGTERM');
      });
  };
  const tests = {
    verify: () =>
      wrk(`${d.url}/v1/verify`, {
        c: 10,
        seconds: SECONDS,
        body: JSON.stringify({ key }),
        headers: {
          Authorization: `Bearer ${reg.body.serviceToken}`,
          'Content-Type': 'application/json',
        },
      }),
    load: () =>
      wrk(`${d.url}/v1/services/${owner}/bench/keys`, {
        c: 10,
        seconds: SECONDS,
        body: '{}',
        headers: { Authorization: `Bearer ${d.token}`, 'Content-Type': 'application/json' },
      }),
  };
  for (const [name, run] of Object.entries(tests)) {
    const quiet = [];
    const loud = [];
    let stormInfo;
    for (let r = 0; r < ROUNDS; r++) {
      quiet.push(run());
      const stop = storm(credentials(200 * (SECONDS + 2)));
      await new Promise((res) => setTimeout(res, 500)); // the storm is up to speed
      const t = performance.now();
      loud.push(run());
      const secs = (performance.now() - t) / 1000;
      stormInfo = await stop();
      stormInfo.rate = stormInfo.okDuring / secs;
    }
    const q = median(quiet.map((x) => x.rps));
    const l = median(loud.map((x) => x.rps));
    line(
      `${name}: ${fmt(q)} req/s quiet, ${fmt(l)} req/s under ${fmt(stormInfo.rate)} logins/s answered (${stormInfo.failed} failed) → ${fmt(l / q, 3)} (goal ≥ 0.90); p99 ${fmt(median(quiet.map((x) => x.p99ms)), 2)} → ${fmt(median(loud.map((x) => x.p99ms)), 2)} ms`,
    );
  }
  listener.close();
  line();
}

/** A login storm: 200 logins/s (2 every 10 ms) from the credentials in DIR/creds, until SIGTERM. */
const STORM = `
import { readFileSync } from 'node:fs';
import { request, Agent } from 'node:https';
const [url, dir] = process.argv.slice(1);
const creds = readFileSync(dir + '/creds', 'utf8').split('\\n');
const agent = new Agent({ ca: readFileSync(dir + '/ca.pem', 'utf8'), keepAlive: true, maxSockets: 16 });
let i = 0, ok = 0, failed = 0, okDuring = 0;
const started = Date.now() + 500;
const one = (cred) => {
  const req = request(new URL('/v1/login', url), { method: 'POST', agent, headers: { authorization: 'MUNGE ' + cred } }, (res) => {
    res.resume();
    res.on('end', () => { if (res.statusCode === 200) { ok++; if (Date.now() >= started) okDuring++; } else failed++; });
  });
  req.on('error', () => failed++);
  req.end();
};
const timer = setInterval(() => { for (let k = 0; k < 2 && i < creds.length; k++) one(creds[i++]); }, 10);
process.on('SIGTERM', () => { clearInterval(timer); console.log(JSON.stringify({ sent: i, ok, failed, okDuring })); process.exit(0); });
`;

async function coldLoad(d, user) {
  line(
    '## 3. cold `broker load` as a user: no cached token (MUNGE login included) vs a cached one',
  );
  const site = mkdtempSync(join(tmpdir(), 'bench-site-'));
  chmodSync(site, 0o755);
  execFileSync(process.execPath, [BIN, 'site-config', '--out', join(site, 'client.json')], {
    env: { ...process.env, ...d.env },
    stdio: 'ignore',
  });
  const xdg = mkdtempSync(join(tmpdir(), 'bench-xdg-'));
  chownSync(xdg, user.uid, user.gid);
  const env = [
    `BROKER_CLIENT_CONFIG=${join(site, 'client.json')}`,
    `XDG_CONFIG_HOME=${xdg}`,
    `HOME=${user.home}`,
    'PATH=/usr/local/bin:/usr/bin:/bin',
  ];
  const run = (args) => {
    const t = performance.now();
    const r = spawnSync(
      'runuser',
      ['-u', USER, '--', 'env', '-i', ...env, process.execPath, BIN, ...args],
      { encoding: 'utf8' },
    );
    if (r.status !== 0 && !r.stderr.includes('service_not_ready')) throw new Error(r.stderr);
    return performance.now() - t;
  };
  run(['register', 'coldsvc', '--tunnel', 'none']);
  const cold = [];
  const warm = [];
  for (let i = 0; i < 7; i++) {
    rmSync(join(xdg, 'broker', 'credentials.json'), { force: true });
    cold.push(run(['query', '--json']));
    warm.push(run(['query', '--json']));
  }
  line(
    `broker query, cold (login): ${fmt(median(cold))} ms; with a cached token: ${fmt(median(warm))} ms → ${fmt(median(cold) / median(warm), 2)}× (median of 7)`,
  );
  rmSync(site, { recursive: true, force: true });
  rmSync(xdg, { recursive: true, force: true });
  line();
}

const reason = why();
if (reason) {
  line(`login bench skipped: ${reason}`);
  process.exit(0);
}
const user = ensureUser();
const cfgDir = mkdtempSync(join(tmpdir(), 'bench-cfg-'));
writeFileSync(
  join(cfgDir, 'config.json'),
  JSON.stringify({ identity: { munge: { enabled: true } } }),
  { mode: 0o600 },
);
const d = await startDaemon(['--config', join(cfgDir, 'config.json')]);
try {
  await loginLatency(d);
  await underStorm(d);
  await coldLoad(d, user);
} finally {
  await d.stop();
}

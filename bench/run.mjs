// npm run bench — issue 2's benchmarks, each a ratio against a baseline measured in the same run
// (the machines are shared and noisy; absolute numbers wander, ratios hold):
//   1. POST /v1/verify through the broker vs bare node:https doing the same lookup + hash compare,
//      at concurrency 1, 10 and 100 (wrk; goal ≥ 80 % of baseline, p99 ≤ 2 ms at c=10);
//   2. durable registrations per second (goal ≥ 1,000/s) vs raw SQLite FULL inserts;
//   3. cold `broker load --json` vs `node -e ''` (goal ≤ 2.5×).
import { spawn, execFileSync, spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import Database from 'better-sqlite3';
import { BIN, ROOT, fmt, have, median, startDaemon, wrk } from './lib.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 4);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const results = {};
const line = (s = '') => process.stdout.write(s + '\n');

async function verifyBench() {
  line(
    '## 1. POST /v1/verify: broker vs bare node:https (same SQLite lookup + SHA-256 + timingSafeEqual)',
  );
  if (!have('wrk')) {
    line(
      'skipped: wrk is not installed (apt-get install wrk); a Node load generator would be the bottleneck',
    );
    return;
  }
  const d = await startDaemon();
  const reg = await d.api('POST', '/v1/services', d.token, { name: 'bench', tunnel: 'none' });
  const port = reg.body.service.port;
  const listener = createServer((s) => s.end());
  await new Promise((r) => listener.listen(port, '127.0.0.1', r));
  const svcToken = reg.body.serviceToken;
  await d.api('POST', `/v1/services/${reg.body.service.owner}/bench/ready`, svcToken, {});
  const { key } = (
    await d.api('POST', `/v1/services/${reg.body.service.owner}/bench/keys`, d.token, {})
  ).body;

  const tmp = mkdtempSync(join(tmpdir(), 'bench-base-'));
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=localhost',
      '-days',
      '1',
      '-keyout',
      join(tmp, 'key.pem'),
      '-out',
      join(tmp, 'cert.pem'),
    ],
    { stdio: 'ignore' },
  );
  const base = spawn(
    process.execPath,
    [
      join(ROOT, 'bench', 'baseline-verify-server.mjs'),
      JSON.stringify([
        readFileSync(join(tmp, 'cert.pem'), 'utf8'),
        readFileSync(join(tmp, 'key.pem'), 'utf8'),
        join(tmp, 'base.db'),
        svcToken,
        key,
      ]),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const basePort = await new Promise((r) =>
    createInterface({ input: base.stdout }).once('line', (l) => r(Number(l))),
  );

  const opts = (c) => ({
    c,
    seconds: SECONDS,
    body: JSON.stringify({ key }),
    headers: { Authorization: `Bearer ${svcToken}`, 'Content-Type': 'application/json' },
  });
  // sanity: both answer valid
  const check = await d.api('POST', '/v1/verify', svcToken, { key });
  if (!check.body?.valid)
    throw new Error('broker verify does not answer valid: ' + JSON.stringify(check));
  results.verify = {};
  line('| c | baseline req/s | broker req/s | ratio | baseline p50/p99 ms | broker p50/p99 ms |');
  line('|---|---|---|---|---|---|');
  for (const c of [1, 10, 100]) {
    const b = [],
      k = [];
    for (let i = 0; i < ROUNDS; i++) {
      b.push(wrk(`https://127.0.0.1:${basePort}/v1/verify`, opts(c)));
      k.push(wrk(`${d.url}/v1/verify`, opts(c)));
    }
    for (const r of [...b, ...k])
      if (r.errors) throw new Error(`wrk saw ${r.errors} errors at c=${c}`);
    const bm = {
      rps: median(b.map((r) => r.rps)),
      p50: median(b.map((r) => r.p50ms)),
      p99: median(b.map((r) => r.p99ms)),
    };
    const km = {
      rps: median(k.map((r) => r.rps)),
      p50: median(k.map((r) => r.p50ms)),
      p99: median(k.map((r) => r.p99ms)),
    };
    results.verify[c] = { baseline: bm, broker: km, ratio: km.rps / bm.rps };
    line(
      `| ${c} | ${fmt(bm.rps)} | ${fmt(km.rps)} | **${fmt((km.rps / bm.rps) * 100)} %** | ${fmt(bm.p50, 2)} / ${fmt(bm.p99, 2)} | ${fmt(km.p50, 2)} / ${fmt(km.p99, 2)} |`,
    );
  }
  line(
    `goal: ratio ≥ 80 % and broker p99 ≤ 2 ms at c=10 → ${results.verify[10].ratio >= 0.8 && results.verify[10].broker.p99 <= 2 ? 'met' : 'NOT met'}`,
  );
  base.kill();
  listener.close();
  await d.stop();
}

async function registerBench() {
  line('\n## 2. Durable registrations per second (each one fsync-committed before the 201)');
  const N = 3000;
  const tmp = mkdtempSync(join(tmpdir(), 'bench-sql-'));
  const db = new Database(join(tmp, 'raw.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE t (id INTEGER PRIMARY KEY, port INTEGER UNIQUE, v TEXT)');
  const ins = db.prepare('INSERT INTO t (port, v) VALUES (?, ?)');
  const tx = db.transaction((i) => ins.run(i, 'x'.repeat(200))).immediate;
  let t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i++) tx(i);
  const rawPerSec = N / (Number(process.hrtime.bigint() - t0) / 1e9);
  db.close();

  const d = await startDaemon(['--port-range', '30000-39999']);
  const C = 16;
  let next = 0;
  t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        const i = next++;
        const r = await d.api('POST', '/v1/services', d.token, { name: `r${i}`, tunnel: 'none' });
        if (r.status !== 201)
          throw new Error(`registration ${i}: ${r.status} ${JSON.stringify(r.body)}`);
      }
    }),
  );
  const perSec = N / (Number(process.hrtime.bigint() - t0) / 1e9);
  await d.stop();
  results.register = { perSec, rawSqliteFullPerSec: rawPerSec, ratio: perSec / rawPerSec };
  line(`raw SQLite insert, one FULL-synced transaction each: ${fmt(rawPerSec)}/s`);
  line(
    `broker POST /v1/services (c=${C}, ${N} registrations):   ${fmt(perSec)}/s  (**${fmt((perSec / rawPerSec) * 100)} %** of raw SQLite)`,
  );
  line(`goal: ≥ 1,000/s → ${perSec >= 1000 ? 'met' : 'NOT met'}`);
}

async function coldStartBench() {
  line('\n## 3. Cold CLI start: `broker load NAME --json` vs `node -e ""`');
  const d = await startDaemon();
  const reg = await d.api('POST', '/v1/services', d.token, { name: 'cold', tunnel: 'none' });
  const listener = createServer((s) => s.end());
  await new Promise((r) => listener.listen(reg.body.service.port, '127.0.0.1', r));
  await d.api(
    'POST',
    `/v1/services/${reg.body.service.owner}/cold/ready`,
    reg.body.serviceToken,
    {},
  );
  const runs = 20;
  const time = (args) => {
    const xs = [];
    for (let i = 0; i < runs + 2; i++) {
      const t0 = process.hrtime.bigint();
      const r = spawnSync(process.execPath, args, {
        env: d.env,
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      if (r.status !== 0) throw new Error(`${args.join(' ')} failed: ${r.stderr}`);
      if (i >= 2) xs.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return median(xs);
  };
  const nodeMs = [],
    floorMs = [],
    loadMs = [];
  for (let i = 0; i < 2; i++) {
    nodeMs.push(time(['-e', '']));
    floorMs.push(time([join(ROOT, 'bench', 'tls-floor.mjs')]));
    loadMs.push(time([BIN, 'load', 'cold', '--json']));
  }
  const n = median(nodeMs),
    f = median(floorMs),
    l = median(loadMs);
  results.coldStart = { nodeMs: n, tlsFloorMs: f, loadMs: l, ratio: l / n, ratioToFloor: l / f };
  line(`node -e '':                               ${fmt(n, 1)} ms`);
  line(`floor (node + one pinned-CA HTTPS GET):   ${fmt(f, 1)} ms  (${fmt(f / n, 2)}× node)`);
  line(`broker load --json:                       ${fmt(l, 1)} ms`);
  line(
    `ratio to node -e '': **${fmt(l / n, 2)}×** (goal ≤ 2.5× → ${l / n <= 2.5 ? 'met' : 'NOT met'}); to the TLS floor: **${fmt(l / f, 2)}×**`,
  );
  listener.close();
  await d.stop();
}

async function httpsBench() {
  line(
    '\n## 4. HTTPS registrations: certificate issued in the daemon vs openssl on the same machine',
  );
  const tmp = mkdtempSync(join(tmpdir(), 'bench-https-'));
  const d = await startDaemon(['--port-range', '40000-44999']);
  const caKey = join(d.dataDir, 'ca-key.pem');
  const caCert = join(d.dataDir, 'ca.pem');
  const times = [];
  for (let i = 0; i < 30; i++) {
    const t0 = process.hrtime.bigint();
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-subj',
        '/CN=x',
        '-days',
        '1',
        '-CA',
        caCert,
        '-CAkey',
        caKey,
        '-keyout',
        join(tmp, 'k.pem'),
        '-out',
        join(tmp, 'c.pem'),
      ],
      { stdio: 'ignore' },
    );
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const opensslMs = median(times);
  const one = [];
  for (let i = 0; i < 50; i++) {
    const t0 = process.hrtime.bigint();
    const r = await d.api('POST', '/v1/services', d.token, {
      name: `h${i}`,
      mode: 'https',
      tunnel: 'none',
    });
    if (r.status !== 201) throw new Error(`https registration: ${r.status}`);
    one.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const N = 600,
    C = 8;
  let next = 50;
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        const i = next++;
        const r = await d.api('POST', '/v1/services', d.token, {
          name: `h${i}`,
          mode: 'https',
          tunnel: 'none',
        });
        if (r.status !== 201) throw new Error(`https registration ${i}: ${r.status}`);
      }
    }),
  );
  const perSec = (N - 50) / (Number(process.hrtime.bigint() - t0) / 1e9);
  await d.stop();
  const p50 = median(one);
  results.https = { opensslMsPerCert: opensslMs, registerP50Ms: p50, registrationsPerSec: perSec };
  line(
    `openssl req -x509 -newkey ec -CA … (one process per cert): ${fmt(opensslMs, 1)} ms per certificate`,
  );
  line(
    `broker register --mode https, one at a time (HTTPS round trip, key + cert + fsync): p50 **${fmt(p50, 1)} ms** (${fmt(p50 / opensslMs, 2)}× the time of one openssl certificate; goal ≤ 10 ms → ${p50 <= 10 ? 'met' : 'NOT met'})`,
  );
  line(
    `broker register --mode https at c=${C}: **${fmt(perSec)}/s** (goal ≥ 100/s → ${perSec >= 100 ? 'met' : 'NOT met'})`,
  );
}

line(
  `# session broker benchmarks (${new Date().toISOString()}, node ${process.version}, ${SECONDS}s × ${ROUNDS} rounds per point)\n`,
);
const only = process.argv[2];
if (!only || only === 'verify') await verifyBench();
if (!only || only === 'register') await registerBench();
if (!only || only === 'cold') await coldStartBench();
if (!only || only === 'https') await httpsBench();
line('\n' + JSON.stringify(results));

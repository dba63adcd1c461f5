// npm run bench:ab — issue 11's benchmark: the new checks must not cost the hot paths. This tree
// (B) against an older one (A, default: the last commit before issue 11), built side by side and
// measured in interleaved rounds in one run, medians compared (the host is shared and noisy):
//   1. POST /v1/verify req/s and p99 at c=10 (wrk) — now also checks the key's principal;
//   2. bytes through the SSH gateway: `broker tunnel` → gateway → a tunnel-"none" service (a
//      sink), 256 MiB per round — forwards are now re-authorised and reserved per channel;
//   3. a new SSH connection to its first forwarded byte — loopback connections are now attributed
//      to a Unix user (one read of the socket table per batch of connects);
//   4. the TCP gate of `broker run --tunnel none`: connect → key → OK → first app byte, and what it
//      costs beyond one verify round trip (goal ≤ 1 ms) — gated connections now hold a key watch.
// Goal: B within 5 % of A on 1 and 2 (ratios printed), and ≤ 1 ms on 4.
//   BENCH_AB_BASE=<git ref> (default 9c48965^, the commit before issue 11's foundations)
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, fmt, have, freePort, median, startDaemon, waitFor, wrk } from './lib.mjs';

const BASE_REF = process.env.BENCH_AB_BASE ?? '9c48965^';
const ROUNDS = Number(process.env.BENCH_AB_ROUNDS ?? 3);
const MIB = 1024 * 1024;
const BYTES = Number(process.env.BENCH_AB_BYTES ?? 256 * MIB);
const apps = join(ROOT, 'bench', 'gate', 'apps.mjs');
const line = (s = '') => process.stdout.write(s + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const children = [];
const results = { base: BASE_REF };

/** A worktree of `ref` next to this one, built with this tree's node_modules. */
function buildBase(ref) {
  const dir = mkdtempSync(join(tmpdir(), 'broker-ab-'));
  execFileSync('git', ['worktree', 'add', '--detach', dir, ref], { cwd: ROOT, stdio: 'ignore' });
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: dir, stdio: 'inherit' });
  return dir;
}

/** Stream `bytes` through port; the sink answers '!' to the first burst. MiB/s after the probe. */
function stream(port, key, bytes) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    let stage = key ? 'key' : 'probe';
    let buf = '';
    s.on('connect', () => s.write(key ? key + '\n' : 'x'));
    s.on('data', (c) => {
      buf += c.toString();
      if (stage === 'key' && buf.startsWith('OK\n')) {
        stage = 'probe';
        buf = '';
        s.write('x');
        return;
      }
      if (stage !== 'probe' || !buf.includes('!')) return;
      stage = 'bulk';
      const firstMs = Number(process.hrtime.bigint() - t0) / 1e6;
      if (!bytes) {
        s.destroy();
        return resolve({ firstMs });
      }
      const chunk = Buffer.alloc(256 * 1024);
      let sent = 0;
      const tb = process.hrtime.bigint();
      const pump = () => {
        while (sent < bytes) {
          sent += chunk.length;
          if (!s.write(chunk)) return s.once('drain', pump);
        }
        s.end(() =>
          resolve({ firstMs, mibs: bytes / MIB / (Number(process.hrtime.bigint() - tb) / 1e9) }),
        );
      };
      pump();
    });
    s.on('error', reject);
  });
}

/** One side of the comparison: a daemon of `root`, a sink service, a tunnel and a gate. */
async function side(label, root) {
  const bin = join(root, 'bin', 'broker');
  const d = await startDaemon([], { bin });
  const owner = (await d.api('GET', '/v1/whoami', d.token)).body.principal.name;
  // A tunnel-"none" service whose server is the sink (no gate: the gateway path alone).
  const reg = await d.api('POST', '/v1/services', d.token, { name: 'sink', tunnel: 'none' });
  const sinkPort = reg.body.service.port;
  children.push(spawn(process.execPath, [apps, 'sink', String(sinkPort)], { stdio: 'ignore' }));
  await sleep(300);
  const svcToken = reg.body.serviceToken;
  const ready = await d.api('POST', `/v1/services/${owner}/sink/ready`, svcToken, {});
  if (ready.status !== 200) throw new Error(`${label}: ready ${JSON.stringify(ready.body)}`);
  const { key } = (await d.api('POST', `/v1/services/${owner}/sink/keys`, d.token, {})).body;
  // broker tunnel (this side's own CLI) to the sink, through the gateway.
  const tun = spawn(process.execPath, [bin, 'tunnel', 'sink', '--json'], {
    env: d.env,
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  children.push(tun);
  let out = '';
  tun.stdout.on('data', (c) => (out += c));
  await waitFor(() => out.trim().endsWith('}'));
  const tunnelPort = JSON.parse(out).localPort;
  // broker run's TCP gate in front of a sink app, tunnel "none": the gate is the service port.
  const run = spawn(
    process.execPath,
    [bin, 'run', 'gtcp', '--tunnel', 'none', '--', process.execPath, apps, 'sink', '{app_port}'],
    { env: d.env, stdio: 'ignore' },
  );
  children.push(run);
  const path = `/v1/services/${owner}/gtcp`;
  await waitFor(async () => (await d.api('GET', path, d.token)).body?.service?.status === 'ready');
  const gatePort = (await d.api('GET', path, d.token)).body.service.port;
  const gateKey = (await d.api('POST', `${path}/keys`, d.token, {})).body.key;
  return { label, d, bin, key, svcToken, tunnelPort, gatePort, gateKey, owner };
}

function verifyRps(s) {
  return wrk(`${s.d.url}/v1/verify`, {
    c: 10,
    seconds: 4,
    body: JSON.stringify({ key: s.key }),
    headers: { Authorization: `Bearer ${s.svcToken}`, 'Content-Type': 'application/json' },
  });
}

/**
 * A fresh `broker connect` to the gated service (a new process: key load, a new SSH connection, a
 * forward, the key handshake) to its first app byte.
 */
async function connectFirstByte(s) {
  const t0 = process.hrtime.bigint();
  await new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [s.bin, 'connect', 'gtcp'], {
      env: s.d.env,
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    c.stdout.once('data', () => {
      c.kill('SIGTERM');
      resolve();
    });
    c.once('exit', (code) => (code ? reject(new Error(`connect exited ${code}`)) : resolve()));
    c.stdin.write('x');
  });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

async function gateCost(s) {
  const direct = [];
  const gate = [];
  const verify = [];
  // The app itself, reached directly, for the baseline first byte.
  const appPort = await freePort();
  const app = spawn(process.execPath, [apps, 'sink', String(appPort)], { stdio: 'ignore' });
  children.push(app);
  await sleep(300);
  for (let i = 0; i < 100; i++) {
    direct.push((await stream(appPort, null, 0)).firstMs);
    gate.push((await stream(s.gatePort, s.gateKey, 0)).firstMs);
    const t = process.hrtime.bigint();
    await s.d.api('POST', '/v1/verify', s.svcToken, { key: s.key });
    verify.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  app.kill();
  return {
    directMs: median(direct),
    gateMs: median(gate),
    verifyMs: median(verify),
    beyondVerifyMs: median(gate) - median(direct) - median(verify),
  };
}

let baseRoot = null;

async function main() {
  if (!have('wrk')) {
    line('skipped: wrk is not installed (apt-get install wrk)');
    return;
  }
  line(`# issue 11 A/B: this tree (B) vs ${BASE_REF} (A), ${ROUNDS} interleaved rounds`);
  baseRoot = buildBase(BASE_REF);
  const A = await side('A', baseRoot);
  const B = await side('B', ROOT);
  const m = {
    A: { rps: [], p99: [], mibs: [], conn: [] },
    B: { rps: [], p99: [], mibs: [], conn: [] },
  };
  for (let r = 0; r < ROUNDS; r++) {
    for (const s of r % 2 ? [B, A] : [A, B]) {
      const v = verifyRps(s);
      m[s.label].rps.push(v.rps);
      m[s.label].p99.push(v.p99ms);
      m[s.label].mibs.push((await stream(s.tunnelPort, null, BYTES)).mibs);
      const conns = [];
      for (let i = 0; i < 5; i++) conns.push(await connectFirstByte(s));
      m[s.label].conn.push(median(conns));
    }
  }
  const med = (k) => ({ A: median(m.A[k]), B: median(m.B[k]) });
  const rps = med('rps');
  const p99 = med('p99');
  const mibs = med('mibs');
  const conn = med('conn');
  line('| measure | A (before) | B (now) | B / A | goal |');
  line('|---|---|---|---|---|');
  line(
    `| verify req/s, c=10 | ${fmt(rps.A)} | ${fmt(rps.B)} | ${fmt(rps.B / rps.A, 3)} | ≥ 0.95 |`,
  );
  line(`| verify p99, ms | ${fmt(p99.A, 2)} | ${fmt(p99.B, 2)} | ${fmt(p99.B / p99.A, 2)} | |`);
  line(
    `| broker tunnel → gateway, MiB/s | ${fmt(mibs.A)} | ${fmt(mibs.B)} | ${fmt(mibs.B / mibs.A, 3)} | ≥ 0.95 |`,
  );
  line(
    `| new broker connect → first byte, ms | ${fmt(conn.A, 1)} | ${fmt(conn.B, 1)} | ${fmt(conn.B / conn.A, 2)} | |`,
  );
  const gA = await gateCost(A);
  const gB = await gateCost(B);
  line(
    `| TCP gate: first byte beyond one verify, ms | ${fmt(gA.beyondVerifyMs, 2)} | ${fmt(gB.beyondVerifyMs, 2)} | | ≤ 1 ms |`,
  );
  line(
    `  (gate ${fmt(gA.gateMs, 2)} / ${fmt(gB.gateMs, 2)} ms, app direct ${fmt(gA.directMs, 2)} / ${fmt(gB.directMs, 2)} ms, verify ${fmt(gA.verifyMs, 2)} / ${fmt(gB.verifyMs, 2)} ms)`,
  );
  Object.assign(results, { raw: m, rps, p99, mibs, conn, gate: { A: gA, B: gB } });
  const file = join(mkdtempSync(join(tmpdir(), 'broker-ab-results-')), 'ab.json');
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n');
  line(`\nraw figures: ${file}`);
  await A.d.stop();
  await B.d.stop();
}

try {
  await main();
} finally {
  for (const c of children) c.kill('SIGTERM');
  if (baseRoot)
    execFileSync('git', ['worktree', 'remove', '--force', baseRoot], {
      cwd: ROOT,
      stdio: 'ignore',
    });
}

// Gate overhead (issue 5), ratios in one run:
//   TCP: throughput and connection latency through `broker run`'s gate vs straight to the app
//        (goal ≥ 90 % throughput; ≤ 1 ms added per connection plus one verify round trip);
//   HTTPS: requests/s through `broker run --mode https` vs the app served directly over TLS with
//        the same kind of certificate (goal ≥ 70 %).
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, ROOT, fmt, have, median, startDaemon, wrk } from './lib.mjs';

const MIB = 1024 * 1024;
const BYTES = Number(process.env.BENCH_GATE_BYTES ?? 512 * MIB);
const line = (s = '') => process.stdout.write(s + '\n');
const results = {};
const children = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const free = () =>
  new Promise((r) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => r(p));
    });
  });

async function waitFor(pred, ms = 20000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(100);
  }
  throw new Error('timed out');
}

/** Open a connection, optionally do the key handshake, then measure first byte and bulk. */
function session(port, key, bytes) {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const s = connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    let stage = key ? 'key' : 'probe';
    let buf = '';
    let tFirst;
    s.on('connect', () => s.write(key ? key + '\n' : 'x'));
    s.on('data', (c) => {
      buf += c.toString();
      if (stage === 'key' && buf.startsWith('OK\n')) {
        stage = 'probe';
        buf = '';
        s.write('x');
        return;
      }
      if (stage === 'probe' && buf.includes('!')) {
        tFirst = Number(process.hrtime.bigint() - t0) / 1e6;
        stage = 'bulk';
        if (!bytes) {
          s.destroy();
          return resolve({ firstMs: tFirst });
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
            resolve({
              firstMs: tFirst,
              mibs: bytes / MIB / (Number(process.hrtime.bigint() - tb) / 1e9),
            }),
          );
        };
        pump();
      }
    });
    s.on('error', reject);
  });
}

const d = await startDaemon();
try {
  line('## broker run gate overhead');
  // --- TCP -----------------------------------------------------------------
  const direct = await free();
  children.push(
    spawn(process.execPath, [join(ROOT, 'bench', 'gate', 'apps.mjs'), 'sink', String(direct)], {
      stdio: 'ignore',
    }),
  );
  const run = spawn(
    process.execPath,
    [
      BIN,
      'run',
      'gtcp',
      '--tunnel',
      'none',
      '--',
      process.execPath,
      join(ROOT, 'bench', 'gate', 'apps.mjs'),
      'sink',
      '{app_port}',
    ],
    { env: d.env, stdio: 'ignore' },
  );
  children.push(run);
  let owner;
  await waitFor(async () => {
    const r = await d.api('GET', '/v1/whoami', d.token);
    owner = r.body.principal.name;
    return (
      (await d.api('GET', `/v1/services/${owner}/gtcp`, d.token)).body?.service?.status === 'ready'
    );
  });
  await sleep(300);
  const svcPort = (await d.api('GET', `/v1/services/${owner}/gtcp`, d.token)).body.service.port;
  const key = (await d.api('POST', `/v1/services/${owner}/gtcp/keys`, d.token, {})).body.key;
  const lat = { direct: [], gate: [] };
  for (let i = 0; i < 200; i++) {
    lat.direct.push((await session(direct, null, 0)).firstMs);
    lat.gate.push((await session(svcPort, key, 0)).firstMs);
  }
  // One verify round trip, measured on its own for the goal's allowance.
  const vt = [];
  for (let i = 0; i < 200; i++) {
    const t = process.hrtime.bigint();
    await d.api('POST', '/v1/verify', d.token, { key }).catch(() => {});
    vt.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  const tp = { direct: [], gate: [] };
  for (let i = 0; i < 3; i++) {
    tp.direct.push((await session(direct, null, BYTES)).mibs);
    tp.gate.push((await session(svcPort, key, BYTES)).mibs);
  }
  const ld = median(lat.direct),
    lg = median(lat.gate),
    v = median(vt);
  const td = median(tp.direct),
    tg = median(tp.gate);
  results.tcp = { directMs: ld, gateMs: lg, verifyMs: v, directMiBs: td, gateMiBs: tg };
  line('| TCP | direct to the app | through the gate | ratio / added |');
  line('|---|---|---|---|');
  line(
    `| throughput (${BYTES / MIB} MiB) | ${fmt(td)} MiB/s | ${fmt(tg)} MiB/s | **${fmt((tg / td) * 100)} %** (goal ≥ 90 % → ${tg / td >= 0.9 ? 'met' : 'NOT met'}) |`,
  );
  line(
    `| connect → first byte (median of 200) | ${fmt(ld, 2)} ms | ${fmt(lg, 2)} ms | +${fmt(lg - ld, 2)} ms; one verify round trip alone ${fmt(v, 2)} ms → gate cost beyond verify ${fmt(lg - ld - v, 2)} ms (goal ≤ 1 ms → ${lg - ld - v <= 1 ? 'met' : 'NOT met'}) |`,
  );
  run.kill('SIGTERM');

  // --- HTTPS ---------------------------------------------------------------
  if (!have('wrk')) line('\nHTTPS: skipped (wrk is not installed)');
  else {
    const hrun = spawn(
      process.execPath,
      [
        BIN,
        'run',
        'ghttps',
        '--mode',
        'https',
        '--tunnel',
        'none',
        '--',
        process.execPath,
        join(ROOT, 'bench', 'gate', 'apps.mjs'),
        'http',
        '{app_port}',
      ],
      { env: d.env, stdio: 'ignore' },
    );
    children.push(hrun);
    await waitFor(
      async () =>
        (await d.api('GET', `/v1/services/${owner}/ghttps`, d.token)).body?.service?.status ===
        'ready',
    );
    const hs = (await d.api('GET', `/v1/services/${owner}/ghttps`, d.token)).body.service;
    const hkey = (await d.api('POST', `/v1/services/${owner}/ghttps/keys`, d.token, {})).body.key;
    // Baseline: the same app answering over TLS itself, with a broker-issued certificate.
    const reg = await d.api('POST', '/v1/services', d.token, {
      name: 'gdirect',
      mode: 'https',
      tunnel: 'none',
    });
    const tmp = mkdtempSync(join(tmpdir(), 'gate-bench-'));
    writeFileSync(join(tmp, 'c.pem'), reg.body.tls.cert);
    writeFileSync(join(tmp, 'k.pem'), reg.body.tls.key);
    const dport = await free();
    children.push(
      spawn(
        process.execPath,
        [
          join(ROOT, 'bench', 'gate', 'apps.mjs'),
          'https',
          String(dport),
          join(tmp, 'c.pem'),
          join(tmp, 'k.pem'),
        ],
        { stdio: 'ignore' },
      ),
    );
    await sleep(500);
    const opts = { c: 10, seconds: 4, method: 'GET', headers: { Authorization: `Bearer ${hkey}` } };
    const b = [],
      g = [];
    for (let i = 0; i < 2; i++) {
      b.push(wrk(`https://127.0.0.1:${dport}/`, opts));
      g.push(wrk(`https://127.0.0.1:${hs.port}/`, opts));
    }
    for (const r of [...b, ...g]) if (r.errors) throw new Error(`wrk errors: ${r.errors}`);
    const br = median(b.map((r) => r.rps)),
      gr = median(g.map((r) => r.rps));
    results.https = { directRps: br, gateRps: gr, ratio: gr / br };
    line('');
    line(
      `HTTPS (wrk c=10, keep-alive): app over TLS directly ${fmt(br)} req/s; through \`broker run --mode https\` (TLS + key check + proxy) ${fmt(gr)} req/s → **${fmt((gr / br) * 100)} %** (goal ≥ 70 % → ${gr / br >= 0.7 ? 'met' : 'NOT met'})`,
    );
    hrun.kill('SIGTERM');
  }
} finally {
  for (const c of children) c.kill('SIGKILL');
  await d.stop();
}
line('\n' + JSON.stringify(results));

// Gate overhead (issue 5), ratios in one run:
//   TCP: throughput and connection latency through `broker run`'s gate vs straight to the app
//        (goal ≥ 90 % throughput; ≤ 1 ms added per connection plus one verify round trip);
//   HTTPS: requests/s through `broker run --mode https` vs the app served directly over TLS with
//        the same kind of certificate (goal ≥ 70 %).
import { spawn } from 'node:child_process';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, ROOT, fmt, have, freePort, median, startDaemon, waitFor, wrk } from './lib.mjs';

const MIB = 1024 * 1024;
const apps = join(ROOT, 'bench', 'gate', 'apps.mjs');
const BYTES = Number(process.env.BENCH_GATE_BYTES ?? 512 * MIB);
const line = (s = '') => process.stdout.write(s + '\n');
const results = {};
const children = [];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `broker run NAME ARGS… -- COMMAND…`, once the service is ready: {proc, port, key}. */
async function brokerRun(d, owner, name, args, command) {
  const proc = spawn(process.execPath, [BIN, 'run', name, ...args, '--', ...command], {
    env: d.env,
    stdio: 'ignore',
  });
  children.push(proc);
  const path = `/v1/services/${owner}/${name}`;
  await waitFor(async () => (await d.api('GET', path, d.token)).body?.service?.status === 'ready');
  const { port } = (await d.api('GET', path, d.token)).body.service;
  const { key } = (await d.api('POST', `${path}/keys`, d.token, {})).body;
  return { proc, port, key };
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
  const direct = await freePort();
  children.push(
    spawn(process.execPath, [apps, 'sink', String(direct)], {
      stdio: 'ignore',
    }),
  );
  const owner = (await d.api('GET', '/v1/whoami', d.token)).body.principal.name;
  const {
    proc: run,
    port: svcPort,
    key,
  } = await brokerRun(
    d,
    owner,
    'gtcp',
    ['--tunnel', 'none'],
    [process.execPath, apps, 'sink', '{app_port}'],
  );
  await sleep(300);
  // The ceiling: a bare Node pipe to the same app, no key, no checks — what any gate written in
  // Node pays on this host for the extra hop (two more socket copies, one more process).
  const relay = await freePort();
  children.push(
    spawn(process.execPath, [apps, 'relay', String(relay), String(direct)], { stdio: 'ignore' }),
  );
  await sleep(300);
  const lat = { direct: [], gate: [], relay: [] };
  for (let i = 0; i < 200; i++) {
    lat.direct.push((await session(direct, null, 0)).firstMs);
    lat.gate.push((await session(svcPort, key, 0)).firstMs);
    lat.relay.push((await session(relay, null, 0)).firstMs);
  }
  // One verify round trip, measured on its own for the goal's allowance.
  const vt = [];
  for (let i = 0; i < 200; i++) {
    const t = process.hrtime.bigint();
    await d.api('POST', '/v1/verify', d.token, { key }).catch(() => {});
    vt.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  const tp = { direct: [], gate: [], relay: [] };
  for (let i = 0; i < 5; i++) {
    tp.direct.push((await session(direct, null, BYTES)).mibs);
    tp.gate.push((await session(svcPort, key, BYTES)).mibs);
    tp.relay.push((await session(relay, null, BYTES)).mibs);
  }
  const ld = median(lat.direct),
    lg = median(lat.gate),
    v = median(vt);
  const td = median(tp.direct),
    tg = median(tp.gate),
    tr = median(tp.relay),
    lr = median(lat.relay);
  results.tcp = {
    directMs: ld,
    gateMs: lg,
    relayMs: lr,
    verifyMs: v,
    directMiBs: td,
    gateMiBs: tg,
    relayMiBs: tr,
    samples: tp,
  };
  line(
    '| TCP | direct to the app | through the gate | ratio / added | ceiling: bare Node pipe, no key (ratio) | gate vs ceiling |',
  );
  line('|---|---|---|---|---|---|');
  line(
    `| throughput (${BYTES / MIB} MiB, median of 5) | ${fmt(td)} MiB/s | ${fmt(tg)} MiB/s | **${fmt((tg / td) * 100)} %** (goal ≥ 90 % → ${tg / td >= 0.9 ? 'met' : 'NOT met'}) | ${fmt(tr)} MiB/s (${fmt((tr / td) * 100)} %) | ${fmt((tg / tr) * 100)} % |`,
  );
  line(
    `| connect → first byte (median of 200) | ${fmt(ld, 2)} ms | ${fmt(lg, 2)} ms | +${fmt(lg - ld, 2)} ms; one verify round trip alone ${fmt(v, 2)} ms → gate cost beyond verify ${fmt(lg - ld - v, 2)} ms (goal ≤ 1 ms → ${lg - ld - v <= 1 ? 'met' : 'NOT met'}) | ${fmt(lr, 2)} ms (+${fmt(lr - ld, 2)} ms) | |`,
  );
  run.kill('SIGTERM');

  // --- HTTPS ---------------------------------------------------------------
  if (!have('wrk')) line('\nHTTPS: skipped (wrk is not installed)');
  else {
    const https = ['--mode', 'https', '--tunnel', 'none'];
    const {
      proc: hrun,
      port: hport,
      key: hkey,
    } = await brokerRun(d, owner, 'ghttps', https, [process.execPath, apps, 'http', '{app_port}']);
    // Baseline: the same app answering over TLS itself, with a broker-issued certificate.
    const reg = await d.api('POST', '/v1/services', d.token, {
      name: 'gdirect',
      mode: 'https',
      tunnel: 'none',
    });
    const tmp = mkdtempSync(join(tmpdir(), 'gate-bench-'));
    writeFileSync(join(tmp, 'c.pem'), reg.body.tls.cert);
    writeFileSync(join(tmp, 'k.pem'), reg.body.tls.key);
    const dport = await freePort();
    children.push(
      spawn(
        process.execPath,
        [apps, 'https', String(dport), join(tmp, 'c.pem'), join(tmp, 'k.pem')],
        { stdio: 'ignore' },
      ),
    );
    // The ceiling: TLS off with the same certificate, then a bare pipe to the same plain-HTTP
    // app — no HTTP parsing, no key check. No HTTPS gate in Node can beat it on this host.
    const [aport, cport] = [await freePort(), await freePort()];
    children.push(
      spawn(process.execPath, [apps, 'http', String(aport)], {
        stdio: 'ignore',
      }),
      spawn(
        process.execPath,
        [apps, 'tlsrelay', String(cport), String(aport), join(tmp, 'c.pem'), join(tmp, 'k.pem')],
        { stdio: 'ignore' },
      ),
    );
    await sleep(500);
    const opts = { c: 10, seconds: 4, method: 'GET', headers: { Authorization: `Bearer ${hkey}` } };
    const b = [],
      g = [],
      c = [];
    for (let i = 0; i < 3; i++) {
      b.push(wrk(`https://127.0.0.1:${dport}/`, opts));
      g.push(wrk(`https://127.0.0.1:${hport}/`, opts));
      c.push(wrk(`https://127.0.0.1:${cport}/`, opts));
    }
    for (const r of [...b, ...g, ...c]) if (r.errors) throw new Error(`wrk errors: ${r.errors}`);
    const br = median(b.map((r) => r.rps)),
      gr = median(g.map((r) => r.rps)),
      cr = median(c.map((r) => r.rps));
    results.https = { directRps: br, gateRps: gr, ceilingRps: cr, ratio: gr / br };
    line('');
    line(
      `HTTPS (wrk c=10, keep-alive, median of 3): app over TLS directly ${fmt(br)} req/s; through \`broker run --mode https\` (TLS + key check + proxy) ${fmt(gr)} req/s → **${fmt((gr / br) * 100)} %** (goal ≥ 70 % → ${gr / br >= 0.7 ? 'met' : 'NOT met'}). Ceiling, TLS off + bare pipe with no parsing or check: ${fmt(cr)} req/s (${fmt((cr / br) * 100)} %); the gate reaches ${fmt((gr / cr) * 100)} % of it.`,
    );
    hrun.kill('SIGTERM');

    // The same comparison with an app like the ones people put behind the broker: Python's
    // http.server (Jupyter and TensorBoard are Python too), keep-alive, over TLS itself vs
    // through the gate. Here the app, not the gate, sets the pace.
    if (!have('python3')) line('\nHTTPS with a Python app: skipped (python3 is not installed)');
    else {
      const pyapp = join(ROOT, 'bench', 'gate', 'pyapp.py');
      const {
        proc: prun,
        port: pgport,
        key: pkey,
      } = await brokerRun(d, owner, 'gpy', https, ['python3', pyapp, '{app_port}']);
      const pport = await freePort();
      children.push(
        spawn('python3', [pyapp, String(pport), join(tmp, 'c.pem'), join(tmp, 'k.pem')], {
          stdio: 'ignore',
        }),
      );
      await sleep(800);
      const popts = { ...opts, headers: { Authorization: `Bearer ${pkey}` } };
      const pb = [],
        pg = [];
      for (let i = 0; i < 3; i++) {
        pb.push(wrk(`https://127.0.0.1:${pport}/`, popts));
        pg.push(wrk(`https://127.0.0.1:${pgport}/`, popts));
      }
      for (const r of [...pb, ...pg]) if (r.errors) throw new Error(`wrk errors: ${r.errors}`);
      const pbr = median(pb.map((r) => r.rps)),
        pgr = median(pg.map((r) => r.rps));
      results.httpsPython = { directRps: pbr, gateRps: pgr, ratio: pgr / pbr };
      line(
        `\nHTTPS with a Python app (http.server, keep-alive; wrk c=10, median of 3): over TLS directly ${fmt(pbr)} req/s; through \`broker run --mode https\` ${fmt(pgr)} req/s → **${fmt((pgr / pbr) * 100)} %** (goal ≥ 70 % → ${pgr / pbr >= 0.7 ? 'met' : 'NOT met'})`,
      );
      prun.kill('SIGTERM');
    }
  }
} finally {
  // SIGTERM first: `broker run` passes it on to its app; SIGKILL would orphan the app.
  await Promise.all(
    children.map(async (c) => {
      if (c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      const timer = setTimeout(() => c.kill('SIGKILL'), 3000);
      await gone;
      clearTimeout(timer);
    }),
  );
  await d.stop();
}
line('\n' + JSON.stringify(results));

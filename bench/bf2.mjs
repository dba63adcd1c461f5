// BF-2 (SECURITY.md, P1): during a brute-force attack of 10,000 wrong keys against service A,
// verify latency for another service B stays within +20 % p99. One daemon, one run:
//   baseline  — service B's server verifies its client's (right) key: BF2_REQUESTS sequential
//               requests at c=1, then the same number at c=10, over a keep-alive https.Agent
//               (what the server SDK does);
//   attack    — the same measurement while a forked attacker (bench/bf2/attacker.mjs) sends fresh
//               wrong keys to service A as fast as the daemon answers, on BF2_ATTACK_CONNS
//               keep-alive connections, until it has sent ≥ 10,000 and B's measurement is done.
// The two alternate (ABBA…, BF2_ROUNDS rounds each; the machine is shared and noisy) and the
// table reports medians over rounds: p99 under attack / p99 baseline, goal ≤ 1.20.
//
// Why the attacker is a separate process: in the measurer's process its request loop would share
// the event loop, so B's responses would wait behind attacker callbacks and its latency would
// count client-side queueing the daemon never caused. Forked, it shares only the CPU with the
// measurer and the daemon (a real attacker on another machine would not even share that). All
// three share this machine's cores; a second table reports each one's CPU share, and that of
// other processes, so a reader can tell daemon saturation from CPU starvation. BF2_CPU_PROF=DIR writes the daemon's --cpu-prof there and
// prints where its time went.
import { execFileSync, fork } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { createServer } from 'node:net';
import { availableParallelism, cpus, loadavg } from 'node:os';
import { basename, join } from 'node:path';
import { ROOT, fmt, median, startDaemon } from './lib.mjs';

const N = Number(process.env.BF2_REQUESTS ?? 3000);
const WARMUP = 300;
const ROUNDS = Number(process.env.BF2_ROUNDS ?? 3);
const CONNS = Number(process.env.BF2_ATTACK_CONNS ?? 8);
// BF2_TARPIT=off runs the daemon without its tarpit (verifyTarpitMs 0): every wrong key is then
// answered at once and the attack saturates the daemon. With the tarpit (the default), an attacker
// gets about one answer per connection per second once A is in backoff, so 10,000 keys would take
// hours on 8 connections: the attack then lasts as long as B's measurement.
const TARPIT = process.env.BF2_TARPIT ?? 'on';
const MIN_WRONG_KEYS = Number(process.env.BF2_MIN_KEYS ?? (TARPIT === 'off' ? 10_000 : 0));
const CONCURRENCY = [1, 10];
const GOAL = 1.2;
const PROF_DIR = process.env.BF2_CPU_PROF;
const line = (s = '') => process.stdout.write(s + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let clockTicks = 100;
try {
  clockTicks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;
} catch {
  // not Linux-like: keep 100
}
/** CPU seconds a process has used so far (Linux /proc); null where there is no /proc. */
function cpuSeconds(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / clockTicks; // utime, stime
  } catch {
    return null;
  }
}

/** CPU seconds the whole machine has spent busy (all processes; Linux /proc/stat), or null. */
function machineBusySeconds() {
  try {
    const f = readFileSync('/proc/stat', 'utf8')
      .split('\n')[0]
      .trim()
      .split(/\s+/)
      .slice(1)
      .map(Number);
    // user nice system idle iowait irq softirq steal …: busy = all but idle, iowait and steal
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / clockTicks;
  } catch {
    return null;
  }
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)];
}

/** One verify; resolves with its latency in ms. Anything but 200 {"valid":true} is an error. */
function verifyOnce(d, agent, token, key) {
  const body = JSON.stringify({ key });
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const req = request(
      new URL('/v1/verify', d.url),
      {
        method: 'POST',
        agent,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => {
          const ms = Number(process.hrtime.bigint() - t0) / 1e6;
          let valid = false;
          try {
            valid = res.statusCode === 200 && JSON.parse(text).valid === true;
          } catch {
            // not JSON: refused below
          }
          if (!valid)
            reject(new Error(`service B's right key was refused: ${res.statusCode} ${text}`));
          else resolve(ms);
        });
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** `n` verifies of B's key at concurrency `c` (after WARMUP unmeasured ones); latency stats. */
async function measure(d, b, c, n) {
  const agent = new Agent({ ca: d.ca, keepAlive: true, maxSockets: c });
  const run = async (count, samples) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: c }, async () => {
        while (next < count) {
          next++;
          const ms = await verifyOnce(d, agent, b.token, b.key);
          samples?.push(ms);
        }
      }),
    );
  };
  await run(WARMUP);
  const samples = [];
  const cpu0 = process.cpuUsage();
  const daemon0 = cpuSeconds(d.pid);
  const machine0 = machineBusySeconds();
  const t0 = process.hrtime.bigint();
  await run(n, samples);
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const daemon1 = cpuSeconds(d.pid);
  const machine1 = machineBusySeconds();
  const cpu = process.cpuUsage(cpu0);
  agent.destroy();
  samples.sort((x, y) => x - y);
  return {
    p50: percentile(samples, 0.5),
    p99: percentile(samples, 0.99),
    max: samples[samples.length - 1],
    perSecond: n / seconds,
    seconds,
    daemonCpu: daemon0 === null ? null : (daemon1 - daemon0) / seconds,
    measurerCpu: (cpu.user + cpu.system) / 1e6 / seconds,
    machineCpu: machine0 === null ? null : (machine1 - machine0) / seconds,
  };
}

/** Run `fn` while the forked attacker brute-forces service A; returns fn's result and its counts. */
async function underAttack(d, a, fn) {
  const child = fork(join(ROOT, 'bench', 'bf2', 'attacker.mjs'), [], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const next = (type) =>
    new Promise((resolve, reject) => {
      const onMessage = (m) => {
        if (m.type !== type) return;
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m);
      };
      const onExit = (code) => reject(new Error(`attacker exited (${code}) before '${type}'`));
      child.on('message', onMessage);
      child.once('exit', onExit);
    });
  const count = async () => {
    const p = next('count');
    child.send({ type: 'count' });
    return (await p).answered;
  };
  try {
    const ready = next('ready');
    child.send({
      type: 'start',
      url: d.url,
      ca: d.ca,
      token: a.token,
      conns: CONNS,
      // Past the backoff threshold (30) before measuring; with the tarpit, answers are slow.
      warm: TARPIT === 'off' ? 500 : 30 + CONNS,
    });
    await ready;
    const before = await count();
    const result = await fn();
    const during = (await count()) - before;
    // The attack is ≥ MIN_WRONG_KEYS keys whatever the measurement took.
    while ((await count()) < MIN_WRONG_KEYS) await sleep(50);
    const done = next('done');
    child.send({ type: 'stop' });
    return { result, attack: { ...(await done), duringMeasurement: during } };
  } finally {
    child.kill();
  }
}

async function register(d, name) {
  const reg = await d.api('POST', '/v1/services', d.token, { name, tunnel: 'none' });
  if (reg.status !== 201)
    throw new Error(`register ${name}: ${reg.status} ${JSON.stringify(reg.body)}`);
  const { owner, port } = reg.body.service;
  const listener = createServer((s) => s.end());
  await new Promise((r) => listener.listen(port, '127.0.0.1', r));
  const token = reg.body.serviceToken;
  const ready = await d.api('POST', `/v1/services/${owner}/${name}/ready`, token, {});
  if (ready.status !== 200) throw new Error(`ready ${name}: ${ready.status}`);
  const minted = await d.api('POST', `/v1/services/${owner}/${name}/keys`, d.token, {});
  if (minted.status !== 201) throw new Error(`mint key for ${name}: ${minted.status}`);
  return { name, token, key: minted.body.key, listener };
}

/** Self time of the daemon's profile by function and by file, top `n` each. */
function profileSummary(dir, n = 12) {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) return null;
  const prof = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  const byId = new Map(prof.nodes.map((x) => [x.id, x]));
  const hits = new Map();
  for (const id of prof.samples) hits.set(id, (hits.get(id) ?? 0) + 1);
  const fns = new Map(),
    files = new Map();
  for (const [id, count] of hits) {
    const { functionName, url, lineNumber } = byId.get(id).callFrame;
    const where = url ? basename(url) : '(native)';
    const fn = `${functionName || '(anonymous)'} ${where}:${lineNumber + 1}`;
    fns.set(fn, (fns.get(fn) ?? 0) + count);
    const group = url.includes('/node_modules/')
      ? url.split('/node_modules/').pop().split('/')[0]
      : url.includes('/dist/')
        ? 'dist/' + url.split('/dist/').pop()
        : url.startsWith('node:')
          ? url
          : functionName.startsWith('(')
            ? functionName
            : '(native)';
    files.set(group, (files.get(group) ?? 0) + count);
  }
  const total = prof.samples.length;
  const top = (m) =>
    [...m]
      .sort((x, y) => y[1] - x[1])
      .slice(0, n)
      .map(([k, v]) => ({ what: k, share: v / total }));
  return { file: join(dir, file), byFunction: top(fns), byFile: top(files) };
}

const results = {
  context: {
    cores: availableParallelism(),
    cpu: cpus()[0]?.model,
    node: process.version,
    loadavgAtStart: loadavg().map((x) => Math.round(x * 100) / 100),
    requests: N,
    rounds: ROUNDS,
    attackConnections: CONNS,
  },
};
line(
  `# BF-2: verify latency for service B while service A is brute-forced (${new Date().toISOString()}, node ${process.version})\n`,
);
line(
  `context: ${results.context.cores} cores (${results.context.cpu}), load average ${results.context.loadavgAtStart.join(' ')} at start; ` +
    `the daemon, the attacker and this measurer share them. ${N} measured verifies per point (each after ${WARMUP} unmeasured ones, and one unrecorded warm-up round first), ` +
    `${ROUNDS} rounds each of baseline and attack (alternating), attacker on ${CONNS} keep-alive connections; ` +
    `tarpit ${TARPIT === 'off' ? 'OFF (verifyTarpitMs 0)' : 'on (the default: 1 s, ≤ 256 held)'}.\n`,
);

const configArgs = [];
if (TARPIT === 'off') {
  const { mkdtempSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const file = join(mkdtempSync(join(tmpdir(), 'bf2-config-')), 'config.json');
  writeFileSync(file, JSON.stringify({ verifyTarpitMs: 0 }), { mode: 0o600 });
  configArgs.push('--config', file);
}
const d = await startDaemon(configArgs, {
  nodeArgs: PROF_DIR ? ['--cpu-prof', '--cpu-prof-dir', PROF_DIR] : [],
});
const listeners = [];
try {
  const a = await register(d, 'bf2-a');
  const b = await register(d, 'bf2-b');
  listeners.push(a.listener, b.listener);
  // Sanity: B's key is valid for B; a wrong key is not valid for A.
  if (!(await d.api('POST', '/v1/verify', b.token, { key: b.key })).body?.valid)
    throw new Error('service B key does not verify');
  if ((await d.api('POST', '/v1/verify', a.token, { key: b.key })).body?.valid !== false)
    throw new Error("B's key must be invalid for A");

  const measureAll = async (n) => {
    const r = {};
    for (const c of CONCURRENCY) r[c] = await measure(d, b, c, n);
    return r;
  };
  const rounds = { baseline: [], attack: [] };
  const attacks = [];
  const attackRound = async (n) => {
    const { result, attack } = await underAttack(d, a, () => measureAll(n));
    if (attack.successes > 0)
      throw new Error(`a wrong key verified as valid ${attack.successes} times`);
    await sleep(500); // let the daemon settle (audit flush, log buffer) before the next phase
    return { result, attack };
  };
  // Warm-up, not recorded: both paths through the daemon's JIT (the first few thousand verifies
  // run several times slower) and the limiter into its steady state (A blocked, 429s).
  await measureAll(N);
  const warm = await attackRound(Math.ceil(N / 3));
  attacks.push(warm.attack);
  for (let i = 0; i < ROUNDS; i++) {
    // ABBA…: neither phase always runs first, so slow drift of the shared machine cancels out.
    for (const phase of i % 2 === 0 ? ['baseline', 'attack'] : ['attack', 'baseline']) {
      if (phase === 'baseline') rounds.baseline.push(await measureAll(N));
      else {
        const { result, attack } = await attackRound(N);
        rounds.attack.push(result);
        attacks.push(attack);
      }
    }
    const last = (k) => rounds[k][rounds[k].length - 1];
    process.stderr.write(
      `bf2 round ${i + 1}/${ROUNDS}: ` +
        CONCURRENCY.map(
          (c) =>
            `c=${c} p99 ${fmt(last('baseline')[c].p99, 2)} → ${fmt(last('attack')[c].p99, 2)} ms`,
        ).join(', ') +
        `; attacker ${fmt(attacks[attacks.length - 1].perSecond)}/s\n`,
    );
  }

  const med = (k, c, f) => {
    const xs = rounds[k].map((r) => r[c][f]);
    return xs.includes(null) ? null : median(xs);
  };
  line(
    '| c | baseline p50 / p99 ms | under attack p50 / p99 ms | **p99 ratio** (medians) | p99 ratio per round | B verifies/s baseline → attack |',
  );
  line('|---|---|---|---|---|---|');
  results.verify = {};
  for (const c of CONCURRENCY) {
    const stat = (k) =>
      Object.fromEntries(
        ['p50', 'p99', 'max', 'perSecond', 'daemonCpu', 'measurerCpu', 'machineCpu'].map((f) => [
          f,
          med(k, c, f),
        ]),
      );
    const base = stat('baseline'),
      att = stat('attack');
    const ratio = att.p99 / base.p99;
    const perRound = rounds.attack.map((r, i) => r[c].p99 / rounds.baseline[i][c].p99);
    results.verify[c] = {
      baseline: base,
      attack: att,
      p99Ratio: ratio,
      perRoundP99Ratios: perRound,
    };
    line(
      `| ${c} | ${fmt(base.p50, 2)} / ${fmt(base.p99, 2)} | ${fmt(att.p50, 2)} / ${fmt(att.p99, 2)} | **${fmt(ratio, 2)}×** | ${perRound.map((x) => fmt(x, 2)).join(', ')} | ${fmt(base.perSecond)} → ${fmt(att.perSecond)} |`,
    );
  }
  const measured = attacks.slice(1); // not the warm-up attack
  const sum = (f) => measured.reduce((s, x) => s + x[f], 0);
  const other = {};
  for (const x of measured)
    for (const [k, v] of Object.entries(x.other)) other[k] = (other[k] ?? 0) + v;
  results.attacker = {
    wrongKeys: sum('answered'),
    perRound: measured.map((x) => x.answered),
    duringMeasurement: measured.map((x) => x.duringMeasurement),
    perSecond: median(measured.map((x) => x.perSecond)),
    invalid200: sum('invalid'),
    rateLimited429: sum('rateLimited'),
    successes: sum('successes'),
    other,
    reconnects: sum('reconnects'),
    retryAfterSeconds: [
      Math.min(...measured.map((x) => x.retryAfterMin ?? Infinity)),
      Math.max(...measured.map((x) => x.retryAfterMax)),
    ],
    cpu: median(measured.map((x) => x.cpuShare)),
    warmUp: {
      wrongKeys: attacks[0].answered,
      invalid200: attacks[0].invalid,
      rateLimited429: attacks[0].rateLimited,
      successes: attacks[0].successes,
    },
  };
  const at = results.attacker;
  line('');
  line(
    `attacker (service A, forked, ${CONNS} connections): ${fmt(at.wrongKeys)} wrong keys in ${ROUNDS} rounds ` +
      `(${at.perRound.map((x) => fmt(x)).join(', ')}; of them while B was measured: ${at.duringMeasurement.map((x) => fmt(x)).join(', ')}), ` +
      `${fmt(at.perSecond)}/s median; answers: ${fmt(at.invalid200)} × 200 valid:false, ${fmt(at.rateLimited429)} × 429 rate_limited ` +
      `(Retry-After ${at.retryAfterSeconds.join('–')} s)${Object.keys(other).length ? `, other: ${JSON.stringify(other)}` : ''}; ` +
      `**${at.successes} successes** (must be 0). Warm-up attack before the rounds: ${fmt(at.warmUp.wrongKeys)} more ` +
      `(${at.warmUp.invalid200} × 200 valid:false — the first 30 failures of a window — then 429s; ${at.warmUp.successes} successes).`,
  );
  line('');
  line(
    `CPU while B was measured, in cores (this machine has ${results.context.cores}; medians of rounds):`,
  );
  line('| phase | c | daemon | measurer | attacker | whole machine | everything else |');
  line('|---|---|---|---|---|---|---|');
  const cores = (x) => (x === null || x === undefined ? 'n/a' : fmt(x, 2));
  for (const phase of ['baseline', 'attack'])
    for (const c of CONCURRENCY) {
      const s = results.verify[c][phase];
      const att = phase === 'attack' ? at.cpu : 0;
      const rest =
        s.machineCpu === null || s.daemonCpu === null
          ? null
          : Math.max(0, s.machineCpu - s.daemonCpu - s.measurerCpu - att);
      line(
        `| ${phase} | ${c} | ${cores(s.daemonCpu)} | ${cores(s.measurerCpu)} | ${phase === 'attack' ? cores(att) : '–'} | ${cores(s.machineCpu)} | ${cores(rest)} |`,
      );
    }
  line(
    '(attacker: its median over whole attack rounds; "everything else" is other processes on the shared machine, approximate)',
  );
  const foreign = median(
    rounds.baseline.flatMap((r) =>
      CONCURRENCY.map((c) =>
        r[c].machineCpu === null ? 0 : r[c].machineCpu - r[c].daemonCpu - r[c].measurerCpu,
      ),
    ),
  );
  results.context.foreignCpuDuringBaseline = foreign;
  if (foreign > 0.25)
    line(
      `**warning**: other processes kept ≈ ${fmt(foreign, 2)} cores busy while the baseline was measured; ` +
        'on a machine this shared the ratio measures the neighbours as much as the daemon — rerun when it is quieter.',
    );
  results.context.loadavgAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  const met = CONCURRENCY.every((c) => results.verify[c].p99Ratio <= GOAL);
  results.goalMet = met;
  line('');
  line(
    `goal: p99 under attack ≤ ${GOAL.toFixed(2)}× baseline at c=${CONCURRENCY.join(' and c=')} → ${met ? 'met' : 'NOT met'} ` +
      `(load average at end ${results.context.loadavgAtEnd.join(' ')})`,
  );
} finally {
  for (const l of listeners) l.close();
  await d.stop();
}
if (PROF_DIR) {
  const p = profileSummary(PROF_DIR);
  if (p) {
    results.profile = p;
    line(`\ndaemon CPU profile (whole run): ${p.file}`);
    line(
      'self time by function: ' +
        p.byFunction.map((x) => `${x.what} ${fmt(x.share * 100, 1)} %`).join('; '),
    );
    line(
      'self time by file/package: ' +
        p.byFile.map((x) => `${x.what} ${fmt(x.share * 100, 1)} %`).join('; '),
    );
  }
}
line('\n' + JSON.stringify(results));

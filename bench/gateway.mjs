// node bench/gateway.mjs — the SSH gateway's data path, against baselines run alongside:
//   1. bulk throughput (BENCH_GATEWAY_BYTES, default 1 GiB; 128 MiB with BENCH_QUICK=1), client →
//      sink, for raw loopback TCP (the limit), a private OpenSSH `sshd` with stock `ssh -L`
//      (chacha20-poly1305 and aes128-gcm), stock `ssh -L` through the gateway (to a direct service
//      and, end to end, to a service behind the SDK's reverse tunnel), `broker tunnel --inject-key`
//      (SDK client forward + SDK reverse tunnel) and the SDK reverse tunnel alone;
//   2. time to first echoed byte on a new connection through an already-running client
//      (connect → key line → OK → echo), gateway vs sshd `ssh -L`, median of ~30;
//   3. cold setup to the first echoed byte (`ssh -W`, SDK connect(), `broker connect`) vs sshd.
// Rounds are interleaved (BENCH_GATEWAY_ROUNDS, default 3) and medians reported; the host is noisy,
// the ratios are what to read. Processes: daemon, sink (own process), service (registerService,
// own process), stock ssh / broker tunnel clients, sshd; this process only generates load.
import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { BIN, ROOT, fmt, have, median, startDaemon } from './lib.mjs';

const QUICK = process.env.BENCH_QUICK === '1';
const BYTES = Number(process.env.BENCH_GATEWAY_BYTES ?? (QUICK ? 128 : 1024) * 2 ** 20);
const ROUNDS = Number(process.env.BENCH_GATEWAY_ROUNDS ?? (QUICK ? 1 : 3));
const LAT_TRIES = QUICK ? 10 : 30;
const COLD_TRIES = QUICK ? 4 : 10;
const TRANSFER_TIMEOUT_MS = Math.max(60_000, (BYTES / 2 ** 20) * 200); // ≥ 5 MiB/s or fail
const CHACHA = 'chacha20-poly1305@openssh.com';
const AES = 'aes128-gcm@openssh.com';
const CIPHERS = [CHACHA, AES];
const short = (c) => (c === CHACHA ? 'chacha20' : c === AES ? 'aes128-gcm' : c);
const MiB = 2 ** 20;

const line = (s = '') => process.stdout.write(s + '\n');
const note = (s) => process.stderr.write(`[gateway bench] ${s}\n`);
const require = createRequire(join(ROOT, 'package.json'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const hr = () => process.hrtime.bigint();
const msSince = (t0) => Number(hr() - t0) / 1e6;

const children = [];
function track(proc, group = false) {
  children.push({ proc, group });
  return proc;
}
function killAll() {
  for (const { proc, group } of children.reverse()) {
    if (proc.exitCode !== null || proc.signalCode !== null || !proc.pid) continue;
    try {
      process.kill(group ? -proc.pid : proc.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/** Collects a stream's bytes; take(n) resolves with the next n. */
class Reader {
  constructor(stream) {
    this.buf = Buffer.alloc(0);
    this.done = false;
    this.want = null;
    stream.on('data', (c) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, c]) : c;
      this.check();
    });
    const end = () => {
      this.done = true;
      this.check();
    };
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', end);
  }
  check() {
    if (!this.want) return;
    const { n, resolve, reject } = this.want;
    if (this.buf.length >= n) {
      this.want = null;
      const out = this.buf.subarray(0, n);
      this.buf = this.buf.subarray(n);
      resolve(out.toString('latin1'));
    } else if (this.done) {
      this.want = null;
      reject(new Error(`stream ended; got ${JSON.stringify(this.buf.toString('latin1'))}`));
    }
  }
  take(n) {
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.check();
    });
  }
}

const expectStr = async (p, want) => {
  const got = await p;
  if (got !== want) throw new Error(`expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
};

function withTimeout(p, ms, what, onTimeout) {
  let t;
  return Promise.race([
    p,
    new Promise((_, reject) => {
      t = setTimeout(() => {
        onTimeout?.();
        reject(new Error(`${what}: timed out after ${ms} ms`));
      }, ms);
    }),
  ]).finally(() => clearTimeout(t));
}

const CHUNK = Buffer.alloc(256 * 1024, 0x61);

// CPU accounting from /proc (Linux): where the cycles of one transfer go, per process (tree).
const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();
function cpuSecondsOf(pid) {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return 0;
  }
}
function descendants(pid) {
  const out = [pid];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`))
      for (const c of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' '))
        if (c.trim()) out.push(...descendants(Number(c)));
  } catch {
    /* gone */
  }
  return out;
}
/** {name: seconds} for named process trees, plus this process. */
function cpuSnapshot(groups) {
  const out = {};
  for (const [name, pid] of Object.entries(groups))
    out[name] = pid ? descendants(pid).reduce((a, p) => a + cpuSecondsOf(p), 0) : 0;
  const u = process.cpuUsage();
  out.driver = (u.user + u.system) / 1e6;
  return out;
}
/** The daemon's pid: our own child whose command line names its data directory. */
function pidByCmdline(needle) {
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, 'utf8');
      if (cmd.includes(needle) && cmd.includes('serve')) return Number(e);
    } catch {
      /* gone */
    }
  }
  return null;
}

/** Stream bytes through port to the sink; MiB/s of application bytes (timer starts after 'R'). */
async function transfer(port, bytes, key, cpuGroups = null) {
  const s = netConnect({ host: '127.0.0.1', port });
  s.setNoDelay(true);
  const run = async () => {
    await once(s, 'connect');
    const r = new Reader(s);
    if (key) {
      s.write(key + '\n');
      await expectStr(r.take(3), 'OK\n');
    }
    s.write('S' + String(bytes).padStart(15, '0'));
    await expectStr(r.take(1), 'R');
    const c0 = cpuGroups && cpuSnapshot(cpuGroups);
    const t0 = hr();
    let left = bytes;
    while (left > 0) {
      const n = Math.min(left, CHUNK.length);
      left -= n;
      if (!s.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))) await once(s, 'drain');
    }
    await expectStr(r.take(1), 'D');
    const mibs = bytes / MiB / (Number(hr() - t0) / 1e9);
    if (!cpuGroups) return mibs;
    const c1 = cpuSnapshot(cpuGroups);
    const perGiB = Object.fromEntries(
      Object.keys(c1).map((k) => [k, ((c1[k] - c0[k]) * 2 ** 30) / bytes]),
    );
    return { mibs, perGiB };
  };
  try {
    return await withTimeout(run(), TRANSFER_TIMEOUT_MS, `transfer via :${port}`);
  } finally {
    s.destroy();
  }
}

/** New TCP connection → [key line → OK] → 'E' → first echoed byte; ms. */
async function firstByte(port, key, timeoutMs = 5000) {
  const t0 = hr();
  const s = netConnect({ host: '127.0.0.1', port });
  s.setNoDelay(true);
  const run = async () => {
    await once(s, 'connect');
    const r = new Reader(s);
    if (key) {
      s.write(key + '\n');
      await expectStr(r.take(3), 'OK\n');
    }
    s.write('E');
    await expectStr(r.take(1), 'E');
    return msSince(t0);
  };
  try {
    return await withTimeout(run(), timeoutMs, `first byte via :${port}`);
  } finally {
    s.destroy();
  }
}

/** Same dialog over any duplex-ish pair (ssh -W stdio, an SSH channel). */
async function dialog(writable, readable, key) {
  const r = new Reader(readable);
  if (key) {
    writable.write(key + '\n');
    await expectStr(r.take(3), 'OK\n');
  }
  writable.write('E');
  await expectStr(r.take(1), 'E');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });
}

async function until(pred, ms, what) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      if (await pred()) return;
    } catch (e) {
      if (e.fatal) throw e;
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

function waitExit(proc, ms = 3000) {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return Promise.race([once(proc, 'exit'), sleep(ms)]);
}

// ------------------------------------------------------------------------------------------------

const results = {
  bindingAvailable: null,
  bytes: BYTES,
  rounds: ROUNDS,
  throughputMiBs: {},
  ratios: {},
  firstByteMs: {},
  coldMs: {},
  negotiated: {},
  goals: {},
  skipped: {},
};

line(
  `## SSH gateway: bulk throughput and time to first byte (${new Date().toISOString()}, node ${process.version}, ${fmt(BYTES / MiB)} MiB × ${ROUNDS} interleaved rounds)\n`,
);

const crypto = require('ssh2/lib/protocol/crypto');
results.bindingAvailable = crypto.bindingAvailable === true;
line(
  `ssh2 ${require('ssh2/package.json').version} native crypto binding (sshcrypto.node): **${results.bindingAvailable ? 'available' : 'MISSING — ssh2 paths will run ≈ 100 MiB/s (PERFORMANCE.md fact 2)'}**`,
);
line(
  `ssh2 client default cipher order: ${require('ssh2/lib/protocol/constants').DEFAULT_CIPHER.slice(0, 2).join(', ')}, …\n`,
);

const tmp = mkdtempSync(join(tmpdir(), 'bench-gw-'));
const d = await startDaemon();
let sshdProc = null;
try {
  await main();
} finally {
  killAll();
  if (sshdProc) await waitExit(sshdProc);
  await d.stop();
}
line('\n' + JSON.stringify(results));
process.exit(0);

async function main() {
  const caFile = join(tmp, 'ca.pem');
  writeFileSync(caFile, d.ca);
  const health = (await d.api('GET', '/v1/health', d.token)).body;
  const g = health.gateway;
  if (!g) throw new Error('the daemon runs no SSH gateway');
  const owner = (await d.api('GET', '/v1/whoami', d.token)).body.principal.name;
  const knownGw = join(tmp, 'known_hosts_gw');
  writeFileSync(knownGw, `[${g.host}]:${g.port} ${g.hostKey}\n`);
  const askpass = join(tmp, 'askpass');
  writeFileSync(askpass, '#!/bin/sh\nprintf "%s\\n" "$BROKER_SSH_PASSWORD"\n');
  chmodSync(askpass, 0o700);

  // --- services: "bench-direct" (tunnel none: the gateway dials it) and "bench-tun" (reverse tunnel)
  const regD = await d.api('POST', '/v1/services', d.token, {
    name: 'bench-direct',
    tunnel: 'none',
  });
  const regT = await d.api('POST', '/v1/services', d.token, { name: 'bench-tun', tunnel: 'ssh' });
  if (regD.status !== 201 || regT.status !== 201)
    throw new Error(`register: ${JSON.stringify([regD.body, regT.body])}`);
  const direct = regD.body.service;
  const tun = regT.body.service;

  const sink = track(
    spawn(
      process.execPath,
      [
        join(ROOT, 'bench', 'gateway', 'sink.mjs'),
        JSON.stringify({
          url: d.url,
          ca: d.ca,
          directHost: direct.host,
          directPort: direct.port,
          directToken: regD.body.serviceToken,
          tunToken: regT.body.serviceToken,
        }),
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    ),
  );
  const ports = JSON.parse(
    await withTimeout(
      new Promise((r) => createInterface({ input: sink.stdout }).once('line', r)),
      15_000,
      'sink start',
    ),
  );
  const rd = await d.api(
    'POST',
    `/v1/services/${owner}/bench-direct/ready`,
    regD.body.serviceToken,
    {},
  );
  if (rd.status !== 200) throw new Error(`ready: ${rd.status} ${JSON.stringify(rd.body)}`);

  const svcProc = track(
    spawn(
      process.execPath,
      [
        join(ROOT, 'bench', 'gateway', 'service.mjs'),
        JSON.stringify({
          url: d.url,
          ca: d.ca,
          userToken: d.token,
          service: tun,
          serviceToken: regT.body.serviceToken,
          targetPort: ports.gatedTun,
        }),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    ),
  );
  let svcOut = '';
  let svcErr = '';
  svcProc.stdout.on('data', (c) => (svcOut += c));
  svcProc.stderr.on('data', (c) => (svcErr += c));
  await until(() => svcOut.includes('state ready'), 20_000, `the SDK reverse tunnel (${svcErr})`);
  results.negotiated.sdkReverseTunnel = JSON.parse(
    /BENCH_NEGOTIATED (.*)/.exec(svcErr)?.[1] ?? 'null',
  );

  const keyOf = async (name) => {
    const r = await d.api('POST', `/v1/services/${owner}/${name}/keys`, d.token, {});
    if (!r.body?.key) throw new Error(`key for ${name}: ${JSON.stringify(r.body)}`);
    return r.body.key;
  };
  const keyD = await keyOf('bench-direct');
  const keyT = await keyOf('bench-tun');
  // sanity: both gates work on their own
  await firstByte(ports.gatedTun, keyT);
  await firstByte(direct.port, keyD);

  // --- stock ssh helpers
  const sshCommon = (known) => [
    '-F',
    'none',
    '-o',
    `UserKnownHostsFile=${known}`,
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    'ExitOnForwardFailure=yes',
    '-o',
    'LogLevel=ERROR',
  ];
  const gwArgs = [
    ...sshCommon(knownGw),
    '-p',
    String(g.port),
    '-o',
    'PreferredAuthentications=password',
    '-o',
    'PubkeyAuthentication=no',
    '-o',
    'BatchMode=no',
  ];
  const sshEnv = {
    PATH: process.env.PATH,
    HOME: tmp,
    BROKER_SSH_PASSWORD: d.token,
    SSH_ASKPASS: askpass,
    SSH_ASKPASS_REQUIRE: 'force',
    DISPLAY: 'none',
  };
  const spawnSsh = (args, stdio = ['ignore', 'ignore', 'pipe']) => {
    const p = track(spawn('ssh', args, { env: sshEnv, stdio, detached: true }), true);
    p.errText = '';
    p.stderr?.on('data', (c) => (p.errText += c));
    return p;
  };

  // --- private sshd
  let sshd = null;
  const sshdSkip = (why) => {
    results.skipped.sshd = why;
    note(`sshd skipped: ${why}`);
  };
  if (!existsSync('/usr/sbin/sshd')) sshdSkip('/usr/sbin/sshd not found');
  else if (!have('ssh-keygen')) sshdSkip('ssh-keygen not found');
  else {
    try {
      sshd = await startSshd();
    } catch (e) {
      sshdSkip(e.message.split('\n').slice(0, 3).join(' '));
    }
  }

  async function startSshd() {
    const dir = join(tmp, 'sshd');
    mkdirSync(dir);
    for (const k of ['host', 'client'])
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, k)]);
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client.pub')));
    // sshd's privilege-separation directory (what the Debian init script creates at boot).
    if (!existsSync('/run/sshd') && process.getuid?.() === 0) {
      mkdirSync('/run/sshd', { mode: 0o755 });
      note('created /run/sshd (sshd privilege-separation directory)');
    }
    const user = process.env.USER || execFileSync('id', ['-un'], { encoding: 'utf8' }).trim();
    let lastErr = '';
    for (let attempt = 0; attempt < 5; attempt++) {
      const port = 30000 + Math.floor(Math.random() * 20000);
      const cfg = join(dir, 'sshd_config');
      writeFileSync(
        cfg,
        [
          `Port ${port}`,
          'ListenAddress 127.0.0.1',
          `HostKey ${join(dir, 'host')}`,
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'PubkeyAuthentication yes',
          `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
          'StrictModes no',
          'UsePAM no',
          'PermitRootLogin prohibit-password',
          'AllowTcpForwarding yes',
          `PidFile ${join(dir, 'sshd.pid')}`,
          'LogLevel ERROR',
          '',
        ].join('\n'),
      );
      const proc = track(
        spawn('/usr/sbin/sshd', ['-D', '-e', '-f', cfg], {
          stdio: ['ignore', 'ignore', 'pipe'],
          detached: true,
        }),
        true,
      );
      let err = '';
      proc.stderr.on('data', (c) => (err += c));
      const known = join(dir, 'known_hosts');
      writeFileSync(
        known,
        `[127.0.0.1]:${port} ${readFileSync(join(dir, 'host.pub'), 'utf8').split(' ').slice(0, 2).join(' ')}\n`,
      );
      const up = await (async () => {
        for (let i = 0; i < 50; i++) {
          if (proc.exitCode !== null) return false;
          const ok = await new Promise((r) => {
            const s = netConnect({ host: '127.0.0.1', port }, () => (s.destroy(), r(true)));
            s.on('error', () => r(false));
          });
          if (ok) return true;
          await sleep(100);
        }
        return false;
      })();
      if (up) {
        sshdProc = proc;
        const args = [
          ...sshCommon(known),
          '-p',
          String(port),
          '-i',
          join(dir, 'client'),
          '-o',
          'IdentitiesOnly=yes',
          '-o',
          'PreferredAuthentications=publickey',
          '-o',
          'BatchMode=yes',
        ];
        return { port, args, target: `${user}@127.0.0.1`, proc, err: () => err };
      }
      lastErr = err.trim() || `exit ${proc.exitCode}`;
      try {
        process.kill(-proc.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      if (!/Address already in use|Bind to port/.test(lastErr)) break;
    }
    throw new Error(`sshd did not start: ${lastErr}`);
  }

  // --- long-lived forwarders
  const fwd = {}; // name → { port, key, label, cipher, group }
  const startL = async (name, baseArgs, target, forwards, cipher) => {
    const specs = [];
    for (const f of forwards) specs.push({ ...f, lp: await freePort() });
    const p = spawnSsh([
      ...baseArgs,
      '-N',
      '-c',
      cipher,
      ...specs.flatMap((f) => ['-L', `${f.lp}:${f.host}:${f.port}`]),
      target,
    ]);
    for (const f of specs) {
      await until(
        async () => {
          if (p.exitCode !== null)
            throw Object.assign(new Error(`ssh exited ${p.exitCode}: ${p.errText.trim()}`), {
              fatal: true,
            });
          return (await firstByte(f.lp, f.key, 2000)) > 0;
        },
        15_000,
        `${name} ${f.name}`,
      );
      fwd[`${name}.${f.name}`] = { port: f.lp, key: f.key, cipher, clientPid: p.pid };
    }
    return p;
  };
  // OpenSSH doing the gateway's topology: a stock `ssh -R` client plays the SDK server side
  // (reverse leg with the cipher the SDK negotiated), sshd plays the gateway.
  let sshdRev = null;
  const revCipher = results.negotiated.sdkReverseTunnel?.cs ?? AES;
  const sshdRevCipher = CIPHERS.includes(revCipher) ? revCipher : AES;
  if (sshd) {
    try {
      const rport = await freePort();
      const p = spawnSsh([
        ...sshd.args,
        '-N',
        '-c',
        sshdRevCipher,
        '-R',
        `${rport}:127.0.0.1:${ports.plain}`,
        sshd.target,
      ]);
      await until(
        async () => {
          if (p.exitCode !== null)
            throw Object.assign(new Error(`ssh -R exited: ${p.errText.trim()}`), { fatal: true });
          return (await firstByte(rport, null, 2000)) > 0;
        },
        15_000,
        'ssh -R to sshd',
      );
      sshdRev = { port: rport, pid: p.pid };
    } catch (e) {
      note(`OpenSSH two-hop baseline skipped: ${e.message}`);
      results.skipped.sshdTwoHop = e.message;
    }
  }
  if (sshd) {
    for (const c of CIPHERS) {
      try {
        await startL(
          `sshd-${short(c)}`,
          sshd.args,
          sshd.target,
          [
            { name: 'sink', host: '127.0.0.1', port: ports.plain, key: null },
            ...(sshdRev
              ? [{ name: 'twohop', host: '127.0.0.1', port: sshdRev.port, key: null }]
              : []),
          ],
          c,
        );
      } catch (e) {
        sshdSkip(`ssh -L through sshd failed: ${e.message} ${sshd.err()}`);
        sshd = null;
        break;
      }
    }
  }
  for (const c of CIPHERS) {
    await startL(
      `gw-${short(c)}`,
      gwArgs,
      `${owner}@${g.host}`,
      [
        { name: 'direct', host: direct.host, port: direct.port, key: keyD },
        { name: 'tun', host: '127.0.0.1', port: tun.port, key: keyT },
      ],
      c,
    );
  }
  // `broker tunnel --inject-key` — the real CLI, with the cipher probe preloaded.
  const probe = pathToFileURL(join(ROOT, 'bench', 'gateway', 'cipher-probe.mjs')).href;
  const startBrokerTunnel = async (name) => {
    const proc = track(
      spawn(process.execPath, [BIN, 'tunnel', name, '--inject-key', '--json'], {
        env: {
          PATH: process.env.PATH,
          HOME: tmp,
          BROKER_URL: d.url,
          BROKER_CA: caFile,
          BROKER_TOKEN: d.token,
          NODE_OPTIONS: `--import=${probe}`,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    let out = '';
    let err = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (err += c));
    await until(() => out.includes('localPort'), 15_000, `broker tunnel ${name} (${err})`);
    const port = JSON.parse(out).localPort;
    await until(
      async () => (await firstByte(port, null, 3000)) > 0,
      10_000,
      `broker tunnel ${name} echo`,
    );
    return { proc, port, negotiated: JSON.parse(/BENCH_NEGOTIATED (.*)/.exec(err)?.[1] ?? 'null') };
  };
  const btRun = await startBrokerTunnel('bench-tun');
  const bt = btRun.proc;
  const btPort = btRun.port;
  results.negotiated.brokerTunnel = btRun.negotiated;
  // The same CLI to the direct service: one hop through the gateway, like `ssh -L` → sshd.
  const btd = await startBrokerTunnel('bench-direct');
  const btCipher = results.negotiated.brokerTunnel?.cs ?? 'unknown';
  line(
    `negotiated by ssh2 clients (ssh2 defaults): broker tunnel → gateway **${btCipher}**; SDK reverse tunnel → gateway **${revCipher}**. Stock ssh paths use \`-c\`; behind the gateway the reverse leg is always ${short(revCipher)}.\n`,
  );

  // --- 1. throughput
  const paths = [
    {
      id: 'raw',
      label: 'raw loopback TCP (Node → Node)',
      port: ports.plain,
      key: null,
      cipher: null,
    },
  ];
  if (sshd)
    for (const c of CIPHERS)
      paths.push({
        id: `sshd_${short(c)}`,
        label: `OpenSSH \`ssh -L\` → sshd → sink`,
        ...fwd[`sshd-${short(c)}.sink`],
        cipher: c,
        baseline: true,
      });
  if (sshdRev) {
    for (const c of CIPHERS)
      paths.push({
        id: `sshd2_${short(c)}`,
        label: `OpenSSH two hops: \`ssh -L\` → sshd → \`ssh -R\` client (${short(sshdRevCipher)}) → sink`,
        ...fwd[`sshd-${short(c)}.twohop`],
        cipher: c,
        servicePid: sshdRev.pid,
        baseline: true,
      });
    paths.push({
      id: 'sshd_rev',
      label: 'OpenSSH reverse alone: port on sshd host → sshd → `ssh -R` client → sink',
      port: sshdRev.port,
      key: null,
      cipher: sshdRevCipher,
      servicePid: sshdRev.pid,
      baseline: true,
    });
  }
  for (const c of CIPHERS) {
    paths.push({
      id: `gw_direct_${short(c)}`,
      label: 'stock `ssh -L` → gateway → direct service (tunnel none)',
      ...fwd[`gw-${short(c)}.direct`],
      cipher: c,
      goalFor: 'stock ssh, direct service',
      topo: `sshd_${short(c)}`,
    });
    paths.push({
      id: `gw_tun_${short(c)}`,
      label: 'stock `ssh -L` → gateway → SDK reverse tunnel → sink',
      ...fwd[`gw-${short(c)}.tun`],
      cipher: c,
      goalFor: 'stock ssh, end to end',
      topo: `sshd2_${short(c)}`,
    });
  }
  paths.push({
    id: 'broker_tunnel',
    label: '`broker tunnel --inject-key` → gateway → SDK reverse tunnel → sink',
    port: btPort,
    key: null,
    cipher: btCipher,
    clientPid: bt.pid,
    goalFor: 'broker tunnel, end to end',
    topo: `sshd2_${short(btCipher)}`,
  });
  paths.push({
    id: 'broker_tunnel_direct',
    label: '`broker tunnel --inject-key` → gateway → direct service (tunnel none)',
    port: btd.port,
    key: null,
    cipher: btCipher,
    clientPid: btd.proc.pid,
    goalFor: 'broker tunnel, direct service',
    topo: `sshd_${short(btCipher)}`,
  });
  paths.push({
    id: 'reverse_only',
    label: 'published port on broker host → gateway → SDK reverse tunnel → sink (reverse alone)',
    port: tun.port,
    key: keyT,
    cipher: revCipher,
    topo: 'sshd_rev',
  });

  const warm = Math.min(BYTES, 32 * MiB);
  note(`warm-up: ${fmt(warm / MiB)} MiB through ${paths.length} paths`);
  for (const p of paths) await transfer(p.port, warm, p.key);
  const daemonPid = pidByCmdline(d.dataDir);
  const samples = Object.fromEntries(paths.map((p) => [p.id, []]));
  const cpuSamples = Object.fromEntries(paths.map((p) => [p.id, []]));
  for (let r = 0; r < ROUNDS; r++) {
    const order = paths.map((_, i) => paths[(i + r) % paths.length]);
    for (const p of order) {
      try {
        const groups = {
          client: p.clientPid ?? 0,
          sshd: sshdProc?.pid ?? 0,
          gateway: daemonPid ?? 0,
          service: p.servicePid ?? svcProc.pid,
          sink: sink.pid,
        };
        const { mibs: v, perGiB } = await transfer(p.port, BYTES, p.key, groups);
        samples[p.id].push(v);
        cpuSamples[p.id].push(perGiB);
        note(`round ${r + 1}/${ROUNDS} ${p.id}: ${fmt(v)} MiB/s`);
      } catch (e) {
        note(`round ${r + 1}/${ROUNDS} ${p.id}: FAILED ${e.message}`);
      }
    }
  }
  const tp = Object.fromEntries(
    Object.entries(samples).map(([k, xs]) => [k, xs.length ? median(xs) : null]),
  );
  results.throughputMiBs = tp;
  results.throughputSamples = samples;
  const sshdOf = (c) => tp[`sshd_${short(c)}`] ?? null;
  const pct = (a, b) => (a && b ? `${fmt((a / b) * 100)} %` : '—');

  line(`### Bulk throughput, ${fmt(BYTES / MiB)} MiB client → sink (median MiB/s)\n`);
  line(
    '| path | cipher | MiB/s | vs raw | vs sshd `ssh -L` (1 hop, same cipher) | vs OpenSSH, same topology | goal (vs 1-hop sshd) |',
  );
  line('|---|---|---|---|---|---|---|');
  for (const p of paths) {
    const v = tp[p.id];
    const peer = p.cipher ? sshdOf(p.cipher) : null;
    let goal = '';
    if (p.goalFor && peer && v) {
      const need = p.cipher === AES ? 0.85 : p.cipher === CHACHA ? 1.0 : null;
      if (need) {
        const ok = v / peer >= need;
        results.goals[`${p.id}_vs_sshd`] = { ratio: v / peer, need, met: ok };
        goal = `≥ ${need * 100} % → ${ok ? 'met' : '**NOT met**'}`;
      }
    }
    const topo = p.topo ? tp[p.topo] : null;
    results.ratios[p.id] = {
      vsRaw: v && tp.raw ? v / tp.raw : null,
      vsSshdSameCipher: v && peer ? v / peer : null,
      vsOpenSshSameTopology: v && topo ? v / topo : null,
    };
    line(
      `| ${p.label} | ${p.cipher ? short(p.cipher) : '—'} | ${v ? fmt(v) : 'failed'} | ${p.id === 'raw' ? '100 %' : pct(v, tp.raw)} | ${/^sshd_(chacha20|aes128-gcm)$/.test(p.id) ? '(baseline)' : pct(v, peer)} | ${p.baseline ? '(baseline)' : pct(v, topo)} | ${goal} |`,
    );
  }
  if (!sshd) line(`\nsshd baseline skipped: ${results.skipped.sshd}`);

  // Where the cycles go: CPU seconds per GiB moved, per process (median over rounds). With 2 vCPUs
  // a path is bound by its busiest single-threaded process.
  const cpuKeys = ['client', 'sshd', 'gateway', 'service', 'sink', 'driver'];
  results.cpuSecondsPerGiB = {};
  line(
    `\nCPU seconds per GiB moved (median of rounds; \`gateway\` = the broker daemon, \`service\` = the SDK reverse-tunnel process):\n`,
  );
  line(`| path | cipher | ${cpuKeys.join(' | ')} | total |`);
  line(`|---|---|${cpuKeys.map(() => '---').join('|')}|---|`);
  for (const p of paths) {
    const xs = cpuSamples[p.id];
    if (!xs.length) continue;
    const m = Object.fromEntries(cpuKeys.map((k) => [k, median(xs.map((x) => x[k]))]));
    results.cpuSecondsPerGiB[p.id] = m;
    const cell = (k) => (m[k] >= 0.05 ? fmt(m[k], 2) : '·');
    line(
      `| ${p.id} | ${p.cipher ? short(p.cipher) : '—'} | ${cpuKeys.map(cell).join(' | ')} | ${fmt(
        cpuKeys.reduce((a, k) => a + m[k], 0),
        2,
      )} |`,
    );
  }
  // broker tunnel has no -c: also hold it against OpenSSH's default (chacha20) through sshd.
  if (tp.broker_tunnel && sshdOf(CHACHA)) {
    const ok = tp.broker_tunnel / sshdOf(CHACHA) >= 1;
    results.goals.broker_tunnel_vs_sshd_default = {
      ratio: tp.broker_tunnel / sshdOf(CHACHA),
      need: 1,
      met: ok,
    };
    line(
      `\n\`broker tunnel\` (its default, ${short(btCipher)}) vs sshd with OpenSSH's default cipher (chacha20): **${pct(tp.broker_tunnel, sshdOf(CHACHA))}** (goal ≥ 100 % → ${ok ? 'met' : 'NOT met'})`,
    );
  }

  // --- 2. first echoed byte through a running client
  line(
    `\n### Time to first echoed byte, new connection through a running client (median of ${LAT_TRIES}, ms)\n`,
  );
  const { sshConnect, handshake } = await import(
    pathToFileURL(join(ROOT, 'dist', 'client', 'index.js')).href
  );
  const sdkSsh = await sshConnect(g, owner, d.token);
  const sdkChannel = async () => {
    const t0 = hr();
    const ch = await new Promise((resolve, reject) =>
      sdkSsh.forwardOut('127.0.0.1', 0, '127.0.0.1', tun.port, (err, c) =>
        err ? reject(err) : resolve(c),
      ),
    );
    try {
      await handshake(ch, keyT);
      await dialog(ch, ch, null);
      return msSince(t0);
    } finally {
      ch.destroy();
    }
  };
  const latPaths = [
    { id: 'raw_plain', label: 'raw TCP → echo (no gate)', run: () => firstByte(ports.plain, null) },
    {
      id: 'raw_gated',
      label: 'raw TCP → gate (broker verify) → echo',
      run: () => firstByte(ports.gatedTun, keyT),
    },
  ];
  if (sshd)
    latPaths.push({
      id: 'sshd',
      label: 'running `ssh -L` → sshd → echo (no gate)',
      run: () => firstByte(fwd['sshd-chacha20.sink'].port, null),
      peer: true,
    });
  if (fwd['sshd-chacha20.twohop'])
    latPaths.push({
      id: 'sshd_twohop',
      label: 'running `ssh -L` → sshd → `ssh -R` client → echo (no gate)',
      run: () => firstByte(fwd['sshd-chacha20.twohop'].port, null),
    });
  latPaths.push(
    {
      id: 'gw_direct',
      label: 'running stock `ssh -L` → gateway → direct service (gate)',
      run: () => firstByte(fwd['gw-chacha20.direct'].port, keyD),
      goal: true,
    },
    {
      id: 'gw_tun',
      label: 'running stock `ssh -L` → gateway → reverse tunnel (gate)',
      run: () => firstByte(fwd['gw-chacha20.tun'].port, keyT),
      goal: true,
    },
    {
      id: 'broker_tunnel',
      label: 'running `broker tunnel --inject-key` → gateway → reverse tunnel (gate)',
      run: () => firstByte(btPort, null),
      goal: true,
    },
    {
      id: 'sdk_channel',
      label: 'SDK: forwardOut + handshake() on a connected ssh2 client (in-process)',
      run: sdkChannel,
      goal: true,
    },
  );
  const lat = Object.fromEntries(latPaths.map((p) => [p.id, []]));
  for (const p of latPaths) await p.run(); // warm
  for (let i = 0; i < LAT_TRIES; i++)
    for (const p of latPaths) {
      try {
        lat[p.id].push(await p.run());
      } catch (e) {
        note(`first byte ${p.id}: ${e.message}`);
      }
    }
  sdkSsh.end();
  const latMed = Object.fromEntries(
    Object.entries(lat).map(([k, xs]) => [k, xs.length ? median(xs) : null]),
  );
  const p90 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)] ?? null;
  results.firstByteMs = Object.fromEntries(
    Object.entries(lat).map(([k, xs]) => [k, { median: latMed[k], p90: p90(xs), n: xs.length }]),
  );
  line('| path | median ms | p90 ms | vs sshd `ssh -L` | goal ≤ 25 ms |');
  line('|---|---|---|---|---|');
  for (const p of latPaths) {
    const m = latMed[p.id];
    let goal = '';
    if (p.goal && m !== null) {
      results.goals[`first_byte_${p.id}`] = { ms: m, need: 25, met: m <= 25 };
      goal = m <= 25 ? 'met' : '**NOT met**';
    }
    line(
      `| ${p.label} | ${m === null ? 'failed' : fmt(m, 2)} | ${lat[p.id].length ? fmt(p90(lat[p.id]), 2) : '—'} | ${p.peer ? '(baseline)' : latMed.sshd && m ? `${fmt(m / latMed.sshd, 2)}×` : '—'} | ${goal} |`,
    );
  }

  // --- 2b. the daemon is one event loop: a new tunnel's first byte while a bulk transfer runs
  // through the gateway, vs the same through sshd while sshd carries a bulk transfer.
  const underLoad = async (bulkPort, bulkKey, probePort, probeKey) => {
    const xs = [];
    let done = false;
    const bulk = transfer(bulkPort, 512 * MiB, bulkKey).finally(() => (done = true));
    await sleep(100);
    while (!done) {
      try {
        xs.push(await firstByte(probePort, probeKey));
      } catch {
        /* counted as missing */
      }
      await sleep(20);
    }
    await bulk;
    return xs;
  };
  const loadRows = [];
  const F = (k) => fwd[k]?.port;
  if (sshd) {
    loadRows.push({
      id: 'sshd',
      label: 'sshd one hop: probe `ssh -L` (chacha20) while another `ssh -L` (aes128-gcm) streams',
      xs: await underLoad(F('sshd-aes128-gcm.sink'), null, F('sshd-chacha20.sink'), null),
    });
    if (sshdRev)
      loadRows.push({
        id: 'sshd_twohop',
        label: 'sshd two hops: probe and bulk share the `ssh -R` connection',
        xs: await underLoad(F('sshd-aes128-gcm.twohop'), null, F('sshd-chacha20.twohop'), null),
      });
  }
  loadRows.push(
    {
      id: 'gw_direct',
      label:
        'gateway: probe to the direct service while bulk runs through the reverse tunnel (shares the daemon only)',
      xs: await underLoad(F('gw-aes128-gcm.tun'), keyT, F('gw-chacha20.direct'), keyD),
    },
    {
      id: 'raw_gated',
      label:
        'no SSH: raw TCP → gate (HTTPS verify to the daemon) → echo, while bulk runs through the gateway',
      xs: await underLoad(F('gw-aes128-gcm.tun'), keyT, ports.gatedTun, keyT),
    },
    {
      id: 'gw_tun',
      label: 'gateway: probe and bulk share the SDK reverse-tunnel connection',
      xs: await underLoad(F('gw-aes128-gcm.tun'), keyT, F('gw-chacha20.tun'), keyT),
    },
  );
  results.firstByteUnderLoadMs = {};
  line(`\n### Time to first echoed byte while a 512 MiB bulk transfer runs (ms)\n`);
  line('| path | probes | median ms | p90 ms | idle median ms |');
  line('|---|---|---|---|---|');
  for (const r of loadRows) {
    const m = r.xs.length ? median(r.xs) : null;
    results.firstByteUnderLoadMs[r.id] = { median: m, p90: p90(r.xs), n: r.xs.length };
    line(
      `| ${r.label} | ${r.xs.length} | ${m === null ? '—' : fmt(m, 2)} | ${r.xs.length ? fmt(p90(r.xs), 2) : '—'} | ${latMed[r.id] == null ? '—' : fmt(latMed[r.id], 2)} |`,
    );
  }

  // --- 3. cold setup
  line(`\n### Cold setup to first echoed byte (median of ${COLD_TRIES}, ms)\n`);
  const sshW = async (args, key) => {
    const t0 = hr();
    const p = spawnSsh(args, ['pipe', 'pipe', 'pipe']);
    p.stdin.on('error', () => {});
    try {
      await withTimeout(dialog(p.stdin, p.stdout, key), 10_000, 'ssh -W');
      return msSince(t0);
    } catch (e) {
      throw new Error(`${e.message} ${p.errText}`);
    } finally {
      try {
        process.kill(-p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await waitExit(p);
    }
  };
  const { BrokerClient, connect: sdkConnect } = await import(
    pathToFileURL(join(ROOT, 'dist', 'client', 'index.js')).href
  );
  const bc = new BrokerClient({ url: d.url, ca: d.ca, token: d.token, env: {} });
  const coldPaths = [];
  if (sshd) {
    coldPaths.push(
      {
        id: 'sshd_default_kex',
        label: '`ssh -W` → sshd (default kex: sntrup761x25519)',
        run: () => sshW([...sshd.args, '-W', `127.0.0.1:${ports.plain}`, sshd.target], null),
      },
      {
        id: 'sshd_curve25519',
        label: '`ssh -W` → sshd (curve25519-sha256)',
        run: () =>
          sshW(
            [
              ...sshd.args,
              '-o',
              'KexAlgorithms=curve25519-sha256',
              '-W',
              `127.0.0.1:${ports.plain}`,
              sshd.target,
            ],
            null,
          ),
        peer: true,
      },
    );
  }
  coldPaths.push(
    {
      id: 'gw_sshW_tun',
      label: 'stock `ssh -W` (askpass) → gateway → reverse tunnel (gate)',
      run: () => sshW([...gwArgs, '-W', `127.0.0.1:${tun.port}`, `${owner}@${g.host}`], keyT),
    },
    {
      id: 'sdk_connect',
      label: 'SDK `connect()` from a running process (HTTPS load + SSH + handshake)',
      run: async () => {
        const t0 = hr();
        const ch = await sdkConnect(bc, 'bench-tun');
        try {
          await dialog(ch, ch, null);
          return msSince(t0);
        } finally {
          ch.destroy();
        }
      },
    },
    {
      id: 'cli_connect',
      label: '`broker connect` CLI process (node start included)',
      run: async () => {
        const t0 = hr();
        const p = track(
          spawn(process.execPath, [BIN, 'connect', 'bench-tun'], {
            env: {
              PATH: process.env.PATH,
              HOME: tmp,
              BROKER_URL: d.url,
              BROKER_CA: caFile,
              BROKER_TOKEN: d.token,
            },
            stdio: ['pipe', 'pipe', 'pipe'],
          }),
        );
        p.stdin.on('error', () => {});
        let err = '';
        p.stderr.on('data', (c) => (err += c));
        try {
          await withTimeout(dialog(p.stdin, p.stdout, null), 10_000, 'broker connect');
          return msSince(t0);
        } catch (e) {
          throw new Error(`${e.message} ${err}`);
        } finally {
          p.kill('SIGKILL');
          await waitExit(p);
        }
      },
    },
  );
  const cold = Object.fromEntries(coldPaths.map((p) => [p.id, []]));
  for (const p of coldPaths) await p.run().catch((e) => note(`cold ${p.id} warm-up: ${e.message}`));
  for (let i = 0; i < COLD_TRIES; i++)
    for (const p of coldPaths) {
      try {
        cold[p.id].push(await p.run());
      } catch (e) {
        note(`cold ${p.id}: ${e.message}`);
      }
    }
  bc.close();
  const coldMed = Object.fromEntries(
    Object.entries(cold).map(([k, xs]) => [k, xs.length ? median(xs) : null]),
  );
  results.coldMs = coldMed;
  const coldBase = coldMed.sshd_curve25519;
  line('| path | median ms | vs sshd (curve25519) |');
  line('|---|---|---|');
  for (const p of coldPaths) {
    const m = coldMed[p.id];
    line(
      `| ${p.label} | ${m === null ? 'failed' : fmt(m, 1)} | ${p.peer ? '(baseline)' : coldBase && m ? `${fmt(m / coldBase, 2)}×` : '—'} |`,
    );
  }

  const g2 = results.goals;
  const verdict = Object.entries(g2).map(([k, v]) => `${k}: ${v.met ? 'met' : 'NOT met'}`);
  line(`\nGoals: ${verdict.join('; ')}`);
}

/**
 * Runs inside the network namespace of `broker run --isolate` (isolate.ts), as the process group
 * leader of the app: brings the namespace's loopback up, starts the app, waits until it accepts
 * on 127.0.0.1:PORT (or [::1]:PORT), then listens on SOCKET (in broker run's 0700 directory) and
 * carries each connection there to the app. It ends with the app's status; signals reach the app
 * through the group, so the relay itself ignores them until the app is gone.
 *
 * Usage (internal): `node ns-relay.js IP SOCKET PORT -- COMMAND [ARGS…]`
 */
import { execFile, spawn } from 'node:child_process';
import { connect, createServer, type Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { splice } from '../../protocol/splice.js';

const [ip, socketPath, portArg, sep, file, ...args] = process.argv.slice(2);
const port = Number(portArg);
const fail = (msg: string, code: number) => {
  process.stderr.write(`broker run: ${msg}\n`);
  process.exit(code);
};
if (!ip || !socketPath || !port || sep !== '--' || !file) fail('internal: bad relay arguments', 2);

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => {});

/** Try `host`:port once. */
const accepts = (host: string) =>
  new Promise<boolean>((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });

await new Promise<void>((resolve) =>
  execFile(ip!, ['link', 'set', 'lo', 'up'], (err) =>
    err ? fail(`cannot bring up the private loopback: ${err.message}`, 126) : resolve(),
  ),
);

const app = spawn(file!, args, { stdio: 'inherit' });
let done = false;
app.once('error', (err) => fail(`cannot start ${file}: ${err.message}`, 127));
app.once('exit', (code, signal) => {
  done = true;
  process.exit(code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0));
});

// Ready once the app accepts; then the socket appears, which is what broker run waits for.
let host: string | null = null;
while (!done && !host) {
  for (const h of ['127.0.0.1', '::1']) if (!host && (await accepts(h))) host = h;
  if (!host) await new Promise((r) => setTimeout(r, 100));
}
const relay = createServer((client: Socket) => {
  const up = connect({ host: host!, port });
  up.setNoDelay(true);
  splice(client, up);
});
relay.listen(socketPath);

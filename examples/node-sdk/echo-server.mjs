// A Node TCP server using the broker's server SDK directly: it stays on loopback, registers
// itself, attaches a reverse tunnel to the broker's gateway, and lets only key holders in.
//
//   node examples/node-sdk/echo-server.mjs myecho
//   (elsewhere)  echo hello | broker connect myecho
//
// Credentials come from the usual discovery (BROKER_URL / BROKER_TOKEN / BROKER_CA, or files).
import { createServer } from 'node:net';
import { registerService } from 'session-broker/server-sdk';

const name = process.argv[2] ?? 'node-echo';
const app = createServer();
await new Promise((resolve) => app.listen(0, '127.0.0.1', resolve));

const svc = await registerService({ name, target: { port: app.address().port } });
app.on(
  'connection',
  svc.gate((socket, who) => socket.on('data', (c) => socket.write(`echo(${who.principal}): ${c}`))),
);
svc.on('state', (state) => console.log(`${svc.ref}: ${state}`));
svc.on('warning', (err) => console.error(`${svc.ref}: ${err.message}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    await svc.close(); // unregisters: every key for it stops working at once
    process.exit(0);
  });
}

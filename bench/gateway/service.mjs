// The server side of the tunnelled service: registerService() from the SDK attaching its reverse
// tunnel (existing registration) with target = the sink's gated port. Its own process, like a real
// server. argv[2]: JSON {url, ca, userToken, service, serviceToken, targetPort}.
// Prints "state <s>" lines; negotiated ciphers come from cipher-probe.mjs on stderr.
import './cipher-probe.mjs';
import { BrokerClient, registerService } from '../../dist/server-sdk/index.js';

const cfg = JSON.parse(process.argv[2]);
const svc = await registerService({
  broker: new BrokerClient({ url: cfg.url, ca: cfg.ca, token: cfg.userToken, env: {} }),
  name: cfg.service.name,
  existing: { service: cfg.service, serviceToken: cfg.serviceToken },
  target: { port: cfg.targetPort },
});
svc.on('state', (s) => process.stdout.write(`state ${s}\n`));
svc.on('warning', (e) => process.stderr.write(`warning ${e.message}\n`));
if (svc.state !== 'connecting') process.stdout.write(`state ${svc.state}\n`);
process.on('SIGTERM', async () => {
  await svc.close({ keepRegistration: true }).catch(() => {});
  process.exit(0);
});

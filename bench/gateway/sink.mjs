// The far end of every benchmarked path, in its own process (so it never shares an event loop with
// the load generator or a tunnel end). One tiny protocol on every listener:
//   'S' + 15 decimal digits N → answers 'R', then counts N bytes and answers 'D' (bulk sink);
//   'E' … → echoes everything, the 'E' included (latency probe).
// Listeners: `plain` (no gate: raw TCP and sshd paths), `gatedTun` (gate with the tunnelled
// service's token: the reverse tunnel's target) and the direct (tunnel "none") service's own port,
// gated with that service's token. The gate is the SDK's gate() verifying through the broker, i.e.
// exactly what svc.gate() does; measured bytes always start after `OK`.
// argv[2]: JSON {url, ca, directHost, directPort, directToken, tunToken}. Prints JSON ports.
import { createServer } from 'node:net';
import { BrokerClient, gate } from '../../dist/server-sdk/index.js';

const cfg = JSON.parse(process.argv[2]);

function proto(s) {
  s.setNoDelay(true);
  s.on('error', () => s.destroy());
  let mode = null;
  let need = 0;
  let got = 0;
  let hdr = Buffer.alloc(0);
  s.on('data', (c) => {
    if (mode === 'S') {
      got += c.length;
      if (got >= need) {
        mode = 'done';
        s.write('D');
      }
      return;
    }
    if (mode === 'E') return void s.write(c);
    if (mode === 'done') return;
    hdr = hdr.length ? Buffer.concat([hdr, c]) : c;
    if (hdr[0] === 0x45) {
      mode = 'E';
      s.write(hdr);
    } else if (hdr[0] === 0x53) {
      if (hdr.length < 16) return;
      need = Number(hdr.subarray(1, 16).toString('latin1'));
      got = hdr.length - 16;
      mode = 'S';
      s.write('R');
      if (got >= need) {
        mode = 'done';
        s.write('D');
      }
    } else s.destroy();
  });
  s.on('end', () => s.end());
}

const gated = (token) => {
  const c = new BrokerClient({ url: cfg.url, ca: cfg.ca, token, env: {} });
  return gate((s) => proto(s), { verify: (k) => c.verify(k) });
};
const listen = (handler, port, host = '127.0.0.1') =>
  new Promise((resolve, reject) => {
    const srv = createServer(handler);
    srv.once('error', reject);
    srv.listen(port, host, () => resolve(srv.address().port));
  });

const plain = await listen(proto, 0);
const gatedTun = await listen(gated(cfg.tunToken), 0);
const direct = await listen(gated(cfg.directToken), cfg.directPort, cfg.directHost);
process.stdout.write(JSON.stringify({ plain, gatedTun, direct }) + '\n');
process.on('SIGTERM', () => process.exit(0));

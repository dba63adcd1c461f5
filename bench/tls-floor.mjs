// The floor for any Node 20 CLI that talks to the broker: boot node, load node:https, create a
// client TLS context pinned to the broker CA (Node 20 builds its bundled root store here,
// ≈ 25–30 ms, even when `ca` replaces it), one GET. The CLI's cold start is compared to this too.
import { readFileSync } from 'node:fs';
import { Agent, get } from 'node:https';
import { join } from 'node:path';
const c = JSON.parse(readFileSync(join(process.env.BROKER_DATA, 'credentials.json'), 'utf8'));
const agent = new Agent({ ca: c.ca });
get(new URL('/v1/health', c.url), { agent }, (res) => {
  res.resume();
  res.on('end', () => agent.destroy());
});

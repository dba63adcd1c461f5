/** GET /metrics: Prometheus text with the broker's counters and state gauges. */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon } from '../helpers/daemon.js';
import { announceSkip, runAs, unixUser, userTmp } from '../helpers/users.js';

function value(text: string, metric: string): number {
  const line = text
    .split('\n')
    .find((l) => l.startsWith(metric + ' ') || (l.startsWith(metric + '{') && l.includes(metric)));
  return line ? Number(line.trim().split(/\s+/).pop()) : NaN;
}

describe('metrics', () => {
  let d: Daemon;
  let srv: Server;
  beforeAll(async () => {
    d = await Daemon.start();
  });
  afterAll(async () => {
    srv?.close();
    await d.stop();
  });

  it('ok/loopback scrape without a token: counters move with verifies, loads and services', async () => {
    const owner = (await d.api('GET', '/v1/whoami')).body.principal.name;
    const reg = await d.api('POST', '/v1/services', { body: { name: 'm', tunnel: 'none' } });
    srv = createServer((s) => s.end());
    await new Promise<void>((r) => srv.listen(reg.body.service.port, '127.0.0.1', r));
    await d.api('POST', `/v1/services/${owner}/m/ready`, {
      token: reg.body.serviceToken,
      body: {},
    });
    const { key } = (await d.api('POST', `/v1/services/${owner}/m/keys`, { body: {} })).body;
    await d.api('POST', '/v1/verify', { token: reg.body.serviceToken, body: { key } });
    await d.api('POST', '/v1/verify', {
      token: reg.body.serviceToken,
      body: { key: 'bkk_' + 'n'.repeat(43) },
    });
    const r = await d.api<string>('GET', '/metrics', { token: null });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/text\/plain/);
    const text = r.text;
    expect(value(text, 'broker_verify_total{result="ok"}')).toBe(1);
    expect(value(text, 'broker_verify_total{result="invalid"}')).toBe(1);
    expect(value(text, 'broker_keys_issued_total')).toBe(1);
    expect(value(text, 'broker_services{status="ready"}')).toBe(1);
    expect(value(text, 'broker_tunnels_open')).toBe(0);
    expect(text).toMatch(
      /broker_http_request_duration_seconds_bucket\{[^}]*route="\/v1\/services\/:owner\/:name\/keys"/,
    );
    expect(text).toMatch(/broker_http_request_duration_seconds_count\{[^}]*route="\/v1\/verify"/);
    expect(text).toMatch(/broker_process_resident_memory_bytes/);
    // No secret and no raw path ever becomes a label.
    expect(text).not.toMatch(/bk[usk]_/);
  });
});

describe.skipIf(announceSkip('LOC-5 /metrics as another Unix user'))(
  'LOC-5: /metrics is not open to every local user',
  () => {
    let d: Daemon;
    const mallory = () => unixUser('bt-mallory');
    afterAll(async () => d?.stop());

    it("fail/LOC-5 mallory's curl over loopback without a token → 401; the broker's own user, an admin token, or a UID the config names → 200", async () => {
      d = await Daemon.start({ config: { metricsUids: [] } });
      const ca = join(userTmp(mallory()), 'ca.pem');
      writeFileSync(ca, d.ca, { mode: 0o644 });
      const asMallory = () =>
        runAs(mallory(), 'curl', [
          '-sS',
          '-o',
          '/dev/null',
          '-w',
          '%{http_code}',
          '--cacert',
          ca,
          `${d.url}/metrics`,
        ]);
      const first = await asMallory();
      expect(first.stdout, first.stderr).toBe('401');
      expect((await d.api('GET', '/metrics', { token: null })).status).toBe(200); // root
      expect((await d.api('GET', '/metrics')).status).toBe(200); // admin token
      await d.stop();
      d = await Daemon.start({
        dataDir: d.dataDir,
        home: d.home,
        config: { metricsUids: [mallory().uid] },
      });
      expect((await asMallory()).stdout).toBe('200');
    });
  },
);

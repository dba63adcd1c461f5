/**
 * SES-2 for client certificates, as the attacker (found by a penetration test of issue 11):
 * bt-mallory, a second real Unix user, is a collaborator on bt-alice's mTLS service
 * (`requireClientCert: { allow: ['bt-alice', 'bt-mallory'] }`) and fetches a client certificate
 * with `broker cert` (12 h). The admin then takes her access away. The gate used to admit a
 * certificate on its CN alone; now the broker records every certificate it issues with the token
 * that minted it, and a gate admits one only while that record lives and its principal is
 * enabled (`POST /v1/verify/cert`, re-checked like a key).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { registerService, type BrokerService } from '../../src/server-sdk/index.js';
import { BIN, Daemon } from '../helpers/daemon.js';
import { announceSkip, runAs, unixUser, userTmp, type UnixUser } from '../helpers/users.js';

const skip = announceSkip('attack: a client certificate after its principal is disabled');

describe.skipIf(skip)('SES-2: a client certificate ends with its token and its principal', () => {
  let d: Daemon;
  let svc: BrokerService;
  let server: Server;
  let mallory: UnixUser;
  let home: string;
  const dir = mkdtempSync(join(tmpdir(), 'attack-mtls-'));

  beforeAll(async () => {
    mallory = unixUser('bt-mallory');
    home = userTmp(mallory, 'attack-mtls-mallory-');
    d = await Daemon.start();
    const alice = await d.addUser('bt-alice');
    // alice's lab notebook, shared with her collaborator by client certificate.
    svc = await registerService({
      broker: new BrokerClient({ url: d.url, ca: d.ca, token: alice, env: {} }),
      name: 'lab',
      mode: 'https',
      tunnel: 'none',
      requireClientCert: { allow: ['bt-alice', 'bt-mallory', 'bt-carol'] },
    });
    const gate = svc.httpGate({ cacheMs: 0 }); // every request asks the broker
    server = createServer(svc.tlsOptions(), async (req, res) => {
      if (!(await gate.handle(req, res))) return;
      res.end(`lab notebook, opened by ${(req as { brokerPrincipal?: string }).brokerPrincipal}`);
    });
    await new Promise<void>((r) => server.listen(svc.port, '127.0.0.1', r));
    await svc.ready();
  });
  afterAll(async () => {
    server?.close();
    await svc?.close();
    await d?.stop();
    rmSync(dir, { recursive: true, force: true });
    rmSync(home, { recursive: true, force: true });
  });

  it('fail/SES-2 once her token is revoked, her principal disabled and removed, her certificate no longer opens the service', async () => {
    const made = await d.api('POST', '/v1/principals', { body: { name: 'bt-mallory' } });
    expect(made.status).toBe(201);
    const { token, tokenId } = made.body as { token: string; tokenId: string };
    writeFileSync(join(home, 'ca.pem'), d.ca, { mode: 0o644 });
    const env = { BROKER_URL: d.url, BROKER_TOKEN: token, BROKER_CA: join(home, 'ca.pem') };
    const certDir = join(home, 'mtls');
    const got = await runAs(mallory, process.execPath, [BIN, 'cert', '--out-dir', certDir], {
      env,
    });
    expect(got.code, got.stderr).toBe(0);

    const url = `https://${svc.service.hostname}:${svc.port}/`;
    const open = async () => {
      const r = await runAs(mallory, 'curl', [
        '-sS',
        '--max-time',
        '5',
        '-w',
        ' [%{http_code}]',
        '--cacert',
        join(home, 'ca.pem'),
        '--cert',
        join(certDir, 'cert.pem'),
        '--key',
        join(certDir, 'key.pem'),
        url,
      ]);
      return (r.stdout || r.stderr).trim();
    };
    const whoami = async () =>
      (await runAs(mallory, process.execPath, [BIN, 'query'], { env })).code;
    expect(await open()).toBe('lab notebook, opened by bt-mallory [200]');

    // The admin takes her access away, step by step; her token dies at once each time.
    expect((await d.api('DELETE', `/v1/tokens/${tokenId}`)).status).toBe(204);
    const afterRevoke = await open();
    const tokenAfterRevoke = await whoami();
    expect(
      (await d.api('PATCH', '/v1/principals/bt-mallory', { body: { disabled: true } })).status,
    ).toBe(200);
    const afterDisable = await open();
    expect((await d.api('DELETE', '/v1/principals/bt-mallory')).status).toBe(204);
    const afterRemove = await open();
    console.log(
      `[attack] her token after revoke: exit ${tokenAfterRevoke}; her certificate after revoke: ${afterRevoke}; after disable: ${afterDisable}; after remove: ${afterRemove}`,
    );
    const inside = (s: string) => s.includes('opened by bt-mallory');
    expect({
      tokenWorksAfterRevoke: tokenAfterRevoke === 0,
      certOpensAfterRevoke: inside(afterRevoke),
      certOpensAfterDisable: inside(afterDisable),
      certOpensAfterRemove: inside(afterRemove),
    }).toEqual({
      tokenWorksAfterRevoke: false,
      certOpensAfterRevoke: false,
      certOpensAfterDisable: false,
      certOpensAfterRemove: false,
    });
  }, 60_000);

  it('fail/SES-2 disabling the principal alone shuts its certificate out at once; enabling it lets it back in', async () => {
    const made = await d.api('POST', '/v1/principals', { body: { name: 'bt-carol' } });
    expect(made.status).toBe(201);
    const broker = new BrokerClient({ url: d.url, ca: d.ca, token: made.body.token, env: {} });
    const { newLocalKey, csrFor } = await import('../../src/server-sdk/csr.js');
    const key = await newLocalKey();
    const issued = await broker.clientCert('bt-carol', await csrFor(key));
    broker.close();
    const status = () =>
      new Promise<number>((resolve, reject) =>
        request(
          `https://127.0.0.1:${svc.port}/`,
          {
            ca: d.ca,
            cert: issued.cert,
            key: key.keyPem,
            servername: svc.service.hostname,
            agent: false,
          },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        )
          .on('error', reject)
          .end(),
      );
    expect(await status()).toBe(200);
    await d.api('PATCH', '/v1/principals/bt-carol', { body: { disabled: true } });
    expect(await status()).toBe(401);
    await d.api('PATCH', '/v1/principals/bt-carol', { body: { disabled: false } });
    expect(await status()).toBe(200);
  });
});

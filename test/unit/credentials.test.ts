/** Credential discovery order of DESIGN §3, each field resolved on its own. */
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { discoverCredentials } from '../../src/client/credentials.js';

function home() {
  const h = mkdtempSync(join(tmpdir(), 'broker-cred-'));
  const env = { HOME: h, XDG_CONFIG_HOME: join(h, 'cfg'), XDG_STATE_HOME: join(h, 'st') };
  mkdirSync(join(h, 'cfg', 'broker'), { recursive: true });
  mkdirSync(join(h, 'st', 'broker'), { recursive: true });
  return { h, env };
}

describe('discoverCredentials', () => {
  it('options beat env beat user file beat state dir, field by field', () => {
    const { h, env } = home();
    writeFileSync(
      join(h, 'cfg', 'broker', 'credentials.json'),
      JSON.stringify({ url: 'https://user-file', token: 'T-user', ca: 'CA-user' }),
    );
    writeFileSync(
      join(h, 'st', 'broker', 'credentials.json'),
      JSON.stringify({ url: 'https://state', token: 'T-state', ca: 'CA-state' }),
    );
    writeFileSync(join(h, 'ca.pem'), 'CA-env');
    expect(discoverCredentials({ env })).toMatchObject({
      url: 'https://user-file',
      token: 'T-user',
      ca: 'CA-user',
    });
    const withEnv = { ...env, BROKER_TOKEN: 'T-env', BROKER_CA: join(h, 'ca.pem') };
    expect(discoverCredentials({ env: withEnv })).toMatchObject({
      url: 'https://user-file',
      token: 'T-env',
      ca: 'CA-env',
    });
    expect(discoverCredentials({ env: withEnv, token: 'T-opt' })).toMatchObject({
      token: 'T-opt',
      url: 'https://user-file',
    });
  });

  it('BROKER_TOKEN alone still finds url and CA in the state dir', () => {
    const { h, env } = home();
    writeFileSync(
      join(h, 'st', 'broker', 'credentials.json'),
      JSON.stringify({ url: 'https://state', token: 'T-state', ca: 'CA-state' }),
    );
    const c = discoverCredentials({ env: { ...env, BROKER_TOKEN: 'bks_x' } });
    expect(c).toMatchObject({ url: 'https://state', token: 'bks_x', ca: 'CA-state' });
    expect(c.sources.token).toBe('BROKER_TOKEN');
  });

  it('BROKER_DATA selects the state dir', () => {
    const { h, env } = home();
    mkdirSync(join(h, 'data'));
    writeFileSync(
      join(h, 'data', 'credentials.json'),
      JSON.stringify({ url: 'https://data', token: 'T', ca: 'C' }),
    );
    expect(discoverCredentials({ env: { ...env, BROKER_DATA: join(h, 'data') } }).url).toBe(
      'https://data',
    );
  });

  it('nothing anywhere → nothing, not a crash', () => {
    const { env } = home();
    expect(discoverCredentials({ env })).toEqual({ sources: {} });
  });
});

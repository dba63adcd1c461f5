/**
 * Credential discovery order of DESIGN §3, each field resolved on its own; and FS-5: a
 * credentials file others can read, or another user's, is refused like ssh refuses an
 * unprotected private key.
 */
import { chmodSync, chownSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerClient } from '../../src/client/broker-client.js';
import { discoverCredentials } from '../../src/client/credentials.js';
import { main } from '../../src/cli/main.js';
import { BrokerError } from '../../src/protocol/errors.js';
import { announceSkip, unixUser } from '../helpers/users.js';

const noUsers = announceSkip('credentials owned by bt-mallory (test/unit/credentials.test.ts)');

/** A credentials file as the user (or the daemon) writes it: 0600. */
function writeCreds(path: string, value: unknown, mode = 0o600): void {
  writeFileSync(path, JSON.stringify(value), { mode });
  chmodSync(path, mode); // the test's set-up: whatever the umask
}

const FULL = { url: 'https://user-file', token: 'bku_user', ca: 'CA-user' };

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
    writeCreds(join(h, 'cfg', 'broker', 'credentials.json'), {
      url: 'https://user-file',
      token: 'T-user',
      ca: 'CA-user',
    });
    writeCreds(join(h, 'st', 'broker', 'credentials.json'), {
      url: 'https://state',
      token: 'T-state',
      ca: 'CA-state',
    });
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
    writeCreds(join(h, 'st', 'broker', 'credentials.json'), {
      url: 'https://state',
      token: 'T-state',
      ca: 'CA-state',
    });
    const c = discoverCredentials({ env: { ...env, BROKER_TOKEN: 'bks_x' } });
    expect(c).toMatchObject({ url: 'https://state', token: 'bks_x', ca: 'CA-state' });
    expect(c.sources.token).toBe('BROKER_TOKEN');
  });

  it('BROKER_DATA selects the state dir', () => {
    const { h, env } = home();
    mkdirSync(join(h, 'data'));
    writeCreds(join(h, 'data', 'credentials.json'), { url: 'https://data', token: 'T', ca: 'C' });
    expect(discoverCredentials({ env: { ...env, BROKER_DATA: join(h, 'data') } }).url).toBe(
      'https://data',
    );
  });

  it('nothing anywhere → nothing, not a crash', () => {
    const { env } = home();
    expect(discoverCredentials({ env })).toEqual({ sources: {} });
  });
});

describe('FS-5: loose or foreign credentials files are refused', () => {
  function refusal(fn: () => unknown): BrokerError {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(BrokerError);
      return err as BrokerError;
    }
    throw new Error('expected the credentials file to be refused');
  }

  for (const mode of [0o644, 0o640, 0o604, 0o666]) {
    it(`fail/user file mode ${mode.toString(8)}: refused with chmod 600 <path>`, () => {
      const { h, env } = home();
      const path = join(h, 'cfg', 'broker', 'credentials.json');
      writeCreds(path, FULL, mode);
      const err = refusal(() => discoverCredentials({ env }));
      expect(err.code).toBe('insecure_path');
      expect(err.message).toContain(`chmod 600 ${path}`);
      // The SDK entry point refuses too.
      expect(refusal(() => new BrokerClient({ env })).code).toBe('insecure_path');
    });
  }

  it("fail/the daemon's state-dir file made loose is refused too", () => {
    const { h, env } = home();
    const path = join(h, 'st', 'broker', 'credentials.json');
    writeCreds(path, FULL, 0o644);
    expect(refusal(() => discoverCredentials({ env })).message).toContain(`chmod 600 ${path}`);
  });

  it('ok/0600 and 0400 files are used', () => {
    for (const mode of [0o600, 0o400]) {
      const { h, env } = home();
      writeCreds(join(h, 'cfg', 'broker', 'credentials.json'), FULL, mode);
      expect(discoverCredentials({ env })).toMatchObject(FULL);
    }
  });

  it('ok/a loose file that discovery never needs to open is not an error', () => {
    const { h, env } = home();
    writeCreds(join(h, 'st', 'broker', 'credentials.json'), FULL, 0o644);
    writeCreds(join(h, 'cfg', 'broker', 'credentials.json'), FULL);
    expect(discoverCredentials({ env })).toMatchObject(FULL);
  });

  it.skipIf(noUsers)('fail/a 0600 file owned by bt-mallory: she would choose the broker', () => {
    const mallory = unixUser('bt-mallory');
    const { h, env } = home();
    const path = join(h, 'cfg', 'broker', 'credentials.json');
    writeCreds(path, { url: 'https://mallory.example', token: 'bku_mallory', ca: 'CA-m' });
    chownSync(path, mallory.uid, mallory.gid);
    const err = refusal(() => discoverCredentials({ env }));
    expect(err.code).toBe('insecure_path');
    expect(err.message).toContain(path);
    expect(err.message).toContain(`owned by uid ${mallory.uid}`);
  });

  it('fail/the CLI prints one line, broker: insecure_path: …, and exits 2', async () => {
    const { h, env } = home();
    const path = join(h, 'cfg', 'broker', 'credentials.json');
    writeCreds(path, FULL, 0o644);
    let out = '';
    let err = '';
    const code = await main(['status'], {
      stdout: { write: (s: string) => (out += s) },
      stderr: { write: (s: string) => (err += s) },
      stdin: process.stdin,
      env,
    });
    expect(code).toBe(2);
    expect(out).toBe('');
    expect(err).toMatch(/^broker: insecure_path: [^\n]+\n$/);
    expect(err).toContain(`run: chmod 600 ${path}`);
    expect(err).not.toContain('bku_user');
  });
});

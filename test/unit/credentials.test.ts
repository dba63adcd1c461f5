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

/** A PEM-shaped CA value (a file's `ca` is the PEM itself, or a path to it). */
function pem(tag: string): string {
  return `-----BEGIN CERTIFICATE-----\n${tag}\n-----END CERTIFICATE-----\n`;
}

const FULL = { url: 'https://user-file', token: 'bku_user', ca: pem('user') };

function home() {
  const h = mkdtempSync(join(tmpdir(), 'broker-cred-'));
  const env = {
    HOME: h,
    XDG_CONFIG_HOME: join(h, 'cfg'),
    XDG_STATE_HOME: join(h, 'st'),
    // Hermetic: not the machine's /etc/broker/client.json.
    BROKER_CLIENT_CONFIG: join(h, 'site', 'client.json'),
  };
  mkdirSync(join(h, 'cfg', 'broker'), { recursive: true });
  mkdirSync(join(h, 'st', 'broker'), { recursive: true });
  return { h, env };
}

function refusal(fn: () => unknown): BrokerError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(BrokerError);
    return err as BrokerError;
  }
  throw new Error('expected the credentials file to be refused');
}

describe('discoverCredentials', () => {
  it('options beat env beat user file beat state dir, field by field', () => {
    const { h, env } = home();
    writeCreds(join(h, 'cfg', 'broker', 'credentials.json'), {
      url: 'https://user-file',
      token: 'T-user',
      ca: pem('user'),
    });
    writeCreds(join(h, 'st', 'broker', 'credentials.json'), {
      url: 'https://state',
      token: 'T-state',
      ca: pem('state'),
    });
    writeFileSync(join(h, 'ca.pem'), pem('env'));
    expect(discoverCredentials({ env })).toMatchObject({
      url: 'https://user-file',
      token: 'T-user',
      ca: pem('user'),
    });
    const withEnv = { ...env, BROKER_TOKEN: 'T-env', BROKER_CA: join(h, 'ca.pem') };
    expect(discoverCredentials({ env: withEnv })).toMatchObject({
      url: 'https://user-file',
      token: 'T-env',
      ca: pem('env'),
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
      ca: pem('state'),
    });
    const c = discoverCredentials({ env: { ...env, BROKER_TOKEN: 'bks_x' } });
    expect(c).toMatchObject({ url: 'https://state', token: 'bks_x', ca: pem('state') });
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
    expect(discoverCredentials({ env })).toMatchObject({ urls: [], sources: {} });
    expect(discoverCredentials({ env }).token).toBeUndefined();
  });
});

describe('FS-5: loose or foreign credentials files are refused', () => {
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
    writeCreds(path, { url: 'https://mallory.example', token: 'bku_mallory', ca: pem('m') });
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

describe('the site client config and cached logins (issue 12)', () => {
  function site(h: string, value: unknown, mode = 0o644): string {
    mkdirSync(join(h, 'site'), { recursive: true, mode: 0o755 });
    const path = join(h, 'site', 'client.json');
    writeFileSync(path, JSON.stringify(value), { mode });
    chmodSync(path, mode);
    return path;
  }

  it('ok/read after the user file and the state dir: urls and a CA path relative to it; a token in it is never used', () => {
    const { h, env } = home();
    const path = site(h, { urls: ['https://a:1', 'https://b:2'], ca: 'ca.pem', token: 'bku_x' });
    writeFileSync(join(h, 'site', 'ca.pem'), pem('site'));
    const c = discoverCredentials({ env });
    expect(c).toMatchObject({
      url: 'https://a:1',
      urls: ['https://a:1', 'https://b:2'],
      ca: pem('site'),
    });
    expect(c.token).toBeUndefined();
    expect(c.sources).toMatchObject({
      url: path,
      ca: `${join(h, 'site', 'ca.pem')} (named in ${path})`,
    });
    // The user's own file wins, field by field.
    writeCreds(join(h, 'cfg', 'broker', 'credentials.json'), { token: 'bku_user' });
    expect(discoverCredentials({ env })).toMatchObject({ url: 'https://a:1', token: 'bku_user' });
  });

  it('fail/a site config or CA others can write is refused (they would choose your broker); a missing CA file is reported at the first request', async () => {
    const { h, env } = home();
    const path = site(h, { urls: ['https://a:1'], ca: pem('site') }, 0o666);
    const err = refusal(() => discoverCredentials({ env }));
    expect(err.code).toBe('insecure_path');
    expect(err.message).toContain(`${path} is writable by group and other`);
    chmodSync(path, 0o644);
    site(h, { urls: ['https://a:1'], ca: 'missing.pem' });
    const c = discoverCredentials({ env });
    expect(c.ca).toBeUndefined();
    expect(c.caProblem?.message).toContain(
      `${join(h, 'site', 'missing.pem')} named in ${path} does not exist`,
    );
    const client = new BrokerClient({ env });
    await expect(client.query()).rejects.toMatchObject({ code: 'validation_failed' });
  });

  it.skipIf(noUsers)('fail/a site config owned by bt-mallory is refused', () => {
    const mallory = unixUser('bt-mallory');
    const { h, env } = home();
    const path = site(h, { urls: ['https://mallory:1'], ca: pem('m') });
    chownSync(path, mallory.uid, mallory.gid);
    const err = refusal(() => discoverCredentials({ env }));
    expect(err.code).toBe('insecure_path');
    expect(err.message).toContain(`owned by uid ${mallory.uid}`);
  });

  it('ok/a cached login token goes only to the broker it is for (any of the site urls), and not once expired', () => {
    const { h, env } = home();
    site(h, { urls: ['https://a:1', 'https://b:2'], ca: pem('site') });
    const user = join(h, 'cfg', 'broker', 'credentials.json');
    const later = new Date(Date.now() + 3600_000).toISOString();
    writeCreds(user, { token: 'bku_b', login: { url: 'https://b:2', expiresAt: later } });
    expect(discoverCredentials({ env })).toMatchObject({
      token: 'bku_b',
      login: { url: 'https://b:2' },
    });
    // Pointed at another broker: the token stays home.
    expect(
      discoverCredentials({ env: { ...env, BROKER_URL: 'https://c:3' } }).token,
    ).toBeUndefined();
    writeCreds(user, {
      token: 'bku_b',
      login: { url: 'https://a:1', expiresAt: new Date(Date.now() - 1000).toISOString() },
    });
    expect(discoverCredentials({ env }).token).toBeUndefined();
  });
});

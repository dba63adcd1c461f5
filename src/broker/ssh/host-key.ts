/**
 * The gateway's ed25519 host key: created on first start (0600 in the state dir), its
 * fingerprint published through the pinned TLS API so clients never trust on first use.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import ssh2 from 'ssh2';

const { utils } = ssh2;
import type { StateDir } from '../state-dir.js';

export interface HostKey {
  /** OpenSSH private key text. */
  privateKey: string;
  /** `ssh-ed25519 AAAA…` (no comment). */
  publicKey: string;
  /** OpenSSH style: `SHA256:` + unpadded base64 of the key blob. */
  fingerprint: string;
}

/** The OpenSSH fingerprint of a public key blob. */
export function sshFingerprint(blob: Buffer): string {
  return 'SHA256:' + createHash('sha256').update(blob).digest('base64').replace(/=+$/, '');
}

/**
 * A new ed25519 private key in OpenSSH format that ssh2 can read back. ssh2 1.17's generator
 * occasionally (≈ 0.6 % of keys, measured) writes one its own parser rejects as "Malformed
 * OpenSSH private key", which would make a first start fail; such keys are discarded.
 */
export function newHostKeyPem(): string {
  for (let i = 0; i < 20; i++) {
    const pair = utils.generateKeyPairSync('ed25519');
    if (!(utils.parseKey(pair.private) instanceof Error)) return pair.private;
  }
  throw new Error('could not generate a readable ed25519 host key');
}

export function loadOrCreateHostKey(dir: StateDir): HostKey {
  const path = dir.file('hostKey');
  if (!existsSync(path)) dir.writePrivate('hostKey', newHostKeyPem());
  const privateKey = readFileSync(path, 'utf8');
  const parsed = utils.parseKey(privateKey);
  if (parsed instanceof Error)
    throw new Error(`cannot read the SSH host key ${path}: ${parsed.message}`);
  const blob = parsed.getPublicSSH();
  return {
    privateKey,
    publicKey: `${parsed.type} ${blob.toString('base64')}`,
    fingerprint: sshFingerprint(blob),
  };
}

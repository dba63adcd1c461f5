/** SSH public keys registered to principals: parsing, fingerprints, signature checks. */
import ssh2 from 'ssh2';
import { BrokerError } from '../../protocol/errors.js';
import { sshFingerprint } from './host-key.js';

const { utils } = ssh2;

/** Key types accepted for publickey auth (no DSA, no certificates). */
const ALLOWED = new Set([
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'ssh-rsa',
]);

export interface ParsedPublicKey {
  type: string;
  /** `type base64`, without the comment. */
  key: string;
  fingerprint: string;
  comment: string | null;
}

/** Parse one `authorized_keys`-style line; private keys and unknown types are refused. */
export function parsePublicKey(text: string): ParsedPublicKey {
  const line = text.trim();
  if (line.includes('PRIVATE KEY')) {
    throw new BrokerError(
      'validation_failed',
      'that is a private key; send the .pub file (it never leaves your machine otherwise)',
    );
  }
  const parsed = utils.parseKey(line);
  if (parsed instanceof Error || Array.isArray(parsed)) {
    throw new BrokerError(
      'validation_failed',
      'not an OpenSSH public key line (expected e.g. "ssh-ed25519 AAAA… comment")',
    );
  }
  if (parsed.isPrivateKey() || !ALLOWED.has(parsed.type)) {
    throw new BrokerError(
      'validation_failed',
      `key type ${parsed.type} is not accepted; use ed25519 or ECDSA`,
    );
  }
  const blob = parsed.getPublicSSH();
  const comment = line.split(/\s+/).slice(2).join(' ').slice(0, 100) || null;
  return {
    type: parsed.type,
    key: `${parsed.type} ${blob.toString('base64')}`,
    fingerprint: sshFingerprint(blob),
    comment,
  };
}

/** Does `signature` over `data` verify with the registered `key`? */
export function verifySignature(
  key: string,
  data: Buffer,
  signature: Buffer,
  hashAlgo?: string,
): boolean {
  const parsed = utils.parseKey(key);
  if (parsed instanceof Error || Array.isArray(parsed)) return false;
  return parsed.verify(data, signature, hashAlgo as never) === true;
}

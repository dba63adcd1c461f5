/**
 * The server's own key pair and CSRs: the private key is generated here and never sent anywhere
 * (the broker signs only the public key). @peculiar/x509 is loaded lazily.
 */
import { webcrypto } from 'node:crypto';

type CryptoKeyPair = webcrypto.CryptoKeyPair;

export interface LocalKey {
  keys: CryptoKeyPair;
  /** PKCS#8 PEM of the private key, for tls.createServer. */
  keyPem: string;
}

function pem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

export async function newLocalKey(): Promise<LocalKey> {
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
  return {
    keys,
    keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
  };
}

/** A PKCS#10 request for `key` (the subject is a placeholder: the broker chooses the names). */
export async function csrFor(key: LocalKey): Promise<string> {
  await import('reflect-metadata');
  const x509 = await import('@peculiar/x509');
  x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=session-broker-service',
    keys: key.keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
  });
  return csr.toString('pem');
}

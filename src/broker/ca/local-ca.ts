/**
 * The broker's own CA: an EC P-256 root created on first start (key 0600 in the state dir), built
 * with @peculiar/x509 on Node's WebCrypto, with proper SKI/AKI, keyUsage and basicConstraints so
 * that openssl and every TLS stack accept its chains. Leaves are EC P-256 (PERFORMANCE.md fact 4).
 */
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import type { StateDir } from '../state-dir.js';
import type { IssueRequest, IssuedCertificate, Lifetimes, Signer } from './signer.js';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const subtle = webcrypto.subtle;

/** A positive serial of 128 random bits (≥ 64 required). */
function serial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x10;
  return b.toString('hex');
}

export function fingerprintOf(certDer: ArrayBuffer | Buffer): string {
  return (
    'sha256:' +
    createHash('sha256')
      .update(Buffer.from(certDer as ArrayBuffer))
      .digest('hex')
  );
}

function toPem(label: string, der: ArrayBuffer): string {
  const b64 = Buffer.from(der).toString('base64').replace(/.{64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}${b64.endsWith('\n') ? '' : '\n'}-----END ${label}-----\n`;
}

function fromPem(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''), 'base64');
}

export async function generateKeyPair(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
}

export async function exportKeyPem(key: CryptoKey): Promise<string> {
  return toPem('PRIVATE KEY', await subtle.exportKey('pkcs8', key));
}

export class LocalCA implements Signer {
  private constructor(
    private readonly caCert: x509.X509Certificate,
    private readonly caKey: CryptoKey,
    readonly lifetimes: Lifetimes,
    readonly caCertPem: string,
  ) {}

  /** Load the CA from the state dir, creating it on first start. */
  static async open(
    dir: StateDir,
    lifetimes: Lifetimes,
    commonName = 'Session Broker CA',
  ): Promise<LocalCA> {
    const keyPath = dir.file('caKey');
    const certPath = dir.file('caCert');
    if (existsSync(keyPath) && existsSync(certPath)) {
      const key = await subtle.importKey(
        'pkcs8',
        fromPem(readFileSync(keyPath, 'utf8')),
        EC,
        false,
        ['sign'],
      );
      const pem = readFileSync(certPath, 'utf8');
      return new LocalCA(new x509.X509Certificate(pem), key as CryptoKey, lifetimes, pem);
    }
    const keys = await generateKeyPair();
    const now = new Date();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name: `CN=${commonName} ${now.toISOString().slice(0, 10)}`,
      notBefore: new Date(now.getTime() - 60_000),
      notAfter: new Date(now.getTime() + 10 * 365 * 86400_000),
      keys,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pem = cert.toString('pem') + '\n';
    // Key first: a crash between the two leaves no certificate without its key.
    dir.writePrivate('caKey', await exportKeyPem(keys.privateKey));
    dir.writePrivate('caCert', pem);
    return new LocalCA(cert, keys.privateKey, lifetimes, pem);
  }

  private clampLifetime(requested: number | undefined): number {
    const { minSeconds, defaultSeconds, maxSeconds } = this.lifetimes;
    return Math.min(maxSeconds, Math.max(minSeconds, requested ?? defaultSeconds));
  }

  async issue(req: IssueRequest): Promise<IssuedCertificate> {
    let keyPem: string | undefined;
    let publicKey: CryptoKey;
    if (req.publicKeySpki) {
      publicKey = (await subtle.importKey('spki', req.publicKeySpki, EC, true, [
        'verify',
      ])) as CryptoKey;
    } else {
      const keys = await generateKeyPair();
      publicKey = keys.publicKey;
      keyPem = await exportKeyPem(keys.privateKey);
    }
    const notBefore = new Date(Date.now() - 60_000);
    const notAfter = new Date(
      notBefore.getTime() + 60_000 + this.clampLifetime(req.lifetimeSeconds) * 1000,
    );
    const sans: x509.JsonGeneralName[] = [
      ...req.dnsNames.map((value) => ({ type: 'dns' as const, value })),
      ...req.ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    ];
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: new x509.Name([{ CN: [req.commonName] }]),
      issuer: this.caCert.subjectName,
      notBefore,
      notAfter,
      publicKey,
      signingKey: this.caKey,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(
          [
            req.usage === 'server'
              ? x509.ExtendedKeyUsage.serverAuth
              : x509.ExtendedKeyUsage.clientAuth,
          ],
          false,
        ),
        ...(sans.length ? [new x509.SubjectAlternativeNameExtension(sans, false)] : []),
        await x509.SubjectKeyIdentifierExtension.create(publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(this.caCert, false),
      ],
    });
    return {
      certPem: cert.toString('pem') + '\n',
      keyPem,
      fingerprint: fingerprintOf(cert.rawData),
      notBefore,
      notAfter,
      serialHex: cert.serialNumber,
    };
  }
}

/**
 * The broker's own CA: an EC P-256 root created on first start (key 0600 in the state dir), built
 * with @peculiar/x509 on Node's WebCrypto, with proper SKI/AKI, keyUsage and basicConstraints so
 * that openssl and every TLS stack accept its chains. Leaves are EC P-256 (PERFORMANCE.md fact 4).
 */
import { createHash, randomBytes, webcrypto } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import 'reflect-metadata';
import { AsnConvert } from '@peculiar/asn1-schema';
import {
  GeneralName,
  GeneralSubtree,
  GeneralSubtrees,
  NameConstraints,
  id_ce_nameConstraints,
} from '@peculiar/asn1-x509';
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

/**
 * What the CA may name (RFC 5280 §4.2.1.10, permitted subtrees): DNS names and their subdomains
 * (`localhost` covers every `*.localhost` service name) and IP ranges in CIDR form. A leaf naming
 * anything else does not verify under this root in any client that enforces name constraints
 * (OpenSSL, so Node, curl and Python; browsers), so a user who trusts the broker CA trusts it for
 * nothing but the broker (SECURITY.md SES-3).
 */
export interface CaNameConstraints {
  dnsNames: string[];
  ipRanges: string[];
}

/** The DER of a critical nameConstraints extension permitting exactly `c`. */
function nameConstraintsValue(c: CaNameConstraints): ArrayBuffer {
  const subtree = (base: GeneralName) => new GeneralSubtree({ base });
  return AsnConvert.serialize(
    new NameConstraints({
      permittedSubtrees: new GeneralSubtrees([
        ...c.dnsNames.map((dNSName) => subtree(new GeneralName({ dNSName }))),
        ...c.ipRanges.map((iPAddress) => subtree(new GeneralName({ iPAddress }))),
      ]),
    }),
  );
}

function sameBytes(a: ArrayBuffer | undefined, b: ArrayBuffer): boolean {
  return a !== undefined && Buffer.from(a).equals(Buffer.from(b));
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

  /**
   * Load the CA from the state dir, creating it on first start. With `constraints`, the root
   * carries them; a root whose constraints differ (an older broker's, or the site's names
   * changed) is re-issued with the same key, subject and key identifier, so certificates it
   * signed and clients that pinned the old root keep verifying — clients pick up the constraints
   * when they fetch the CA again (`broker ca`).
   */
  static async open(
    dir: StateDir,
    lifetimes: Lifetimes,
    opts: { commonName?: string; constraints?: CaNameConstraints } = {},
  ): Promise<LocalCA> {
    const keyPath = dir.file('caKey');
    const certPath = dir.file('caCert');
    const wanted = opts.constraints ? nameConstraintsValue(opts.constraints) : null;
    if (existsSync(keyPath) && existsSync(certPath)) {
      const pkcs8 = fromPem(readFileSync(keyPath, 'utf8'));
      const key = await subtle.importKey('pkcs8', pkcs8, EC, false, ['sign']);
      let pem = readFileSync(certPath, 'utf8');
      let cert = new x509.X509Certificate(pem);
      if (wanted && !sameBytes(cert.getExtension(id_ce_nameConstraints)?.value, wanted)) {
        const publicKey = await cert.publicKey.export(EC, ['verify'], webcrypto as never);
        cert = await LocalCA.selfSign(
          { privateKey: key as CryptoKey, publicKey: publicKey as CryptoKey },
          cert.subject,
          cert.notAfter,
          wanted,
        );
        pem = cert.toString('pem') + '\n';
        dir.writePrivate('caCert', pem);
      }
      return new LocalCA(cert, key as CryptoKey, lifetimes, pem);
    }
    const keys = await generateKeyPair();
    const now = new Date();
    const cert = await LocalCA.selfSign(
      keys,
      `CN=${opts.commonName ?? 'Session Broker CA'} ${now.toISOString().slice(0, 10)}`,
      new Date(now.getTime() + 10 * 365 * 86400_000),
      wanted,
    );
    const pem = cert.toString('pem') + '\n';
    // Key first: a crash between the two leaves no certificate without its key.
    dir.writePrivate('caKey', await exportKeyPem(keys.privateKey));
    dir.writePrivate('caCert', pem);
    return new LocalCA(cert, keys.privateKey, lifetimes, pem);
  }

  /** The root: CA:true with path length 0, keyCertSign/cRLSign, SKI, and the name constraints. */
  private static async selfSign(
    keys: CryptoKeyPair,
    name: string,
    notAfter: Date,
    constraints: ArrayBuffer | null,
  ): Promise<x509.X509Certificate> {
    return x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: serial(),
      name,
      notBefore: new Date(Date.now() - 60_000),
      notAfter,
      keys,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        ...(constraints ? [new x509.Extension(id_ce_nameConstraints, true, constraints)] : []),
      ],
    });
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

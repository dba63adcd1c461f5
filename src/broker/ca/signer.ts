/**
 * The signer interface (after step-ca `cas/apiv1`): what the broker needs from a CA. The local CA
 * implements it; an external CA (step-ca, Vault PKI) could later.
 */
export interface Lifetimes {
  minSeconds: number;
  defaultSeconds: number;
  maxSeconds: number;
}

export interface IssueRequest {
  /** Subject common name, chosen by the broker (e.g. `alice/viz` or `broker-api`). */
  commonName: string;
  dnsNames: string[];
  ipAddresses: string[];
  usage: 'server' | 'client';
  /** Requested lifetime; the signer clamps it to its Lifetimes. */
  lifetimeSeconds?: number;
  /** SPKI (DER) of the subject's public key; omitted → the signer generates a key pair. */
  publicKeySpki?: ArrayBuffer;
}

export interface IssuedCertificate {
  certPem: string;
  /** PKCS#8 PEM, only when the signer generated the key. */
  keyPem?: string;
  /** `sha256:` + hex of the DER certificate. */
  fingerprint: string;
  notBefore: Date;
  notAfter: Date;
  serialHex: string;
}

export interface Signer {
  readonly caCertPem: string;
  readonly lifetimes: Lifetimes;
  issue(req: IssueRequest): Promise<IssuedCertificate>;
}

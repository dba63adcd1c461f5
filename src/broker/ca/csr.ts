/**
 * CSR intake: the server keeps its private key on its own host and sends a PKCS#10 request. The
 * broker checks the signature and takes only the public key from it; names, extensions and
 * lifetime come from broker policy, never from the request (COMP-3).
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { BrokerError } from '../../protocol/errors.js';

export type CsrCheck = (pem: string) => Promise<ArrayBuffer>;

/** Returns the SPKI (DER) of a well-signed EC P-256 CSR, or throws validation_failed. */
export const checkCsr: CsrCheck = async (pem) => {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch {
    throw new BrokerError(
      'validation_failed',
      'csr is not a PEM-encoded PKCS#10 certificate request',
    );
  }
  let ok = false;
  try {
    ok = await csr.verify();
  } catch {
    ok = false;
  }
  if (!ok) throw new BrokerError('validation_failed', 'csr signature does not verify');
  const alg = csr.publicKey.algorithm as { name?: string; namedCurve?: string };
  if (alg.name !== 'ECDSA' || alg.namedCurve !== 'P-256') {
    throw new BrokerError(
      'validation_failed',
      'csr key must be EC P-256 (openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256)',
    );
  }
  return csr.publicKey.rawData;
};

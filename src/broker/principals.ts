/** Principals and their user tokens: admin management, plus self-service tokens. */
import { BrokerError } from '../protocol/errors.js';
import type { CreateTokenResponse, Principal, Role, TokenInfo } from '../protocol/types.js';
import type { AuditLog } from './audit.js';
import { actorOf, type Identity } from './auth.js';
import type { Clock } from './clock.js';
import { hashSecret, newId, newSecret } from './secrets.js';
import { principalJson, tokenJson } from './serialize.js';
import type { ServiceEvents } from './services.js';
import type { SshKeyRow, Store, TokenRow } from './store/store.js';
import { parsePublicKey } from './ssh/public-keys.js';
import type { Signer } from './ca/signer.js';
import type { CsrCheck } from './ca/csr.js';

function sshKeyJson(k: SshKeyRow) {
  return {
    fingerprint: k.fingerprint,
    principal: k.principal,
    key: k.key,
    comment: k.comment,
    createdAt: new Date(k.createdAt).toISOString(),
  };
}

export interface PrincipalDeps {
  signer?: Signer;
  csr?: CsrCheck;
  /** Lifetime requested for client certificates (the signer clamps it). */
  clientCertSeconds?: number;
  store: Store;
  clock: Clock;
  audit: AuditLog;
  portCooldownSeconds: number;
  events?: ServiceEvents;
}

export function requireAdmin(id: Identity): void {
  if (id.kind !== 'principal' || id.principal.role !== 'admin')
    throw new BrokerError('forbidden', 'this needs an admin token');
}

export class PrincipalAdmin {
  constructor(private readonly d: PrincipalDeps) {}

  private newToken(
    principal: string,
    label: string | null,
    ttlSeconds?: number,
  ): { token: string; row: TokenRow } {
    const now = this.d.clock.now();
    const token = newSecret('user');
    return {
      token,
      row: {
        id: newId('tok'),
        hash: hashSecret(token),
        principal,
        label,
        createdAt: now,
        expiresAt: ttlSeconds ? now + ttlSeconds * 1000 : null,
        revokedAt: null,
      },
    };
  }

  /** Create a principal with a first token (used by the API and by first start). */
  create(
    actor: string | null,
    name: string,
    role: Role,
    source: string | null,
  ): { principal: Principal; token: string; tokenId: string } {
    const { token, row } = this.newToken(name, 'initial', undefined);
    const p = { name, role, disabled: false, createdAt: this.d.clock.now() };
    this.d.store.createPrincipal(p, row);
    this.d.audit.record({
      actor,
      action: 'principal.create',
      target: name,
      outcome: 'ok',
      source,
      details: { role },
    });
    return { principal: principalJson(p), token, tokenId: row.id };
  }

  list(id: Identity): { principals: Principal[] } {
    requireAdmin(id);
    return { principals: this.d.store.listPrincipals().map(principalJson) };
  }

  get(id: Identity, name: string): Principal {
    requireAdmin(id);
    const p = this.d.store.getPrincipal(name);
    if (!p) throw new BrokerError('principal_not_found', `no principal ${name}`);
    return principalJson(p);
  }

  update(
    id: Identity,
    name: string,
    patch: { role?: Role; disabled?: boolean },
    source: string,
  ): Principal {
    requireAdmin(id);
    if (
      id.kind === 'principal' &&
      id.principal.name === name &&
      (patch.disabled || patch.role === 'user')
    ) {
      throw new BrokerError(
        'validation_failed',
        'an admin cannot disable or demote itself; use another admin',
      );
    }
    const p = this.d.store.updatePrincipal(name, patch);
    if (!p) throw new BrokerError('principal_not_found', `no principal ${name}`);
    this.d.audit.record({
      actor: actorOf(id),
      action: 'principal.update',
      target: name,
      outcome: 'ok',
      source,
      details: patch,
    });
    return principalJson(p);
  }

  remove(id: Identity, name: string, source: string): void {
    requireAdmin(id);
    if (id.kind === 'principal' && id.principal.name === name) {
      throw new BrokerError(
        'validation_failed',
        'an admin cannot remove itself; use another admin',
      );
    }
    const now = this.d.clock.now();
    const removed = this.d.store.deletePrincipal(
      name,
      now,
      now + this.d.portCooldownSeconds * 1000,
    );
    if (!removed) throw new BrokerError('principal_not_found', `no principal ${name}`);
    for (const s of removed) this.d.events?.removed(s, 'owner removed');
    this.d.audit.record({
      actor: actorOf(id),
      action: 'principal.remove',
      target: name,
      outcome: 'ok',
      source,
      details: { services: removed.length },
    });
  }

  /** Admins manage anyone's tokens; a principal manages its own. */
  private mayManage(id: Identity, principal: string): boolean {
    if (id.kind !== 'principal') {
      throw new BrokerError('forbidden', 'a service token cannot manage user tokens');
    }
    return id.principal.role === 'admin' || id.principal.name === principal;
  }

  /** Throw unless `id` may manage `principal`, which exists (others look exactly like missing). */
  private requireManaged(id: Identity, principal: string): void {
    if (!this.mayManage(id, principal) || !this.d.store.getPrincipal(principal)) {
      throw new BrokerError('principal_not_found', `no principal ${principal}`);
    }
  }

  listTokens(id: Identity, principal: string): { tokens: TokenInfo[] } {
    this.requireManaged(id, principal);
    return { tokens: this.d.store.listTokens(principal).map(tokenJson) };
  }

  createToken(
    id: Identity,
    principal: string,
    req: { label?: string; ttlSeconds?: number },
    source: string,
  ): CreateTokenResponse {
    this.requireManaged(id, principal);
    const { token, row } = this.newToken(principal, req.label ?? null, req.ttlSeconds);
    this.d.store.insertToken(row);
    this.d.audit.record({
      actor: actorOf(id),
      action: 'token.create',
      target: principal,
      outcome: 'ok',
      source,
      details: { tokenId: row.id },
    });
    return { token, tokenInfo: tokenJson(row) };
  }

  listSshKeys(id: Identity, principal: string) {
    this.requireManaged(id, principal);
    return { keys: this.d.store.listSshKeys(principal).map(sshKeyJson) };
  }

  addSshKey(id: Identity, principal: string, text: string, source: string) {
    this.requireManaged(id, principal);
    const k = parsePublicKey(text);
    const row = {
      fingerprint: k.fingerprint,
      principal,
      key: k.key,
      comment: k.comment,
      createdAt: this.d.clock.now(),
    };
    this.d.store.addSshKey(row);
    this.d.audit.record({
      actor: actorOf(id),
      action: 'ssh_key.add',
      target: principal,
      outcome: 'ok',
      source,
      details: { fingerprint: k.fingerprint },
    });
    return { key: sshKeyJson(row) };
  }

  removeSshKey(id: Identity, principal: string, fingerprint: string, source: string): void {
    if (!this.mayManage(id, principal) || !this.d.store.deleteSshKey(principal, fingerprint)) {
      throw new BrokerError('not_found', `no SSH key ${fingerprint.slice(0, 60)} for ${principal}`);
    }
    this.d.audit.record({
      actor: actorOf(id),
      action: 'ssh_key.remove',
      target: principal,
      outcome: 'ok',
      source,
      details: { fingerprint },
    });
  }

  /**
   * A short-lived client certificate for a principal (mTLS to https services): signed from the
   * caller's CSR (the key stays on the client), CN = the principal, clientAuth only, no names.
   */
  async issueClientCert(id: Identity, principal: string, csrPem: string, source: string) {
    this.requireManaged(id, principal);
    if (!this.d.signer || !this.d.csr)
      throw new BrokerError('internal', 'this broker has no CA configured');
    const spki = await this.d.csr(csrPem);
    const cert = await this.d.signer.issue({
      commonName: principal,
      dnsNames: [],
      ipAddresses: [],
      usage: 'client',
      lifetimeSeconds: this.d.clientCertSeconds,
      publicKeySpki: spki,
    });
    this.d.audit.record({
      actor: actorOf(id),
      action: 'cert.issue',
      target: principal,
      outcome: 'ok',
      source,
      details: {
        fingerprint: cert.fingerprint,
        usage: 'client',
        notAfter: cert.notAfter.toISOString(),
      },
    });
    return {
      cert: cert.certPem,
      ca: this.d.signer.caCertPem,
      fingerprint: cert.fingerprint,
      notAfter: cert.notAfter.toISOString(),
    };
  }

  revokeToken(id: Identity, tokenId: string, source: string): void {
    const t = /^tok_[a-z0-9]{16}$/.test(tokenId) ? this.d.store.getToken(tokenId) : null;
    if (
      !t ||
      !this.mayManage(id, t.principal) ||
      !this.d.store.revokeToken(tokenId, this.d.clock.now())
    ) {
      throw new BrokerError('token_not_found', `no active token ${tokenId}`);
    }
    this.d.audit.record({
      actor: actorOf(id),
      action: 'token.revoke',
      target: t.principal,
      outcome: 'ok',
      source,
      details: { tokenId },
    });
  }
}

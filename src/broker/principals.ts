/** Principals and their user tokens: admin management, plus self-service tokens. */
import { BrokerError } from '../protocol/errors.js';
import type { CreateTokenResponse, Principal, Role, TokenInfo } from '../protocol/types.js';
import type { AuditLog } from './audit.js';
import { actorOf, mintingToken, type Identity } from './auth.js';
import type { Clock } from './clock.js';
import { hashSecret, newId, newSecret } from './secrets.js';
import { principalJson, tokenJson } from './serialize.js';
import type { ChangeFeed } from './changes.js';
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
  changes: ChangeFeed;
}

/**
 * A new user token (`bku_…`) and its row. `parent` is the creating credential when a principal
 * makes a token for itself: the new one ends no later than it and is revoked with it (SES-2). A
 * token an admin makes for someone else, or a login issues, is an enrolment, not a derivation,
 * and stands on its own.
 */
export function newUserToken(
  now: number,
  principal: string,
  label: string | null,
  ttlSeconds?: number,
  parent?: { id: string; expiresAt: number | null },
): { token: string; row: TokenRow } {
  const token = newSecret('user');
  const own = ttlSeconds ? now + ttlSeconds * 1000 : null;
  const cap = parent?.expiresAt ?? null;
  return {
    token,
    row: {
      id: newId('tok'),
      hash: hashSecret(token),
      principal,
      label,
      createdAt: now,
      expiresAt: own === null ? cap : cap === null ? own : Math.min(own, cap),
      revokedAt: null,
      parentId: parent?.id ?? null,
    },
  };
}

export function requireAdmin(id: Identity): void {
  if (id.kind !== 'principal' || id.principal.role !== 'admin')
    throw new BrokerError('forbidden', 'this needs an admin token');
}

export class PrincipalAdmin {
  constructor(private readonly d: PrincipalDeps) {}

  /** Create a principal with a first token (used by the API and by first start). */
  create(
    actor: string | null,
    name: string,
    role: Role,
    source: string | null,
    uid: number | null = null,
  ): { principal: Principal; token: string; tokenId: string } {
    const { token, row } = newUserToken(this.d.clock.now(), name, 'initial', undefined);
    const p = {
      name,
      role,
      disabled: false,
      createdAt: this.d.clock.now(),
      uid,
      groups: null,
      managed: false,
    };
    this.d.store.createPrincipal(p, row);
    this.d.audit.record({
      actor,
      action: 'principal.create',
      target: name,
      outcome: 'ok',
      source,
      details: uid === null ? { role } : { role, uid },
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
    patch: { role?: Role; disabled?: boolean; uid?: number | null },
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
    // Disabled or demoted: its connections, keys and services follow now, not at next login.
    this.d.changes.publish({ kind: 'principal.changed', name, principal: p });
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
    for (const s of removed)
      this.d.changes.publish({ kind: 'service.removed', service: s, reason: 'owner removed' });
    this.d.changes.publish({ kind: 'principal.changed', name, principal: null });
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
    const minting = mintingToken(id);
    const self = id.kind === 'principal' && id.principal.name === principal && minting !== null;
    const { token, row } = newUserToken(
      this.d.clock.now(),
      principal,
      req.label ?? null,
      req.ttlSeconds,
      self ? { id: minting, expiresAt: id.tokenExpiresAt } : undefined,
    );
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
    this.d.changes.publish({ kind: 'ssh-key.removed', principal, fingerprint });
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
    // A certificate minted with a token ends no later than the token (SES-2).
    const tokenLeft =
      id.kind === 'principal' && id.tokenExpiresAt !== null
        ? Math.floor((id.tokenExpiresAt - this.d.clock.now()) / 1000)
        : Infinity;
    if (tokenLeft < this.d.signer.lifetimes.minSeconds)
      throw new BrokerError(
        'validation_failed',
        'the token you use ends too soon for a client certificate; create a longer-lived token first',
      );
    const cert = await this.d.signer.issue({
      commonName: principal,
      dnsNames: [],
      ipAddresses: [],
      usage: 'client',
      lifetimeSeconds: Math.min(this.d.clientCertSeconds ?? Infinity, tokenLeft),
      publicKeySpki: spki,
    });
    // Recorded, so a gate admits it only while it and its principal live, and revoking the
    // token it was issued with takes it too (SES-2).
    const certId = newId('crt');
    this.d.store.insertClientCert({
      id: certId,
      fingerprint: cert.fingerprint,
      principal,
      tokenId: mintingToken(id),
      createdAt: this.d.clock.now(),
      expiresAt: cert.notAfter.getTime(),
    });
    this.d.audit.record({
      actor: actorOf(id),
      action: 'cert.issue',
      target: principal,
      outcome: 'ok',
      source,
      details: {
        certId,
        fingerprint: cert.fingerprint,
        usage: 'client',
        notAfter: cert.notAfter.toISOString(),
      },
    });
    return {
      certId,
      cert: cert.certPem,
      ca: this.d.signer.caCertPem,
      fingerprint: cert.fingerprint,
      notAfter: cert.notAfter.toISOString(),
    };
  }

  /**
   * Revoke a token and everything minted with it: tokens its principal created with it, services
   * registered and keys loaded with any of those (SES-2). Live connections and caches follow
   * through the change feed.
   */
  revokeToken(id: Identity, tokenId: string, source: string | null): void {
    const t = /^tok_[a-z0-9]{16}$/.test(tokenId) ? this.d.store.getToken(tokenId) : null;
    const now = this.d.clock.now();
    const gone =
      t && this.mayManage(id, t.principal)
        ? this.d.store.revokeToken(tokenId, now, now + this.d.portCooldownSeconds * 1000)
        : null;
    if (!t || !gone) throw new BrokerError('token_not_found', `no active token ${tokenId}`);
    for (const r of gone.tokens)
      this.d.changes.publish({ kind: 'token.revoked', tokenId: r.id, principal: r.principal });
    for (const s of gone.services)
      this.d.changes.publish({ kind: 'service.removed', service: s, reason: 'token revoked' });
    for (const keyId of gone.keyIds) this.d.changes.publish({ kind: 'key.revoked', keyId });
    this.d.audit.record({
      actor: actorOf(id),
      action: 'token.revoke',
      target: t.principal,
      outcome: 'ok',
      source,
      details: {
        tokenId,
        ...(gone.tokens.length > 1 ? { tokens: gone.tokens.map((r) => r.id) } : {}),
        ...(gone.services.length
          ? { services: gone.services.map((s) => `${s.owner}/${s.name}`) }
          : {}),
        ...(gone.keyIds.length ? { keys: gone.keyIds.length } : {}),
        ...(gone.certIds.length ? { certificates: gone.certIds.length } : {}),
      },
    });
  }
}

/**
 * Allow-list serializers (SECURITY.md COMP-2): the only way rows leave the broker. Each names
 * the fields it copies, so a hash or secret added to a row can never leak by accident.
 */
import { serviceHostname } from '../protocol/names.js';
import type { AuditEvent, Principal, Service, TokenInfo } from '../protocol/types.js';
import type { AuditRow, KeyRow, PrincipalRow, ServiceRow, TokenRow } from './store/store.js';

const iso = (ms: number) => new Date(ms).toISOString();
const isoOrNull = (ms: number | null) => (ms === null ? null : iso(ms));

export function serviceJson(s: ServiceRow): Service {
  return {
    id: s.id,
    owner: s.owner,
    name: s.name,
    mode: s.mode,
    tunnel: s.tunnel,
    host: s.host,
    port: s.port,
    status: s.status,
    hostname: serviceHostname(s),
    exposure: s.exposure,
    createdAt: iso(s.createdAt),
    expiresAt: iso(s.expiresAt),
    lastSeenAt: isoOrNull(s.lastSeenAt),
    cert:
      s.certFingerprint && s.certNotAfter !== null
        ? { fingerprint: s.certFingerprint, notAfter: iso(s.certNotAfter) }
        : null,
    labels: { ...s.labels },
  };
}

export function principalJson(p: PrincipalRow): Principal {
  return {
    name: p.name,
    role: p.role,
    disabled: p.disabled,
    createdAt: iso(p.createdAt),
    uid: p.uid,
    groups: p.groups ? [...p.groups] : null,
    managed: p.managed,
  };
}

export function tokenJson(t: TokenRow): TokenInfo {
  return {
    id: t.id,
    principal: t.principal,
    label: t.label,
    createdAt: iso(t.createdAt),
    expiresAt: isoOrNull(t.expiresAt),
    revoked: t.revokedAt !== null,
  };
}

export function keyJson(k: KeyRow) {
  return {
    keyId: k.id,
    principal: k.principal,
    createdAt: iso(k.createdAt),
    expiresAt: iso(k.expiresAt),
    once: k.usesLeft !== null,
    lastUsedAt: isoOrNull(k.lastUsedAt),
  };
}

export function auditJson(a: AuditRow & { id: number }): AuditEvent {
  return {
    id: a.id,
    at: iso(a.at),
    actor: a.actor,
    action: a.action,
    target: a.target,
    outcome: a.outcome,
    source: a.source,
    count: a.count,
    details: a.details,
  };
}

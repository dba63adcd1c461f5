/**
 * The registry store: a narrow interface the domain talks to. SQLite (better-sqlite3) is the
 * embedded implementation; the interface speaks in rows and domain operations, never SQL, so a
 * networked SQL backend (PostgreSQL for several replicas) can implement it later without touching
 * the API layer. Every method is one transaction. Times are epoch milliseconds.
 */
import type {
  AppExposure,
  Role,
  ServiceMode,
  ServiceStatus,
  TunnelKind,
} from '../../protocol/types.js';

export interface PrincipalRow {
  name: string;
  role: Role;
  disabled: boolean;
  createdAt: number;
  /** The Unix user it is (null: not bound to one). */
  uid: number | null;
  /** Its Unix groups as NSS last reported them (null: never logged in as a Unix user). */
  groups: string[] | null;
  /** Created by site policy at a login: its role follows the admin groups at each login. */
  managed: boolean;
}

/** What a login learned of a Unix user, for {@link Store.recordLogin}. */
export interface UnixIdentity {
  name: string;
  uid: number;
  groups: string[];
  /** The role site policy gives it (applied to managed principals and new ones). */
  role: Role;
}

export interface TokenRow {
  id: string;
  hash: Buffer;
  principal: string;
  label: string | null;
  createdAt: number;
  expiresAt: number | null;
  revokedAt: number | null;
  /** The token of the same principal it was created with; revoking that one revokes this one. */
  parentId: string | null;
}

/** What revoking a token took with it, in the same transaction. */
export interface Revocation {
  /** The token and every token created from it, transitively. */
  tokens: TokenRow[];
  /** Services registered with any of them (removed; ports cooling down). */
  services: ServiceRow[];
  /** Client keys loaded with any of them (deleted). */
  keyIds: string[];
  /** Client certificates issued with any of them (deleted). */
  certIds: string[];
}

export interface ServiceRow {
  id: string;
  owner: string;
  name: string;
  mode: ServiceMode;
  tunnel: TunnelKind;
  host: string;
  port: number;
  status: ServiceStatus;
  tokenHash: Buffer;
  ttlSeconds: number;
  createdAt: number;
  expiresAt: number;
  lastSeenAt: number | null;
  heartbeatAt: number | null;
  certFingerprint: string | null;
  certNotAfter: number | null;
  labels: Record<string, string>;
  /** The user token it was registered with (null: unknown, e.g. registered before version 3). */
  tokenId: string | null;
  /** tunnel "none" on the broker host: the UID whose listener `ready` confirmed. */
  uid: number | null;
  exposure: AppExposure | null;
}

export interface KeyRow {
  id: string;
  hash: Buffer;
  serviceId: string;
  principal: string;
  createdAt: number;
  expiresAt: number;
  /** null: unlimited; otherwise the verifies left. */
  usesLeft: number | null;
  lastUsedAt: number | null;
  /** The user token it was loaded with. */
  tokenId: string | null;
}

/** A client certificate issued to a principal (mTLS). */
export interface ClientCertRow {
  /** `crt_…` */
  id: string;
  /** `sha256:` + hex of the DER certificate. */
  fingerprint: string;
  principal: string;
  /** The user token it was issued with. */
  tokenId: string | null;
  createdAt: number;
  expiresAt: number;
}

export interface SshKeyRow {
  /** OpenSSH fingerprint, `SHA256:…`. */
  fingerprint: string;
  principal: string;
  /** `type base64` (no comment). */
  key: string;
  comment: string | null;
  createdAt: number;
}

export interface AuditRow {
  at: number;
  actor: string | null;
  action: string;
  target: string | null;
  outcome: 'ok' | 'refused' | 'failed';
  source: string | null;
  count: number;
  details: Record<string, unknown> | null;
}

export type NewService = Omit<ServiceRow, 'port' | 'lastSeenAt' | 'heartbeatAt' | 'uid'>;

export interface PortPolicy {
  min: number;
  max: number;
  now: number;
  /** A specific port (tunnel `none` with `port`); otherwise the store picks one. */
  requested?: number;
}

export interface ServiceQuery {
  owner?: string;
  /** SQLite GLOB over `name`, or over `owner/name` when `globFull`. */
  glob?: string;
  globFull?: boolean;
  /** Keyset pagination: rows strictly after this (owner, name). */
  after?: { owner: string; name: string };
  limit: number;
}

export interface AuditQuery {
  since?: number;
  /** Only events whose actor is this principal or whose target is one of its services. */
  principal?: string;
  limit: number;
}

export interface Store {
  readonly kind: string;

  getMeta(key: string): string | null;
  setMeta(key: string, value: string): void;

  createPrincipal(row: PrincipalRow, token?: TokenRow): void;
  /**
   * A Unix user logged in: create its principal (managed) if there is none, else refresh its UID
   * and groups (and, when managed, its role) — and insert `token`, and remember the MUNGE
   * `credential` it came with — in one transaction. Null (nothing written) when that credential
   * was remembered before: a replay. Throws `forbidden` when the principal is disabled, bound to
   * another UID, or made by hand and not bound.
   */
  recordLogin(
    user: UnixIdentity,
    token: TokenRow,
    now: number,
    credential?: { hash: Buffer; expiresAt: number },
  ): { principal: PrincipalRow; created: boolean; roleChanged: boolean } | null;
  /** Whether a MUNGE credential (by hash) was accepted before and has not expired. */
  credentialSeen(hash: Buffer, now: number): boolean;
  getPrincipal(name: string): PrincipalRow | null;
  listPrincipals(): PrincipalRow[];
  updatePrincipal(
    name: string,
    patch: Partial<Pick<PrincipalRow, 'role' | 'disabled' | 'uid'>>,
  ): PrincipalRow | null;
  /** Remove a principal, its tokens, keys and services (ports go to cool-down). */
  deletePrincipal(name: string, now: number, cooldownUntil: number): ServiceRow[] | null;

  insertToken(row: TokenRow): void;
  findTokenByHash(hash: Buffer): TokenRow | null;
  getToken(id: string): TokenRow | null;
  listTokens(principal: string): TokenRow[];
  /**
   * Revoke a token and everything minted with it (tokens created from it, services registered and
   * keys loaded with any of them), in one transaction. Null when it was unknown or already revoked.
   */
  revokeToken(id: string, now: number, cooldownUntil: number): Revocation | null;
  /**
   * Hand what was minted with token `from` (tokens, services, keys) over to token `to` of the same
   * principal: a rotation keeps them, bounded by the successor (used when the bootstrap token is
   * re-issued at start).
   */
  handOverToken(from: string, to: string): void;

  /** Allocate a port and insert, in one immediate transaction. Throws BrokerError. */
  registerService(row: NewService, policy: PortPolicy): ServiceRow;
  getService(owner: string, name: string): ServiceRow | null;
  getServiceById(id: string): ServiceRow | null;
  findServiceByTokenHash(hash: Buffer): ServiceRow | null;
  /** The live service holding a port, if any. */
  findServiceByPort(port: number): ServiceRow | null;
  queryServices(q: ServiceQuery): ServiceRow[];
  updateService(
    id: string,
    patch: Partial<
      Pick<
        ServiceRow,
        'status' | 'expiresAt' | 'lastSeenAt' | 'heartbeatAt' | 'certFingerprint' | 'certNotAfter'
      >
    >,
  ): ServiceRow | null;
  /**
   * Move a live service to another free port (its old one is held by someone else on the host);
   * the old port cools down until `cooldownUntil`. Throws port_range_exhausted.
   */
  reassignPort(id: string, policy: PortPolicy, cooldownUntil: number): ServiceRow | null;
  /** Delete every key of a service (they may have been sent to someone else); returns their ids. */
  deleteKeysOfService(serviceId: string): string[];
  /** Record the UID whose listener a tunnel "none" service was confirmed on. */
  setServiceUid(id: string, uid: number | null): void;
  /** Delete the service and its keys; its port cools down until `cooldownUntil`. */
  removeService(id: string, cooldownUntil: number): boolean;
  /** Remove every service whose lease ended; returns them. */
  reapExpired(now: number, cooldownSeconds: number): ServiceRow[];
  /** Mark heartbeating services that went quiet offline; returns them. */
  markStale(heartbeatBefore: number): ServiceRow[];
  listServices(): ServiceRow[];
  /** At start: tunnels died with the previous process, so every ready `ssh` service is offline. */
  markTunnelsOffline(): ServiceRow[];

  insertKey(row: KeyRow): void;
  findKeyByHash(hash: Buffer): KeyRow | null;
  getKey(id: string): KeyRow | null;
  listKeys(serviceId: string, now: number): KeyRow[];
  /** Take one use of a counted key; false when none is left. */
  consumeKey(id: string, now: number): boolean;
  deleteKey(id: string): boolean;
  deleteExpiredKeys(now: number): number;
  /** Record last use times in one transaction (batched off the verify path). */
  touchKeys(uses: Map<string, number>): void;

  insertClientCert(row: ClientCertRow): void;
  findClientCert(fingerprint: string): ClientCertRow | null;
  getClientCert(id: string): ClientCertRow | null;
  deleteExpiredClientCerts(now: number): number;

  /** Register an SSH public key; throws BrokerError ssh_key_exists if its fingerprint is known. */
  addSshKey(row: SshKeyRow): void;
  listSshKeys(principal: string): SshKeyRow[];
  findSshKey(principal: string, fingerprint: string): SshKeyRow | null;
  deleteSshKey(principal: string, fingerprint: string): boolean;

  appendAudit(rows: AuditRow[]): void;
  listAudit(q: AuditQuery): (AuditRow & { id: number })[];

  /** Durability pragmas as read back (DUR-1). */
  pragmas(): Record<string, string | number>;
  close(): void;
}

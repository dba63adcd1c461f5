/** Wire types of the HTTP JSON API (DESIGN §4, §5). The broker, SDKs and CLI all use these. */

export type ServiceMode = 'tcp' | 'https';
export type TunnelKind = 'ssh' | 'none';
export type ServiceStatus = 'pending' | 'ready' | 'offline';
export type Role = 'user' | 'admin';

/**
 * How the app behind a gate can be reached by other local users, as `broker run` reports it
 * (SECURITY.md LOC-3): `unix-socket` (a socket in a 0700 directory), `private-network` (its own
 * network namespace), `app-credential` (the app checks a per-run credential the gate presents),
 * `open` (a loopback port with no check of its own: any local user reaches the app directly).
 */
export type AppExposure = 'unix-socket' | 'private-network' | 'app-credential' | 'open';

/** A service as the API returns it: never a secret, never a hash. */
export interface Service {
  id: string;
  owner: string;
  name: string;
  mode: ServiceMode;
  tunnel: TunnelKind;
  host: string;
  port: number;
  status: ServiceStatus;
  /**
   * The service's own DNS name (`NAME.OWNER.localhost`, or `svc-ID.localhost`): its certificate
   * names it and nothing else, so a client checking names reaches this service only (SES-3).
   */
  hostname: string;
  /** How the app behind the gate is exposed on its host; null when not reported. */
  exposure: AppExposure | null;
  createdAt: string;
  expiresAt: string;
  lastSeenAt: string | null;
  cert: { fingerprint: string; notAfter: string } | null;
  labels: Record<string, string>;
}

export interface RegisterRequest {
  name: string;
  mode?: ServiceMode;
  tunnel?: TunnelKind;
  host?: string;
  port?: number;
  ttlSeconds?: number;
  csr?: string;
  labels?: Record<string, string>;
  /** Reported by `broker run`: how the app behind its gate can be reached locally. */
  exposure?: AppExposure;
}

export interface RegisterResponse {
  service: Service;
  serviceToken: string;
  tls?: { cert: string; key?: string; ca: string };
}

export interface LoadRequest {
  ttlSeconds?: number;
  once?: boolean;
}

/** Ready-to-paste commands for reaching a service. */
export interface ConnectInfo {
  /** Where the service listens as seen from the broker host. */
  host: string;
  port: number;
  /** `ssh -N -L` through the broker's gateway (stock OpenSSH). */
  ssh: string;
  /** The gateway's `known_hosts` line, so stock OpenSSH checks its host key. */
  knownHosts?: string;
  /** For https services: the URL on the local end of that tunnel. */
  url?: string;
  /** The key handshake for tcp services, from a shell. */
  netcat?: string;
}

export interface LoadResponse {
  service: Service;
  key: string;
  keyId: string;
  expiresAt: string;
  once: boolean;
  ca?: string;
  connect: ConnectInfo;
}

/**
 * The answer to a presented key. `once` keys are use-limited: a gate must never cache them
 * (SES-1), every presentation goes to the broker.
 */
export type VerifyResponse =
  | { valid: true; principal: string; keyId: string; expiresAt: string; once: boolean }
  | { valid: false };

export interface QueryResponse {
  services: Service[];
  nextCursor?: string;
}

export interface Principal {
  name: string;
  role: Role;
  disabled: boolean;
  createdAt: string;
  /** The Unix user it is, when bound to one (a login, or an admin set it). */
  uid: number | null;
  /** Its Unix groups as the broker host's NSS reported them at its last login. */
  groups: string[] | null;
  /** Created by site policy at a login; its role follows the site's admin groups. */
  managed: boolean;
}

/** What `POST /v1/login` answers: a user token (`bku_…`), shown once, and who it is for. */
export interface LoginResponse {
  token: string;
  tokenId: string;
  expiresAt: string;
  principal: Principal;
  /** How the caller was identified. */
  method: 'munge' | 'peer';
}

export interface TokenInfo {
  id: string;
  principal: string;
  label: string | null;
  createdAt: string;
  expiresAt: string | null;
  revoked: boolean;
}

export interface CreateTokenResponse {
  token: string;
  tokenInfo: TokenInfo;
}

/** `GET /v1/whoami`: who the token is for, and the token itself (id, expiry; never the secret). */
export type WhoAmI = (
  { kind: 'principal'; principal: Principal } | { kind: 'service'; service: Service }
) & { token?: { id: string; expiresAt: string | null } };

export interface Health {
  status: 'ok';
  version: string;
  /** The SSH gateway; `fingerprint` is what clients pin (`SHA256:…`). */
  gateway?: {
    host: string;
    port: number;
    hostKey: string;
    fingerprint: string;
    nativeCrypto?: boolean;
  };
  /**
   * The service port range, and whether it is protected (below the host's
   * `net.ipv4.ip_unprivileged_port_start`: no unprivileged user can bind those ports even while
   * the broker restarts, SECURITY.md LOC-4).
   */
  ports?: { range: string; protected: boolean };
  /**
   * How a client may log in as the Unix user it runs as (`POST /v1/login`): with a MUNGE
   * credential, and/or on the broker host by its connection alone. `uid` is the broker's own
   * UID, to restrict a credential to it (`munge -n -u UID`) so no one else can decode it.
   */
  identity?: { munge: boolean; peer: boolean; uid: number | null };
}

export interface AuditEvent {
  id: number;
  at: string;
  actor: string | null;
  action: string;
  target: string | null;
  outcome: 'ok' | 'refused' | 'failed';
  source: string | null;
  count: number;
  details: Record<string, unknown> | null;
}

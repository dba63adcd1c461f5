/** Wire types of the HTTP JSON API (DESIGN §4, §5). The broker, SDKs and CLI all use these. */

export type ServiceMode = 'tcp' | 'https';
export type TunnelKind = 'ssh' | 'none';
export type ServiceStatus = 'pending' | 'ready' | 'offline';
export type Role = 'user' | 'admin';

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

export type VerifyResponse =
  { valid: true; principal: string; keyId: string; expiresAt: string } | { valid: false };

export interface QueryResponse {
  services: Service[];
  nextCursor?: string;
}

export interface Principal {
  name: string;
  role: Role;
  disabled: boolean;
  createdAt: string;
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

export type WhoAmI =
  { kind: 'principal'; principal: Principal } | { kind: 'service'; service: Service };

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

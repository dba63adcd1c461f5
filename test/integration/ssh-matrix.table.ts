/**
 * SECURITY.md SSH-1: the checked-in expected table for the SSH gateway (after OpenSSH's
 * regress/forward-control.sh). ssh-matrix.test.ts runs every row against a real daemon.
 *
 * The cast (created by the test):
 *   - `owner`: alice, who owns `alice/tun` (tunnelled, ready, echo), `alice/none` (tunnel "none",
 *     ready, an echo server on its registered host 127.0.0.1) and `alice/rev` (tunnelled);
 *   - `otherUser`: bob, a plain user who owns nothing;
 *   - `admin`: the bootstrap admin (canSee() lets admins reach every service);
 *   - `serviceToken`: the service token of `alice/rev`, user name alice (its owner);
 *   - `unauthenticated`: a connection that never authenticates: every request is sent after the
 *     key exchange but before user authentication, then a wrong password is offered;
 *   - carol owns `carol/tun` (tunnelled, ready, echo): "another user's service".
 *
 * Expectations follow gateway.ts (`decideForward`) and DESIGN §6: only a principal that may see a
 * ready service (its owner or an admin) may direct-tcpip to it; tunnelled services only through
 * the loopback literals 127.0.0.1 / ::1 / localhost (after canonicalisation, so ::ffff:127.0.0.1
 * and [::1] count); tunnel "none" services only at their registered host; service tokens only
 * tcpip-forward their own port (0 or the allocated one), published on 127.0.0.1; everything
 * else is refused.
 */

export type Principal = 'owner' | 'otherUser' | 'admin' | 'serviceToken' | 'unauthenticated';

export const PRINCIPALS: readonly Principal[] = [
  'owner',
  'otherUser',
  'admin',
  'serviceToken',
  'unauthenticated',
];

/** Ports the test resolves at run time. */
export type PortRef =
  /** alice/tun's allocated port. */
  | 'ownTunnel'
  /** carol/tun's allocated port. */
  | 'othersTunnel'
  /** alice/none's allocated port. */
  | 'ownNone'
  /** alice/rev's allocated port (the service token's own port). */
  | 'tokenService'
  /** A port in the range that no service holds; a sentinel listens on 127.0.0.1 there. */
  | 'unallocated'
  /** Another unallocated port in the range, with nothing listening (tcpip-forward rows). */
  | 'unallocatedFree'
  /** The daemon's HTTPS API port: outside the service range. */
  | 'apiPort'
  /** A port outside the range where a sentinel listens on 127.0.0.1. */
  | 'outsideSentinel'
  | number;

export interface Dest {
  host: string;
  port: PortRef;
  /** Which counting listener would see a connection if the gateway dialled this target. */
  sentinel?: 'unallocated' | 'outside' | 'noneAltLoopback';
}

/** direct-tcpip destinations. */
export const DESTS = {
  'own tunnel as 127.0.0.1': { host: '127.0.0.1', port: 'ownTunnel' },
  'own tunnel as localhost': { host: 'localhost', port: 'ownTunnel' },
  'own tunnel as ::1': { host: '::1', port: 'ownTunnel' },
  'own tunnel as [::1]': { host: '[::1]', port: 'ownTunnel' },
  'own tunnel as ::ffff:127.0.0.1': { host: '::ffff:127.0.0.1', port: 'ownTunnel' },
  'own tunnel as 127.1': { host: '127.1', port: 'ownTunnel' },
  'own tunnel as 2130706433': { host: '2130706433', port: 'ownTunnel' },
  'own tunnel as 0.0.0.0': { host: '0.0.0.0', port: 'ownTunnel' },
  'own tunnel as 127.0.0.2': { host: '127.0.0.2', port: 'ownTunnel' },
  'own tunnel as example.com': { host: 'example.com', port: 'ownTunnel' },
  "another user's tunnel": { host: '127.0.0.1', port: 'othersTunnel' },
  'unallocated port in range': { host: '127.0.0.1', port: 'unallocated', sentinel: 'unallocated' },
  'port 22': { host: '127.0.0.1', port: 22 },
  'outside range: API port': { host: '127.0.0.1', port: 'apiPort' },
  'outside range: sentinel': { host: '127.0.0.1', port: 'outsideSentinel', sentinel: 'outside' },
  '10.0.0.1:80': { host: '10.0.0.1', port: 80 },
  '169.254.169.254:80': { host: '169.254.169.254', port: 80 },
  '8.8.8.8:53': { host: '8.8.8.8', port: 53 },
  'example.com:80': { host: 'example.com', port: 80 },
  'own none-service at its host': { host: '127.0.0.1', port: 'ownNone' },
  'own none-service as 127.0.0.2': {
    host: '127.0.0.2',
    port: 'ownNone',
    sentinel: 'noneAltLoopback',
  },
  'own none-service as localhost': { host: 'localhost', port: 'ownNone' },
} as const satisfies Record<string, Dest>;

export type DestName = keyof typeof DESTS;

/** tcpip-forward (reverse tunnel) binds. */
export const BINDS = {
  'port 0': { host: '127.0.0.1', port: 0 },
  'port 0 on 0.0.0.0 (published on loopback only)': { host: '0.0.0.0', port: 0 },
  "the token's own port": { host: '127.0.0.1', port: 'tokenService' },
  "another service's port": { host: '127.0.0.1', port: 'ownTunnel' },
  'an unallocated port in range': { host: '127.0.0.1', port: 'unallocatedFree' },
  'a port outside the range': { host: '127.0.0.1', port: 'outsideSentinel' },
} as const satisfies Record<string, { host: string; port: PortRef }>;

export type BindName = keyof typeof BINDS;

/**
 * Requests other than direct-tcpip and tcpip-forward. `session`, `x11-channel` and
 * `agent-channel` are raw channel opens; exec/shell/sftp/x11/agent are what ssh2's Client does
 * (a session channel, then a request on it — the session is already refused).
 */
export type OtherRequest =
  | 'streamlocal'
  | 'streamlocal-forward'
  | 'session'
  | 'exec'
  | 'shell'
  | 'sftp'
  | 'x11'
  | 'x11-channel'
  | 'agent'
  | 'agent-channel';

export type Row =
  | {
      principal: Principal;
      request: 'direct-tcpip';
      dest: DestName;
      expect: 'allow' | 'deny';
      why: string;
    }
  | {
      principal: Principal;
      request: 'tcpip-forward';
      dest: BindName;
      expect: 'allow' | 'deny';
      why: string;
    }
  | {
      principal: Principal;
      request: OtherRequest;
      dest?: undefined;
      expect: 'allow' | 'deny';
      why: string;
    };

const W = {
  ok: 'may see the ready service; a loopback literal names a tunnelled service',
  okMapped: 'may see it; ::ffff:127.0.0.1 canonicalises to 127.0.0.1',
  okBracket: 'may see it; [::1] canonicalises to ::1',
  okNone: 'may see the ready tunnel:none service, named by its registered host',
  notLiteral: 'not a canonical loopback literal (no inet_aton shorthand, no DNS)',
  wildcard: '0.0.0.0 is not a loopback literal',
  otherLoopback: 'a tunnelled service is named 127.0.0.1/::1/localhost only',
  noDns: 'names are never resolved (SSH-2)',
  notVisible: 'not the owner and not an admin: no such service',
  unallocated: 'no service holds the port',
  outside: 'outside the service port range',
  external: 'outside the service port range; the gateway never dials out',
  noneHost: 'a tunnel:none service is reached only at its registered host',
  token: 'service tokens may only attach reverse tunnels',
  unauth: 'not authenticated: ssh2 refuses channels and global requests before auth',
  reverseUser: 'reverse tunnels need a service token',
  reverseOwn: 'a service token forwards its own port (0 or the allocated one), on 127.0.0.1',
  reverseOther: 'only port 0 or the allocated port of the token’s service',
  channel: 'only direct-tcpip channels exist on the gateway',
  request: 'only tcpip-forward global requests exist on the gateway',
  unknownChannel: 'not a channel type a client may open (ssh2: unknown channel type)',
} as const;

// prettier-ignore
export const ROWS: Row[] = [
  // ---- direct-tcpip: owner (alice) --------------------------------------------------------
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.1', expect: 'allow', why: W.ok },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as localhost', expect: 'allow', why: W.ok },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as ::1', expect: 'allow', why: W.ok },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as [::1]', expect: 'allow', why: W.okBracket },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as ::ffff:127.0.0.1', expect: 'allow', why: W.okMapped },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as 127.1', expect: 'deny', why: W.notLiteral },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as 2130706433', expect: 'deny', why: W.notLiteral },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as 0.0.0.0', expect: 'deny', why: W.wildcard },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.2', expect: 'deny', why: W.otherLoopback },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own tunnel as example.com', expect: 'deny', why: W.noDns },
  { principal: 'owner', request: 'direct-tcpip', dest: "another user's tunnel", expect: 'deny', why: W.notVisible },
  { principal: 'owner', request: 'direct-tcpip', dest: 'unallocated port in range', expect: 'deny', why: W.unallocated },
  { principal: 'owner', request: 'direct-tcpip', dest: 'port 22', expect: 'deny', why: W.outside },
  { principal: 'owner', request: 'direct-tcpip', dest: 'outside range: API port', expect: 'deny', why: W.outside },
  { principal: 'owner', request: 'direct-tcpip', dest: 'outside range: sentinel', expect: 'deny', why: W.outside },
  { principal: 'owner', request: 'direct-tcpip', dest: '10.0.0.1:80', expect: 'deny', why: W.external },
  { principal: 'owner', request: 'direct-tcpip', dest: '169.254.169.254:80', expect: 'deny', why: W.external },
  { principal: 'owner', request: 'direct-tcpip', dest: '8.8.8.8:53', expect: 'deny', why: W.external },
  { principal: 'owner', request: 'direct-tcpip', dest: 'example.com:80', expect: 'deny', why: W.external },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own none-service at its host', expect: 'allow', why: W.okNone },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own none-service as 127.0.0.2', expect: 'deny', why: W.noneHost },
  { principal: 'owner', request: 'direct-tcpip', dest: 'own none-service as localhost', expect: 'deny', why: W.noneHost },

  // ---- direct-tcpip: another user (bob) ---------------------------------------------------
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.1', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as localhost', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as ::1', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as [::1]', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as ::ffff:127.0.0.1', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as 127.1', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as 2130706433', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as 0.0.0.0', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.2', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own tunnel as example.com', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: "another user's tunnel", expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'unallocated port in range', expect: 'deny', why: W.unallocated },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'port 22', expect: 'deny', why: W.outside },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'outside range: API port', expect: 'deny', why: W.outside },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'outside range: sentinel', expect: 'deny', why: W.outside },
  { principal: 'otherUser', request: 'direct-tcpip', dest: '10.0.0.1:80', expect: 'deny', why: W.external },
  { principal: 'otherUser', request: 'direct-tcpip', dest: '169.254.169.254:80', expect: 'deny', why: W.external },
  { principal: 'otherUser', request: 'direct-tcpip', dest: '8.8.8.8:53', expect: 'deny', why: W.external },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'example.com:80', expect: 'deny', why: W.external },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own none-service at its host', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own none-service as 127.0.0.2', expect: 'deny', why: W.notVisible },
  { principal: 'otherUser', request: 'direct-tcpip', dest: 'own none-service as localhost', expect: 'deny', why: W.notVisible },

  // ---- direct-tcpip: admin (sees every service) -------------------------------------------
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.1', expect: 'allow', why: W.ok },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as localhost', expect: 'allow', why: W.ok },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as ::1', expect: 'allow', why: W.ok },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as [::1]', expect: 'allow', why: W.okBracket },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as ::ffff:127.0.0.1', expect: 'allow', why: W.okMapped },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as 127.1', expect: 'deny', why: W.notLiteral },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as 2130706433', expect: 'deny', why: W.notLiteral },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as 0.0.0.0', expect: 'deny', why: W.wildcard },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.2', expect: 'deny', why: W.otherLoopback },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own tunnel as example.com', expect: 'deny', why: W.noDns },
  { principal: 'admin', request: 'direct-tcpip', dest: "another user's tunnel", expect: 'allow', why: W.ok },
  { principal: 'admin', request: 'direct-tcpip', dest: 'unallocated port in range', expect: 'deny', why: W.unallocated },
  { principal: 'admin', request: 'direct-tcpip', dest: 'port 22', expect: 'deny', why: W.outside },
  { principal: 'admin', request: 'direct-tcpip', dest: 'outside range: API port', expect: 'deny', why: W.outside },
  { principal: 'admin', request: 'direct-tcpip', dest: 'outside range: sentinel', expect: 'deny', why: W.outside },
  { principal: 'admin', request: 'direct-tcpip', dest: '10.0.0.1:80', expect: 'deny', why: W.external },
  { principal: 'admin', request: 'direct-tcpip', dest: '169.254.169.254:80', expect: 'deny', why: W.external },
  { principal: 'admin', request: 'direct-tcpip', dest: '8.8.8.8:53', expect: 'deny', why: W.external },
  { principal: 'admin', request: 'direct-tcpip', dest: 'example.com:80', expect: 'deny', why: W.external },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own none-service at its host', expect: 'allow', why: W.okNone },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own none-service as 127.0.0.2', expect: 'deny', why: W.noneHost },
  { principal: 'admin', request: 'direct-tcpip', dest: 'own none-service as localhost', expect: 'deny', why: W.noneHost },

  // ---- direct-tcpip: service token (alice/rev) --------------------------------------------
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.1', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as localhost', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as ::1', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as [::1]', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as ::ffff:127.0.0.1', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as 127.1', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as 2130706433', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as 0.0.0.0', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.2', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own tunnel as example.com', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: "another user's tunnel", expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'unallocated port in range', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'port 22', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'outside range: API port', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'outside range: sentinel', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: '10.0.0.1:80', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: '169.254.169.254:80', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: '8.8.8.8:53', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'example.com:80', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own none-service at its host', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own none-service as 127.0.0.2', expect: 'deny', why: W.token },
  { principal: 'serviceToken', request: 'direct-tcpip', dest: 'own none-service as localhost', expect: 'deny', why: W.token },

  // ---- direct-tcpip: unauthenticated ------------------------------------------------------
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.1', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as localhost', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as ::1', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as [::1]', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as ::ffff:127.0.0.1', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as 127.1', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as 2130706433', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as 0.0.0.0', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as 127.0.0.2', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own tunnel as example.com', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: "another user's tunnel", expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'unallocated port in range', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'port 22', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'outside range: API port', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'outside range: sentinel', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: '10.0.0.1:80', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: '169.254.169.254:80', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: '8.8.8.8:53', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'example.com:80', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own none-service at its host', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own none-service as 127.0.0.2', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'direct-tcpip', dest: 'own none-service as localhost', expect: 'deny', why: W.unauth },

  // ---- tcpip-forward (reverse tunnels) ----------------------------------------------------
  { principal: 'owner', request: 'tcpip-forward', dest: 'port 0', expect: 'deny', why: W.reverseUser },
  { principal: 'owner', request: 'tcpip-forward', dest: 'port 0 on 0.0.0.0 (published on loopback only)', expect: 'deny', why: W.reverseUser },
  { principal: 'owner', request: 'tcpip-forward', dest: "the token's own port", expect: 'deny', why: W.reverseUser },
  { principal: 'owner', request: 'tcpip-forward', dest: "another service's port", expect: 'deny', why: W.reverseUser },
  { principal: 'owner', request: 'tcpip-forward', dest: 'an unallocated port in range', expect: 'deny', why: W.reverseUser },
  { principal: 'owner', request: 'tcpip-forward', dest: 'a port outside the range', expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: 'port 0', expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: 'port 0 on 0.0.0.0 (published on loopback only)', expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: "the token's own port", expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: "another service's port", expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: 'an unallocated port in range', expect: 'deny', why: W.reverseUser },
  { principal: 'otherUser', request: 'tcpip-forward', dest: 'a port outside the range', expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: 'port 0', expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: 'port 0 on 0.0.0.0 (published on loopback only)', expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: "the token's own port", expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: "another service's port", expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: 'an unallocated port in range', expect: 'deny', why: W.reverseUser },
  { principal: 'admin', request: 'tcpip-forward', dest: 'a port outside the range', expect: 'deny', why: W.reverseUser },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: 'port 0', expect: 'allow', why: W.reverseOwn },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: 'port 0 on 0.0.0.0 (published on loopback only)', expect: 'allow', why: W.reverseOwn },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: "the token's own port", expect: 'allow', why: W.reverseOwn },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: "another service's port", expect: 'deny', why: W.reverseOther },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: 'an unallocated port in range', expect: 'deny', why: W.reverseOther },
  { principal: 'serviceToken', request: 'tcpip-forward', dest: 'a port outside the range', expect: 'deny', why: W.reverseOther },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: 'port 0', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: 'port 0 on 0.0.0.0 (published on loopback only)', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: "the token's own port", expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: "another service's port", expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: 'an unallocated port in range', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'tcpip-forward', dest: 'a port outside the range', expect: 'deny', why: W.unauth },

  // ---- everything else: refused for everyone ----------------------------------------------
  { principal: 'owner', request: 'streamlocal', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'streamlocal-forward', expect: 'deny', why: W.request },
  { principal: 'owner', request: 'session', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'exec', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'shell', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'sftp', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'x11', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'x11-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'owner', request: 'agent', expect: 'deny', why: W.channel },
  { principal: 'owner', request: 'agent-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'otherUser', request: 'streamlocal', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'streamlocal-forward', expect: 'deny', why: W.request },
  { principal: 'otherUser', request: 'session', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'exec', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'shell', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'sftp', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'x11', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'x11-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'otherUser', request: 'agent', expect: 'deny', why: W.channel },
  { principal: 'otherUser', request: 'agent-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'admin', request: 'streamlocal', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'streamlocal-forward', expect: 'deny', why: W.request },
  { principal: 'admin', request: 'session', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'exec', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'shell', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'sftp', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'x11', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'x11-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'admin', request: 'agent', expect: 'deny', why: W.channel },
  { principal: 'admin', request: 'agent-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'serviceToken', request: 'streamlocal', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'streamlocal-forward', expect: 'deny', why: W.request },
  { principal: 'serviceToken', request: 'session', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'exec', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'shell', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'sftp', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'x11', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'x11-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'serviceToken', request: 'agent', expect: 'deny', why: W.channel },
  { principal: 'serviceToken', request: 'agent-channel', expect: 'deny', why: W.unknownChannel },
  { principal: 'unauthenticated', request: 'streamlocal', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'streamlocal-forward', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'session', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'exec', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'shell', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'sftp', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'x11', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'x11-channel', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'agent', expect: 'deny', why: W.unauth },
  { principal: 'unauthenticated', request: 'agent-channel', expect: 'deny', why: W.unauth },
];

/** A short label for test names and failure messages. */
export function rowLabel(r: Row): string {
  return `${r.principal} ${r.request}${r.dest ? ` → ${r.dest}` : ''} ⇒ ${r.expect}`;
}

/**
 * Daemon configuration: one frozen DEFAULTS object, then file < env < flags, validated by a strict
 * schema (unknown keys are an error), then frozen. Units are in the names.
 */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { DEFAULT_API_PORT, DEFAULT_SSH_PORT } from '../protocol/constants.js';

export const DEFAULTS = Object.freeze({
  /** HTTPS API address; the port may be 0 (tests). */
  listen: `127.0.0.1:${DEFAULT_API_PORT}`,
  /** SSH gateway address. */
  sshListen: `127.0.0.1:${DEFAULT_SSH_PORT}`,
  /** Inclusive range of service ports handed out. */
  portRange: '20000-20999',
  /** The name clients use to reach this broker; defaults to the listen host. */
  publicHost: null as string | null,
  /**
   * A DNS domain the site points at its nodes (wildcard records), under which services also get
   * a name (`NAME.OWNER.<serviceDomain>`); null: services are named under `localhost` only.
   */
  serviceDomain: null as string | null,
  /** State directory; null → $BROKER_DATA or $XDG_STATE_HOME/broker. */
  dataDir: null as string | null,
  /** Service lease when the register request gives none. */
  serviceTtlSeconds: 24 * 3600,
  /** Longest lease a register or heartbeat may ask for. */
  serviceMaxTtlSeconds: 7 * 24 * 3600,
  /** A service that heartbeats and misses them this long goes offline. */
  heartbeatGraceSeconds: 90,
  /** Client key lifetime when `load` gives none. */
  keyTtlSeconds: 12 * 3600,
  /** Longest client key lifetime a `load` may ask for. */
  keyMaxTtlSeconds: 7 * 24 * 3600,
  /** A released port is not handed out again for this long. */
  portCooldownSeconds: 60,
  /** How often leases are checked. */
  reapIntervalSeconds: 5,
  /** Service certificate lifetimes (the signer clamps to these). */
  certMinLifetimeSeconds: 3600,
  certDefaultLifetimeSeconds: 24 * 3600,
  certMaxLifetimeSeconds: 7 * 24 * 3600,
  /** HTTP server limits (SECURITY.md NET-3). */
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  maxHeaderBytes: 16 * 1024,
  maxConnections: 1024,
  /** API connections one source (a local UID, or a remote address) may hold at once (LOC-5). */
  maxConnectionsPerSource: 128,
  keepAliveTimeoutMs: 5_000,
  /** Failed verifies a service may see per window before backoff (SECURITY.md BF-1). */
  verifyMaxFailures: 30,
  verifyFailureWindowSeconds: 60,
  /** First backoff; it doubles with each block up to the maximum. */
  verifyBlockSeconds: 10,
  verifyMaxBlockSeconds: 900,
  /** A wrong key for a service in backoff is answered this late (BF-2 tarpit; 0 turns it off). */
  verifyTarpitMs: 1000,
  /** 429s held back at once at most; beyond this they are answered at once. */
  verifyTarpitMax: 256,
  /** Keys the failure limiter remembers at most (BF-4). */
  limiterMaxEntries: 10_000,
  /** SSH gateway limits (SECURITY.md SSH-3, SSH-4). */
  sshAuthTimeoutSeconds: 30,
  sshMaxAuthTries: 3,
  sshMaxUnauthenticated: 64,
  /** Unauthenticated connections of one source (a local UID, or a remote address) at once. */
  sshMaxUnauthenticatedPerSource: 8,
  /** Failed SSH logins one source may make per window before it is refused for a while. */
  sshMaxAuthFailuresPerSource: 30,
  sshMaxConnections: 1024,
  sshMaxChannelsPerConnection: 64,
  /** One principal's share: authenticated connections and channels at once (LOC-5). */
  sshMaxConnectionsPerPrincipal: 128,
  sshMaxChannelsPerPrincipal: 512,
  sshMaxChannels: 4096,
  /**
   * Connections to published ports (`127.0.0.1:PORT` of tunnelled services) from local users
   * other than the service's owner, who may not have presented a key yet (LOC-5): at once, per
   * local UID (all services together), and per service (a newcomer takes the oldest connection
   * of whoever holds the most). The owner's own UID uses her channel share instead.
   */
  sshMaxPublishedPerSource: 128,
  sshMaxPublishedPerService: 512,
  /**
   * Local Unix users (UIDs) whose scraper may read /metrics over loopback without a token, besides
   * the broker's own user and root (e.g. the `prometheus` user). Everyone else needs an admin token.
   */
  metricsUids: [] as number[],
  /** Failed requests logged per second at most; the rest are counted in one line (LOG-2). */
  logFailuresPerSecond: 50,
  /** Log level for pino. */
  logLevel: 'info' as 'debug' | 'info' | 'warn' | 'error',
  /**
   * Identity the cluster already has (issue 12): who may log in as themselves, with a MUNGE
   * credential or — on the broker host — as the owner of the connection, and what they become.
   */
  identity: Object.freeze({
    /** `POST /v1/login` with `Authorization: MUNGE <credential>`. */
    munge: Object.freeze({
      enabled: false,
      /** libmunge, called by a small python3 helper (null: spawn unmunge for every login). */
      library: 'libmunge.so.2' as string | null,
      /** The site's decoder, spawned with the credential on stdin (no shell), without libmunge. */
      unmunge: 'unmunge',
      /** munged's socket (null: the decoder's default, /run/munge/munge.socket.2). */
      socket: null as string | null,
      /** Decodes at once at most; more wait (a slow munged never blocks the event loop). */
      maxConcurrent: 8,
      /** A decode that takes longer fails with identity_unavailable. */
      timeoutMs: 2000,
    }),
    /** `POST /v1/login` with no credential over loopback: the kernel names the caller's UID. */
    peer: Object.freeze({ enabled: true }),
    /** Lowest UID that may log in (system accounts and root below). */
    minUid: 1000,
    /** Only these users / members of these groups may log in (empty: everyone else). */
    allowUsers: [] as string[],
    allowGroups: [] as string[],
    /** Never these users / members of these groups. */
    denyUsers: [] as string[],
    denyGroups: [] as string[],
    /** Members get the admin role; removed from them, a managed principal is demoted at login. */
    adminGroups: [] as string[],
    /** Lifetime of a user token a login issues. */
    tokenTtlSeconds: 12 * 3600,
    /** How long the host's answer for a user (NSS: name, groups) is reused. */
    nssCacheSeconds: 60,
  }),
});

const hostPort = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'expected HOST:PORT');
const seconds = z.number().int().positive();

export const ConfigSchema = z
  .object({
    listen: hostPort,
    sshListen: hostPort,
    portRange: z.string().regex(/^\d{1,5}-\d{1,5}$/, 'expected A-B'),
    serviceDomain: z
      .string()
      .regex(/^(?=.{1,200}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/, 'a DNS domain')
      .nullable(),
    publicHost: z
      .string()
      .regex(/^[A-Za-z0-9.:-]{1,253}$/)
      .nullable(),
    dataDir: z.string().min(1).nullable(),
    serviceTtlSeconds: seconds,
    serviceMaxTtlSeconds: seconds,
    heartbeatGraceSeconds: seconds,
    keyTtlSeconds: seconds,
    keyMaxTtlSeconds: seconds,
    portCooldownSeconds: z.number().int().nonnegative(),
    reapIntervalSeconds: seconds,
    certMinLifetimeSeconds: seconds,
    certDefaultLifetimeSeconds: seconds,
    certMaxLifetimeSeconds: seconds,
    headersTimeoutMs: z.number().int().positive().max(10_000),
    requestTimeoutMs: z.number().int().positive().max(30_000),
    maxHeaderBytes: z
      .number()
      .int()
      .min(1024)
      .max(16 * 1024),
    maxConnections: z.number().int().positive(),
    maxConnectionsPerSource: z.number().int().positive(),
    keepAliveTimeoutMs: z.number().int().positive(),
    verifyMaxFailures: z.number().int().positive(),
    verifyFailureWindowSeconds: seconds,
    verifyBlockSeconds: seconds,
    verifyMaxBlockSeconds: seconds,
    verifyTarpitMs: z.number().int().min(0).max(10_000),
    verifyTarpitMax: z.number().int().min(0).max(10_000),
    limiterMaxEntries: z.number().int().min(100),
    sshAuthTimeoutSeconds: z.number().int().positive().max(30),
    sshMaxAuthTries: z.number().int().min(1).max(3),
    sshMaxUnauthenticated: z.number().int().positive(),
    sshMaxUnauthenticatedPerSource: z.number().int().positive(),
    sshMaxAuthFailuresPerSource: z.number().int().positive(),
    sshMaxConnections: z.number().int().positive(),
    sshMaxChannelsPerConnection: z.number().int().positive(),
    sshMaxConnectionsPerPrincipal: z.number().int().positive(),
    sshMaxChannelsPerPrincipal: z.number().int().positive(),
    sshMaxChannels: z.number().int().positive(),
    sshMaxPublishedPerSource: z.number().int().positive(),
    sshMaxPublishedPerService: z.number().int().positive(),
    metricsUids: z.array(z.number().int().min(0)).max(64),
    logFailuresPerSecond: z.number().int().min(1),
    logLevel: z.enum(['debug', 'info', 'warn', 'error']),
    identity: z
      .object({
        munge: z
          .object({
            enabled: z.boolean(),
            library: z.string().min(1).max(4096).nullable(),
            unmunge: z.string().min(1).max(4096),
            socket: z.string().min(1).max(4096).nullable(),
            maxConcurrent: z.number().int().min(1).max(256),
            timeoutMs: z.number().int().min(100).max(60_000),
          })
          .strict(),
        peer: z.object({ enabled: z.boolean() }).strict(),
        minUid: z.number().int().min(0),
        allowUsers: z.array(z.string().regex(/^[a-z_][a-z0-9_.-]{0,31}$/)).max(10_000),
        allowGroups: z.array(z.string().min(1).max(64)).max(10_000),
        denyUsers: z.array(z.string().regex(/^[a-z_][a-z0-9_.-]{0,31}$/)).max(10_000),
        denyGroups: z.array(z.string().min(1).max(64)).max(10_000),
        adminGroups: z.array(z.string().min(1).max(64)).max(1000),
        tokenTtlSeconds: seconds,
        nssCacheSeconds: z.number().int().min(0).max(3600),
      })
      .strict(),
  })
  .strict();

export type Config = Readonly<z.infer<typeof ConfigSchema>> & {
  readonly portMin: number;
  readonly portMax: number;
  readonly dataDir: string;
};

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** The state directory: explicit → $BROKER_DATA → $XDG_STATE_HOME/broker → ~/.local/state/broker. */
export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.BROKER_DATA) return resolve(env.BROKER_DATA);
  const base = env.XDG_STATE_HOME || join(homedir(), '.local', 'state');
  return join(base, 'broker');
}

const ENV_KEYS: Record<string, keyof typeof DEFAULTS> = {
  BROKER_LISTEN: 'listen',
  BROKER_SSH_LISTEN: 'sshListen',
  BROKER_PORT_RANGE: 'portRange',
  BROKER_PUBLIC_HOST: 'publicHost',
  BROKER_SERVICE_DOMAIN: 'serviceDomain',
  BROKER_DATA: 'dataDir',
  BROKER_LOG_LEVEL: 'logLevel',
};

/**
 * Build the configuration: DEFAULTS < config file < environment < flags.
 * Throws ConfigError with a message naming the offending key.
 */
export function loadConfig(opts: {
  file?: string;
  flags?: Partial<Record<keyof typeof DEFAULTS, unknown>>;
  env?: NodeJS.ProcessEnv;
}): Config {
  const env = opts.env ?? process.env;
  let fromFile: Record<string, unknown> = {};
  if (opts.file) {
    try {
      fromFile = JSON.parse(readFileSync(opts.file, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new ConfigError(`cannot read config file ${opts.file}: ${(err as Error).message}`);
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) {
      throw new ConfigError(`config file ${opts.file} must hold a JSON object`);
    }
  }
  const fromEnv: Record<string, unknown> = {};
  for (const [name, key] of Object.entries(ENV_KEYS)) if (env[name]) fromEnv[key] = env[name];
  const flags = Object.fromEntries(
    Object.entries(opts.flags ?? {}).filter(([, v]) => v !== undefined),
  );
  // `identity` is merged a level deeper, so a site file may set just the keys it changes.
  const fileIdentity = (fromFile.identity ?? {}) as Record<string, unknown>;
  const identity =
    typeof fileIdentity === 'object' && fileIdentity !== null && !Array.isArray(fileIdentity)
      ? {
          ...DEFAULTS.identity,
          ...fileIdentity,
          munge: { ...DEFAULTS.identity.munge, ...(fileIdentity.munge as object) },
          peer: { ...DEFAULTS.identity.peer, ...(fileIdentity.peer as object) },
        }
      : fileIdentity;
  const merged = { ...DEFAULTS, ...fromFile, ...fromEnv, ...flags, identity };
  const parsed = ConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where =
      issue.path.join('.') || (issue.code === 'unrecognized_keys' ? issue.keys.join(', ') : '');
    throw new ConfigError(`invalid configuration${where ? ` (${where})` : ''}: ${issue.message}`);
  }
  const c = parsed.data;
  const [portMin, portMax] = c.portRange.split('-').map(Number) as [number, number];
  if (!(portMin >= 1024 && portMax <= 65535 && portMin <= portMax)) {
    throw new ConfigError(
      `invalid configuration (portRange): ${c.portRange} must be within 1024-65535, low-high`,
    );
  }
  if (c.keyTtlSeconds > c.keyMaxTtlSeconds || c.serviceTtlSeconds > c.serviceMaxTtlSeconds) {
    throw new ConfigError('invalid configuration: a default TTL exceeds its maximum');
  }
  if (!(
    c.certMinLifetimeSeconds <= c.certDefaultLifetimeSeconds &&
    c.certDefaultLifetimeSeconds <= c.certMaxLifetimeSeconds
  )) {
    throw new ConfigError(
      'invalid configuration: certificate lifetimes must be min ≤ default ≤ max',
    );
  }
  return Object.freeze({
    ...c,
    portMin,
    portMax,
    dataDir: resolve(c.dataDir ?? defaultDataDir(env)),
  });
}

/** Split `HOST:PORT` (with `[v6]:port`). */
export function splitHostPort(value: string): { host: string; port: number } {
  const i = value.lastIndexOf(':');
  let host = value.slice(0, i);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  return { host, port: Number(value.slice(i + 1)) };
}

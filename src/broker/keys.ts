/**
 * Client keys (the "magic key"): minted by `load` for one principal and one service, verified by
 * that service's own token only (COMP-1), revocable, removed with the service.
 */
import { BrokerError } from '../protocol/errors.js';
import { secretKind } from '../protocol/tokens.js';
import { serviceHostname } from '../protocol/names.js';
import type { ConnectInfo, LoadRequest, LoadResponse, VerifyResponse } from '../protocol/types.js';
import type { AuditLog } from './audit.js';
import { actorOf, type Identity, type PrincipalCache } from './auth.js';
import type { ChangeFeed } from './changes.js';
import type { Clock } from './clock.js';
import type { Config } from './config.js';
import { digestMatches, hashSecret, newId, newSecret } from './secrets.js';
import { keyJson, serviceJson } from './serialize.js';
import { principalMaySee, type ServiceRegistry } from './services.js';
import type { KeyRow, ServiceRow, Store } from './store/store.js';
import type { FailureLimiter } from './limiter.js';
import type { Metrics } from './metrics.js';

/** How long a verified multi-use key row may be reused without a store read. */
export const KEY_CACHE_MS = 2000;
const KEY_CACHE_MAX = 16384;

export interface KeyDeps {
  store: Store;
  config: Config;
  clock: Clock;
  audit: AuditLog;
  registry: ServiceRegistry;
  caCertPem: string;
  publicHost: string;
  sshPort: () => number;
  /** Backoff on failed verifies per service (BF-1); none in unit tests that do not need it. */
  limiter?: FailureLimiter;
  metrics?: Metrics;
  /** The gateway's public host key (`ssh-ed25519 AAAA…`), for the known_hosts line. */
  sshHostKey?: string;
  /** Principal rows for the verify path (is the key's principal still enabled and allowed?). */
  principals: PrincipalCache;
  changes: ChangeFeed;
}

/** At most this many key ids in one liveness check. */
export const MAX_LIVE_CHECK = 1000;

export class KeyService {
  /** Last-use times, written in batches so verify never waits on fsync. */
  private uses = new Map<string, number>();
  /**
   * Multi-use key rows recently verified, by digest (hex). Revocation and service removal clear
   * entries at once (`forget*`); the TTL bounds staleness should another process change the
   * store. Counted (`once`) keys and unknown digests are never cached.
   */
  private readonly cache = new Map<string, { at: number; row: KeyRow }>();

  constructor(private readonly d: KeyDeps) {
    // Anything that can take a key away clears the cache at once (SES-2): revoked keys, removed
    // services and principals, revoked tokens (their keys went in the same transaction).
    d.changes.subscribe((c) => {
      if (c.kind === 'key.revoked') this.forgetKey(c.keyId);
      else if (c.kind !== 'ssh-key.removed') this.cache.clear();
    });
  }

  load(id: Identity, owner: string, name: string, req: LoadRequest, source: string): LoadResponse {
    if (id.kind !== 'principal')
      throw new BrokerError('forbidden', 'a service token cannot load keys; use a user token');
    const s = this.d.registry.find(id, owner, name);
    if (s.status !== 'ready') {
      throw new BrokerError(
        'service_not_ready',
        `${owner}/${name} is ${s.status}; wait for the server to start (broker load --wait)`,
      );
    }
    const { config, clock } = this.d;
    const ttl = req.ttlSeconds ?? config.keyTtlSeconds;
    if (ttl > config.keyMaxTtlSeconds)
      throw new BrokerError(
        'validation_failed',
        `ttlSeconds may be at most ${config.keyMaxTtlSeconds}`,
      );
    const now = clock.now();
    const key = newSecret('key');
    const keyId = newId('key');
    // Never past the service's lease, never past the token it was loaded with (SES-2).
    const expiresAt = Math.min(now + ttl * 1000, s.expiresAt, id.tokenExpiresAt ?? Infinity);
    this.d.store.insertKey({
      id: keyId,
      hash: hashSecret(key),
      serviceId: s.id,
      principal: id.principal.name,
      createdAt: now,
      expiresAt,
      usesLeft: req.once ? 1 : null,
      lastUsedAt: null,
      tokenId: id.tokenId,
    });
    this.d.metrics?.keyIssued();
    this.d.audit.record({
      actor: id.principal.name,
      action: 'key.load',
      target: `${owner}/${name}`,
      outcome: 'ok',
      source,
      details: { keyId, once: req.once === true, expiresAt: new Date(expiresAt).toISOString() },
    });
    return {
      service: serviceJson(s),
      key,
      keyId,
      expiresAt: new Date(expiresAt).toISOString(),
      once: req.once === true,
      ...(s.mode === 'https' ? { ca: this.d.caCertPem } : {}),
      connect: this.connectInfo(s, id.principal.name),
    };
  }

  /** Ready-to-paste commands: the `ssh -L` line through the gateway, netcat, the URL. */
  private connectInfo(s: ServiceRow, principal: string): ConnectInfo {
    const target = s.tunnel === 'ssh' ? '127.0.0.1' : s.host.includes(':') ? `[${s.host}]` : s.host;
    const info: ConnectInfo = {
      host: s.tunnel === 'ssh' ? '127.0.0.1' : s.host,
      port: s.port,
      ssh: `ssh -N -p ${this.d.sshPort()} -L ${s.port}:${target}:${s.port} ${principal}@${this.d.publicHost}`,
      ...(this.d.sshHostKey
        ? { knownHosts: `[${this.d.publicHost}]:${this.d.sshPort()} ${this.d.sshHostKey}` }
        : {}),
    };
    if (s.mode === 'tcp') info.netcat = `(echo "$BROKER_KEY"; cat) | nc 127.0.0.1 ${s.port}`;
    else info.url = `https://${serviceHostname(s)}:${s.port}/`;
    return info;
  }

  /**
   * Check a presented client key for the calling service. Answers only valid/invalid: a key of
   * another service is simply invalid (no oracle, COMP-1).
   */
  verify(id: Identity, key: string, source: string): VerifyResponse {
    if (id.kind !== 'service')
      throw new BrokerError(
        'forbidden',
        'verify needs the service token of the service being connected to',
      );
    const s = id.service;
    const now = this.d.clock.now();
    const digest = hashSecret(key);
    const row = secretKind(key) === 'key' ? this.lookup(digest, now) : null;
    let valid =
      digestMatches(row?.hash, digest) &&
      row !== null &&
      row.serviceId === s.id &&
      row.expiresAt > now &&
      this.holderMayUse(row, s);
    if (valid && row!.usesLeft !== null) valid = this.d.store.consumeKey(row!.id, now);
    const target = `${s.owner}/${s.name}`;
    if (!valid) {
      // BF-1: validity is decided first, so only failures are throttled: the right key always
      // works for its owner, and an attacker cannot lock anyone out.
      const verdict = this.d.limiter?.fail(`verify:${s.id}`);
      if (verdict?.blocked) {
        const retryAfterSeconds = Math.ceil(verdict.retryAfterMs / 1000);
        if (verdict.justBlocked) {
          // One event per block, not one per refused key.
          this.d.audit.record({
            actor: target + '#service',
            action: 'key.verify.throttle',
            target,
            outcome: 'refused',
            source,
            details: { retryAfterSeconds },
          });
        }
        this.d.metrics?.verify('throttled');
        const err = new BrokerError(
          'rate_limited',
          `too many failed verifies for ${target}; retry in ${retryAfterSeconds} s`,
        );
        err.retryAfterSeconds = retryAfterSeconds;
        throw err;
      }
      this.d.audit.record(
        {
          actor: target + '#service',
          action: 'key.verify',
          target,
          outcome: 'refused',
          source,
          details: null,
        },
        `verify-refused\0${s.id}\0${source}`,
      );
      this.d.metrics?.verify('invalid');
      return { valid: false };
    }
    this.d.metrics?.verify('ok');
    this.uses.set(row!.id, now);
    this.d.audit.record(
      {
        actor: target + '#service',
        action: 'key.verify',
        target,
        outcome: 'ok',
        source,
        details: { keyId: row!.id, principal: row!.principal },
      },
      `verify-ok\0${row!.id}\0${source}`,
    );
    return {
      valid: true,
      principal: row!.principal,
      keyId: row!.id,
      expiresAt: new Date(row!.expiresAt).toISOString(),
      once: row!.usesLeft !== null,
    };
  }

  /**
   * Is the key's principal still enabled and still allowed to reach the service? Checked at every
   * verify, so a disabled, removed or demoted principal's keys stop working at once (SES-2).
   */
  private holderMayUse(row: KeyRow, s: ServiceRow): boolean {
    const p = this.d.principals.get(row.principal);
    return p !== null && !p.disabled && principalMaySee(p, s);
  }

  /**
   * Which of these keys of the calling service still hold: not revoked, not expired, their
   * principal enabled and allowed. A server asks this for the sessions and connections it opened
   * with keys (SES-1): a used one-time key still holds; its session ends with it. Ids of other
   * services' keys are simply not live (no oracle, COMP-1).
   */
  /**
   * A client certificate presented to the calling service (mTLS), by its fingerprint: valid while
   * the broker's record of it lives (not expired, the token that minted it not revoked) and its
   * principal exists and is enabled (SES-2). Who may use the service is the service's own list
   * (`requireClientCert: { allow }`), which the gate applies. The certificate id stands in for the
   * key id: watch it with `live` like one.
   */
  verifyCert(id: Identity, fingerprint: string): VerifyResponse {
    if (id.kind !== 'service')
      throw new BrokerError('forbidden', 'verifying a certificate needs the service token');
    const now = this.d.clock.now();
    const row = /^sha256:[0-9a-f]{64}$/.test(fingerprint)
      ? this.d.store.findClientCert(fingerprint)
      : null;
    const p = row ? this.d.principals.get(row.principal) : null;
    if (!row || row.expiresAt <= now || !p || p.disabled) return { valid: false };
    return {
      valid: true,
      principal: row.principal,
      keyId: row.id,
      expiresAt: new Date(row.expiresAt).toISOString(),
      once: false,
    };
  }

  live(id: Identity, keyIds: string[]): { live: string[] } {
    if (id.kind !== 'service')
      throw new BrokerError('forbidden', 'checking keys needs the service token of their service');
    if (keyIds.length > MAX_LIVE_CHECK)
      throw new BrokerError('validation_failed', `at most ${MAX_LIVE_CHECK} key ids at once`);
    const now = this.d.clock.now();
    const live: string[] = [];
    for (const keyId of new Set(keyIds)) {
      if (/^crt_[a-z0-9]{16}$/.test(keyId)) {
        const cert = this.d.store.getClientCert(keyId);
        const p = cert ? this.d.principals.get(cert.principal) : null;
        if (cert && cert.expiresAt > now && p && !p.disabled) live.push(keyId);
        continue;
      }
      const row = /^key_[a-z0-9]{16}$/.test(keyId) ? this.d.store.getKey(keyId) : null;
      if (
        row &&
        row.serviceId === id.service.id &&
        row.expiresAt > now &&
        this.holderMayUse(row, id.service)
      )
        live.push(keyId);
    }
    return { live };
  }

  list(id: Identity, owner: string, name: string) {
    if (id.kind !== 'principal')
      throw new BrokerError('forbidden', 'listing keys needs a user token');
    const s = this.d.registry.find(id, owner, name);
    this.flushUses();
    return { keys: this.d.store.listKeys(s.id, this.d.clock.now()).map(keyJson) };
  }

  revoke(id: Identity, keyId: string, source: string): void {
    const k = /^key_[a-z0-9]{16}$/.test(keyId) ? this.d.store.getKey(keyId) : null;
    const s = k ? this.d.store.getServiceById(k.serviceId) : null;
    const allowed =
      k !== null &&
      s !== null &&
      id.kind === 'principal' &&
      (id.principal.role === 'admin' ||
        id.principal.name === k.principal ||
        id.principal.name === s.owner);
    if (!allowed || !this.d.store.deleteKey(keyId))
      throw new BrokerError('key_not_found', `no key ${keyId}`);
    this.d.changes.publish({ kind: 'key.revoked', keyId });
    this.d.audit.record({
      actor: actorOf(id),
      action: 'key.revoke',
      target: `${s!.owner}/${s!.name}`,
      outcome: 'ok',
      source,
      details: { keyId },
    });
  }

  private lookup(digest: Buffer, now: number): KeyRow | null {
    const hex = digest.toString('hex');
    const hit = this.cache.get(hex);
    if (hit && now - hit.at < KEY_CACHE_MS) return hit.row;
    const row = this.d.store.findKeyByHash(digest);
    if (row && row.usesLeft === null) {
      if (this.cache.size >= KEY_CACHE_MAX) this.cache.clear();
      this.cache.set(hex, { at: now, row });
    } else this.cache.delete(hex);
    return row;
  }

  /** A key was revoked: it must not verify again, not even from the cache. */
  forgetKey(keyId: string): void {
    for (const [hex, e] of this.cache) if (e.row.id === keyId) this.cache.delete(hex);
  }

  /** Write batched last-use times. */
  flushUses(): void {
    if (this.uses.size === 0) return;
    const batch = this.uses;
    this.uses = new Map();
    this.d.store.touchKeys(batch);
  }
}

/**
 * Logging in as the Unix user one already is (issue 12, SECURITY.md ID-1): with a MUNGE
 * credential (`Authorization: MUNGE <credential>`, anywhere the cluster's munge.key reaches), or,
 * on the broker host, with no credential at all — the kernel names the owner of the loopback
 * connection. Either way the broker learns a UID, asks the host's NSS who that is, applies the
 * site policy, creates or refreshes the principal named after the user (with its UID and groups;
 * its role follows the admin groups), and issues a user token with an expiry.
 */
import { createHash } from 'node:crypto';
import { BrokerError } from '../../protocol/errors.js';
import type { LoginResponse } from '../../protocol/types.js';
import type { AuditLog } from '../audit.js';
import type { ChangeFeed } from '../changes.js';
import type { Clock } from '../clock.js';
import type { Config } from '../config.js';
import type { FailureLimiter } from '../limiter.js';
import { isLoopback } from '../net-util.js';
import { newUserToken } from '../principals.js';
import { principalJson } from '../serialize.js';
import type { Store } from '../store/store.js';
import type { PeerAttribution } from '../../host/socket-owner.js';
import type { MungeDecoder } from './munge.js';
import type { NssDirectory } from './nss.js';
import { decide } from './policy.js';

export interface LoginDeps {
  store: Store;
  clock: Clock;
  audit: AuditLog;
  config: Config;
  changes: ChangeFeed;
  /** Null when MUNGE logins are off. */
  munge: MungeDecoder | null;
  nss: NssDirectory;
  peers: PeerAttribution;
  /** Failed logins per source: past the budget a source gets 429 for a while. */
  failures: FailureLimiter;
}

type Method = LoginResponse['method'];

/** A MUNGE credential by SHA-256, kept until its TTL ends (a replay is refused). */
interface SeenCredential {
  hash: Buffer;
  expiresAt: number;
}

const replayed = () =>
  new BrokerError('unauthenticated', 'the MUNGE credential was used before; make a fresh one', {
    details: { reason: 'munge_replayed' },
  });

export class LoginService {
  constructor(private readonly d: LoginDeps) {}

  /**
   * `Authorization: MUNGE <credential>`. The credential is used once: munged refuses a replay it
   * has seen, and the broker remembers every credential it accepted until its TTL ends, so a
   * replay to another broker on the same registry, or after munged restarted, is refused too.
   */
  async withMunge(credential: string, source: string): Promise<LoginResponse> {
    const decoder = this.d.munge;
    if (!decoder)
      throw new BrokerError(
        'identity_unavailable',
        'MUNGE login is off on this broker (identity.munge.enabled); use a token',
      );
    return this.guarded(source, 'munge', async () => {
      const hash = createHash('sha256').update(credential).digest();
      // A replay costs a lookup, not a decode; and it is refused whatever munged says (it may
      // have restarted, or be another node's).
      if (this.d.store.credentialSeen(hash, this.d.clock.now())) throw replayed();
      const cred = await decoder.decode(credential);
      const now = this.d.clock.now();
      // Remembered in the same transaction as the token it buys (one commit per login).
      const expiresAt = Math.max(now, (cred.encodeTime + cred.ttl) * 1000) + 60_000;
      return { uid: cred.uid, credential: { hash, expiresAt } };
    });
  }

  /** No credential: on the broker host, the owner of the loopback connection (LOC-5). */
  async asPeer(
    socket: Parameters<PeerAttribution['peerUid']>[0],
    source: string,
  ): Promise<LoginResponse> {
    if (!this.d.config.identity.peer.enabled)
      throw new BrokerError(
        'identity_unavailable',
        'logging in by your connection is off on this broker (identity.peer.enabled); use MUNGE or a token',
      );
    return this.guarded(source, 'peer', async () => {
      const uid = isLoopback(source) ? await this.d.peers.peerUid(socket) : null;
      if (uid === null)
        throw new BrokerError(
          'unauthenticated',
          'the broker cannot tell who you are on this connection (only on the broker host, over loopback); log in with MUNGE (munge -n) or a token',
          { details: { reason: 'peer_unknown' } },
        );
      return { uid };
    });
  }

  /** Budget failures per source; audit every outcome; then the common path for a UID. */
  private async guarded(
    source: string,
    method: Method,
    identify: () => Promise<{ uid: number; credential?: SeenCredential }>,
  ): Promise<LoginResponse> {
    const blocked = this.d.failures.blocked(`login:${source}`);
    if (blocked > 0) {
      const err = new BrokerError('rate_limited', 'too many failed logins from here; wait');
      err.retryAfterSeconds = Math.ceil(blocked / 1000);
      throw err;
    }
    let uid: number | null = null;
    try {
      const who = await identify();
      uid = who.uid;
      return await this.issue(uid, method, source, who.credential);
    } catch (err) {
      if (err instanceof BrokerError && err.code !== 'identity_unavailable') {
        this.d.failures.fail(`login:${source}`);
        this.d.audit.record(
          {
            actor: uid === null ? null : `uid:${uid}`,
            action: 'identity.login',
            target: null,
            outcome: 'refused',
            source,
            details: {
              method,
              code: err.code,
              ...((err.details as { reason?: string } | undefined)?.reason
                ? { reason: (err.details as { reason: string }).reason }
                : {}),
            },
          },
          `login-refused\0${source}\0${err.code}\0${(err.details as { reason?: string } | undefined)?.reason ?? ''}`,
        );
      }
      throw err;
    }
  }

  private async issue(
    uid: number,
    method: Method,
    source: string,
    credential?: SeenCredential,
  ): Promise<LoginResponse> {
    const user = await this.d.nss.byUid(uid);
    if (!user)
      throw new BrokerError('forbidden', `there is no user with UID ${uid} on the broker host`);
    const verdict = decide(this.d.config.identity, user);
    if (!verdict.ok) throw new BrokerError('forbidden', verdict.reason);
    const now = this.d.clock.now();
    const { token, row } = newUserToken(
      now,
      user.name,
      `login (${method})`,
      this.d.config.identity.tokenTtlSeconds,
    );
    const r = this.d.store.recordLogin({ ...user, role: verdict.role }, row, now, credential);
    if (!r) throw replayed();
    // A demotion (left an admin group) reaches its open connections and keys now (SES-2).
    if (r.roleChanged)
      this.d.changes.publish({
        kind: 'principal.changed',
        name: user.name,
        principal: r.principal,
      });
    this.d.audit.record({
      actor: user.name,
      action: 'identity.login',
      target: user.name,
      outcome: 'ok',
      source,
      details: {
        method,
        uid,
        tokenId: row.id,
        ...(r.created ? { created: true } : {}),
        ...(r.roleChanged ? { role: r.principal.role } : {}),
      },
    });
    return {
      token,
      tokenId: row.id,
      expiresAt: new Date(row.expiresAt!).toISOString(),
      principal: principalJson(r.principal),
      method,
    };
  }
}

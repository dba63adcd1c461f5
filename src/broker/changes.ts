/**
 * The change feed: every change of identity or registry that live state must follow (SECURITY.md
 * SES-2) is published here right after its transaction commits, and every holder of live state —
 * the verify and token caches, the gateway's connections, channels and tunnels — subscribes.
 * Revoke, disable, demote, remove and unregister therefore reach live state in the same tick,
 * well within the 1 s the design asks for. One broker process publishes to itself; a networked
 * store (several replicas) would carry the same changes across processes.
 */
import type { PrincipalRow, ServiceRow } from './store/store.js';

export type RegistryChange =
  /** A service left the registry: its tunnel, channels, keys and cached token go. */
  | { kind: 'service.removed'; service: ServiceRow; reason: string }
  /** A principal was updated (role, disabled) or removed (`principal` null). */
  | { kind: 'principal.changed'; name: string; principal: PrincipalRow | null }
  /** A user token was revoked; what was minted with it went in the same transaction. */
  | { kind: 'token.revoked'; tokenId: string; principal: string }
  /** A client key was revoked. */
  | { kind: 'key.revoked'; keyId: string }
  /** An SSH public key was removed from a principal: connections it opened end. */
  | { kind: 'ssh-key.removed'; principal: string; fingerprint: string };

export type ChangeListener = (change: RegistryChange) => void;

export class ChangeFeed {
  private readonly listeners: ChangeListener[] = [];

  /** Listeners run synchronously, in subscription order; one that throws does not stop the rest. */
  subscribe(listener: ChangeListener): void {
    this.listeners.push(listener);
  }

  constructor(
    private readonly onError: (err: unknown, change: RegistryChange) => void = () => {},
  ) {}

  publish(change: RegistryChange): void {
    for (const l of this.listeners) {
      try {
        l(change);
      } catch (err) {
        this.onError(err, change);
      }
    }
  }
}

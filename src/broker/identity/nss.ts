/**
 * Who a UID is on this host, through the host's NSS (files, LDAP, SSSD — whatever nsswitch.conf
 * says): `getent passwd UID` for the name and `id -- NAME` for its groups (initgroups: primary
 * and supplementary), spawned without a shell. Answers are cached for `cacheSeconds`, so a group
 * change takes effect at the next login after at most that long (nscd and SSSD cache alike).
 */
import { execFile } from 'node:child_process';
import { BrokerError } from '../../protocol/errors.js';

/** A Unix user as NSS reports it. */
export interface UnixUser {
  name: string;
  uid: number;
  gid: number;
  /** Group names, primary first. */
  groups: string[];
}

function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  return new Promise((resolve) =>
    execFile(cmd, args, { timeout: 5000, maxBuffer: 1 << 20 }, (err, out) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out }),
    ),
  );
}

/** `uid=1001(bob) gid=1001(bob) groups=1001(bob),27(sudo)` → groups, primary first. */
export function parseId(out: string): { uid: number; gid: number; groups: string[] } | null {
  const m = /^uid=(\d+)\([^)]*\) gid=(\d+)\(([^)]*)\)(?: groups=(.*))?$/.exec(out.trim());
  if (!m) return null;
  const groups = [m[3]!];
  for (const g of (m[4] ?? '').split(',')) {
    const name = /^\d+\((.*)\)$/.exec(g)?.[1];
    if (name && !groups.includes(name)) groups.push(name);
  }
  return { uid: Number(m[1]), gid: Number(m[2]), groups };
}

export class NssDirectory {
  private readonly cache = new Map<number, { at: number; user: UnixUser | null }>();

  constructor(private readonly cacheSeconds: number) {}

  /**
   * The user with this UID, or null when NSS knows none. Throws `identity_unavailable` when the
   * lookup itself fails (getent missing).
   */
  async byUid(uid: number): Promise<UnixUser | null> {
    const hit = this.cache.get(uid);
    if (hit && Date.now() - hit.at < this.cacheSeconds * 1000) return hit.user;
    const pw = await run('getent', ['passwd', String(uid)]);
    let user: UnixUser | null = null;
    if (pw.code === 0) {
      const name = pw.out.split('\n')[0]!.split(':')[0]!;
      const id = await run('id', ['--', name]);
      const parsed = id.code === 0 ? parseId(id.out) : null;
      if (parsed && parsed.uid === uid) user = { name, ...parsed };
    } else if (pw.code !== 2) {
      // 2: no such entry; anything else (127: no getent) is the host's fault, not the user's.
      throw new BrokerError(
        'identity_unavailable',
        `the broker host cannot look up UID ${uid} (getent exited ${pw.code})`,
      );
    }
    if (this.cache.size > 10_000) this.cache.clear();
    this.cache.set(uid, { at: Date.now(), user });
    return user;
  }
}

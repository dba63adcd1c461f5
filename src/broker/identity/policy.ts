/**
 * Site policy for logins as a Unix user (issue 12): who may log in — a UID at or above `minUid`,
 * not denied by name or group, and, when allow lists are set, on one of them — and who is an
 * admin (a member of an admin group). Deny wins over allow.
 */
import type { Role } from '../../protocol/types.js';
import { PRINCIPAL_RE } from '../../protocol/names.js';
import type { UnixUser } from './nss.js';

export interface IdentityPolicyConfig {
  minUid: number;
  allowUsers: readonly string[];
  allowGroups: readonly string[];
  denyUsers: readonly string[];
  denyGroups: readonly string[];
  adminGroups: readonly string[];
}

export type PolicyVerdict = { ok: true; role: Role } | { ok: false; reason: string };

export function decide(c: IdentityPolicyConfig, user: UnixUser): PolicyVerdict {
  const inAny = (groups: readonly string[]) => user.groups.some((g) => groups.includes(g));
  if (user.uid < c.minUid)
    return { ok: false, reason: `UID ${user.uid} is below the site's minimum (${c.minUid})` };
  if (!PRINCIPAL_RE.test(user.name))
    return { ok: false, reason: `the user name ${user.name} is not a valid principal name` };
  if (c.denyUsers.includes(user.name) || inAny(c.denyGroups))
    return { ok: false, reason: `${user.name} may not use this broker (site policy)` };
  const allowListed = c.allowUsers.length > 0 || c.allowGroups.length > 0;
  if (allowListed && !c.allowUsers.includes(user.name) && !inAny(c.allowGroups))
    return { ok: false, reason: `${user.name} is not on the site's allow list` };
  return { ok: true, role: inAny(c.adminGroups) ? 'admin' : 'user' };
}

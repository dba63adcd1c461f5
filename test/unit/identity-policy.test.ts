/**
 * Issue 12: site policy for logins as a Unix user (src/broker/identity/policy.ts) and the parse
 * of `id` output (src/broker/identity/nss.ts). Deny wins over allow; allow lists, when set, are
 * the only way in; admin groups give the admin role.
 */
import { describe, expect, it } from 'vitest';
import { decide, type IdentityPolicyConfig } from '../../src/broker/identity/policy.js';
import { parseId } from '../../src/broker/identity/nss.js';

const base: IdentityPolicyConfig = {
  minUid: 1000,
  allowUsers: [],
  allowGroups: [],
  denyUsers: [],
  denyGroups: [],
  adminGroups: [],
};
const bob = { name: 'bob', uid: 1001, gid: 1001, groups: ['bob', 'physics'] };

describe('identity policy', () => {
  it('ok/a user at or above minUid is a user; a member of an admin group an admin', () => {
    expect(decide(base, bob)).toEqual({ ok: true, role: 'user' });
    expect(decide({ ...base, adminGroups: ['physics'] }, bob)).toEqual({ ok: true, role: 'admin' });
    expect(decide({ ...base, minUid: 1001 }, bob).ok).toBe(true);
  });

  it('fail/below minUid, denied by name or group, or not on a set allow list', () => {
    expect(decide({ ...base, minUid: 1002 }, bob)).toEqual({
      ok: false,
      reason: "UID 1001 is below the site's minimum (1002)",
    });
    expect(decide({ ...base, denyUsers: ['bob'] }, bob).ok).toBe(false);
    expect(decide({ ...base, denyGroups: ['physics'] }, bob).ok).toBe(false);
    expect(decide({ ...base, allowGroups: ['chemistry'] }, bob).ok).toBe(false);
    expect(decide({ ...base, allowUsers: ['alice'] }, bob).ok).toBe(false);
  });

  it('ok/deny wins over allow; either allow list admits', () => {
    expect(decide({ ...base, allowUsers: ['bob'], denyGroups: ['physics'] }, bob).ok).toBe(false);
    expect(decide({ ...base, allowGroups: ['physics'] }, bob).ok).toBe(true);
    expect(decide({ ...base, allowUsers: ['bob'], allowGroups: ['x'] }, bob).ok).toBe(true);
  });

  it('fail/a user name that is not a principal name is refused, not mangled', () => {
    expect(decide(base, { ...bob, name: 'Bob.Smith@EXAMPLE' }).ok).toBe(false);
  });
});

describe('parseId', () => {
  it('ok/primary group first, supplementary after, no duplicates', () => {
    expect(
      parseId('uid=1001(bob) gid=1001(bob) groups=1001(bob),27(sudo),1005(physics)\n'),
    ).toEqual({
      uid: 1001,
      gid: 1001,
      groups: ['bob', 'sudo', 'physics'],
    });
    expect(parseId('uid=1002(carol) gid=100(users)')).toEqual({
      uid: 1002,
      gid: 100,
      groups: ['users'],
    });
  });

  it('fail/anything else is null', () => {
    expect(parseId('id: ‘nobody2’: no such user')).toBeNull();
    expect(parseId('')).toBeNull();
  });
});

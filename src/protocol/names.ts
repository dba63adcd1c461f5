/** Name rules of DESIGN §3/§4. Names are allow-listed and never used as file paths. */

/** A principal name, like a Unix user name. */
export const PRINCIPAL_RE = /^[a-z_][a-z0-9_.-]{0,31}$/;
/** A service name (the part after `owner/`). */
export const SERVICE_NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
/** A query glob over names: name characters plus `*`, `?` and one `/`. */
export const GLOB_RE = /^[a-z0-9_.*?-]{1,64}(\/[a-z0-9_.*?-]{1,64})?$/;

export interface ServiceRef {
  owner: string;
  name: string;
}

/**
 * Parse `owner/name` or a bare `name` (which means the caller's own service).
 * Returns null when either part breaks the name rules.
 */
export function parseServiceRef(ref: string, defaultOwner: string | undefined): ServiceRef | null {
  const slash = ref.indexOf('/');
  const owner = slash === -1 ? defaultOwner : ref.slice(0, slash);
  const name = slash === -1 ? ref : ref.slice(slash + 1);
  if (owner === undefined || !PRINCIPAL_RE.test(owner) || !SERVICE_NAME_RE.test(name)) return null;
  return { owner, name };
}

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

/** One DNS label in the readable form: letters, digits, inner hyphens, no `xn--`-style prefix. */
const DNS_LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const readableLabel = (s: string) => DNS_LABEL_RE.test(s) && s.slice(2, 4) !== '--';

/**
 * The name a service's certificate and URLs carry (DESIGN §11, SECURITY.md SES-3), under `domain`
 * (`localhost` by default, which browsers and curl resolve to loopback; a site may add its own).
 * `NAME.OWNER.<domain>` when both are plain DNS labels; otherwise `svc-<id>.<domain>` (from the
 * service id `svc_…`). The first form always has two labels before the domain and the second one,
 * so no two services can ever get the same name — a dotted service `a.b` of owner `c` and service
 * `a` of owner `b.c` would otherwise both be `a.b.c`.
 * @example serviceHostname({ owner: 'alice', name: 'viz', id: 'svc_0123456789abcdef' }) // 'viz.alice.localhost'
 */
export function serviceHostname(
  s: { owner: string; name: string; id: string },
  domain = 'localhost',
): string {
  const label =
    readableLabel(s.name) && readableLabel(s.owner)
      ? `${s.name}.${s.owner}`
      : `svc-${s.id.replace(/^svc_/, '')}`;
  return `${label}.${domain}`;
}

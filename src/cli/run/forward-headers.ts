/**
 * What the app behind the HTTPS front sees of a request (SECURITY.md SES-4): the client's request,
 * never the broker's secrets, and forwarding headers the front wrote itself — as nginx or
 * configurable-http-proxy do.
 *
 * Removed: hop-by-hop headers (and those named in `Connection`); `Authorization: Bearer …` (the
 * gate reads any bearer as a broker key); the gate's session cookie and every other cookie whose
 * name marks it as a broker gate cookie (`broker…`, `__Host-broker…`, `__Secure-broker…`: a
 * browser sends the cookies of every service on `localhost` to every port); every client-sent
 * `Forwarded`, `X-Forwarded-*`, `X-Real-IP` and `X-Remote-User`/`Remote-User`, also when written
 * with underscores (CGI/WSGI map `X_Forwarded_User` and `X-Forwarded-User` to one variable).
 * Set: `X-Forwarded-For` (the peer of the front), `X-Forwarded-Proto: https`, `X-Forwarded-Host`,
 * `X-Forwarded-User` (the principal the gate let in) only when the app cannot be reached around
 * the front, and the app credential of `--app-auth`.
 */
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'transfer-encoding',
  'upgrade',
  'te',
  'trailer',
]);

/** Client headers that claim to come from a proxy: only the front may say such things. */
const PROXY_CLAIMS = new Set(['forwarded', 'x-real-ip', 'x-remote-user', 'remote-user']);

export interface ForwardOptions {
  /** The gate's own cookie name (`gate.cookieName`). */
  gateCookie: string;
  /** The `--app-auth` header (lower-case name) and value, or null. */
  appAuth: { name: string; value: string } | null;
  /** Tell the app the principal (`X-Forwarded-User`); only where no one can forge it. */
  forwardUser: boolean;
}

/** A header name as CGI-style servers see it: lower case, `_` as `-`. */
function normal(name: string): string {
  return name.includes('_') ? name.replace(/_/g, '-') : name;
}

/** True for the gate's cookie and any other broker gate cookie. */
export function isGateCookie(name: string, gateCookie: string): boolean {
  return name === gateCookie || /^(__host-|__secure-)?broker/i.test(name);
}

/** A `Cookie` header without the gate cookies, or null when nothing is left. */
export function withoutGateCookies(cookie: string, gateCookie: string): string | null {
  if (!/broker/i.test(cookie) && !cookie.includes(gateCookie)) return cookie;
  const kept = cookie.split(';').filter((part) => {
    const eq = part.indexOf('=');
    return !isGateCookie((eq === -1 ? part : part.slice(0, eq)).trim(), gateCookie);
  });
  const out = kept
    .map((p) => p.trim())
    .filter(Boolean)
    .join('; ');
  return out || null;
}

/** Hop-by-hop names of a message: the fixed set plus the tokens of its `Connection` header. */
function connectionTokens(h: IncomingMessage['headers']): Set<string> | null {
  const c = h.connection;
  if (!c) return null;
  return new Set(c.split(',').map((t) => t.trim().toLowerCase()));
}

/** The headers of the app's request for `req`, let in as `principal`. */
export function appRequestHeaders(
  req: IncomingMessage,
  principal: string | undefined,
  o: ForwardOptions,
): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const conn = connectionTokens(req.headers);
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || conn?.has(k)) continue;
    const n = normal(k);
    if (n.startsWith('x-forwarded-') || PROXY_CLAIMS.has(n)) continue;
    if (o.appAuth && n === o.appAuth.name) continue;
    if (k === 'authorization' && /^bearer\s/i.test(String(v))) continue;
    if (k === 'cookie') {
      const c = withoutGateCookies(String(v), o.gateCookie);
      if (c) out.cookie = c;
      continue;
    }
    out[k] = v;
  }
  const peer = req.socket.remoteAddress ?? '';
  out['x-forwarded-for'] = peer.startsWith('::ffff:') ? peer.slice(7) : peer;
  out['x-forwarded-proto'] = 'https';
  if (req.headers.host) out['x-forwarded-host'] = req.headers.host;
  if (o.forwardUser && principal) out['x-forwarded-user'] = principal;
  if (o.appAuth) out[o.appAuth.name] = o.appAuth.value;
  return out;
}

/**
 * The app's response headers for the client: hop-by-hop removed, and no `Set-Cookie` that would
 * overwrite a broker gate cookie in the browser.
 */
export function clientResponseHeaders(
  res: IncomingMessage,
  gateCookie: string,
): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  const conn = connectionTokens(res.headers);
  for (const [k, v] of Object.entries(res.headers)) {
    if (v === undefined || HOP_BY_HOP.has(k) || conn?.has(k)) continue;
    if (k === 'set-cookie') {
      const kept = (v as string[]).filter((c) => {
        const eq = c.indexOf('=');
        return !isGateCookie((eq === -1 ? c : c.slice(0, eq)).trim(), gateCookie);
      });
      if (kept.length) out[k] = kept;
      continue;
    }
    out[k] = v;
  }
  // A browser session lives on a host name of its own that nobody else may learn (SES-1): no
  // page of the app sends it on as a Referer, whatever the app asks for.
  out['referrer-policy'] = 'no-referrer';
  return out;
}

/** `req.url` without a `broker_key` parameter (also percent-encoded), whatever let it through. */
export function withoutLoginKey(url: string): string {
  const q = url.indexOf('?');
  if (q === -1 || (!/broker/i.test(url.slice(q)) && !url.includes('%', q))) return url;
  const u = new URL(url, 'https://front.invalid');
  if (!u.searchParams.has('broker_key')) return url;
  u.searchParams.delete('broker_key');
  return u.pathname + (u.search === '?' ? '' : u.search);
}

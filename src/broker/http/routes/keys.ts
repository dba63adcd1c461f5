/** Key routes: revoke, liveness. (Verify is served by the fast path in verify-fast-path.ts.) */
import { LiveKeysBody, VerifyBody, VerifyCertBody, parse } from '../schemas.js';
import type { Route } from '../route.js';

export const keyRoutes: Route[] = [
  {
    // A server asks whether a client certificate presented to it (mTLS) still admits (SES-2).
    method: 'POST',
    path: '/v1/verify/cert',
    auth: true,
    handler: ({ identity, body }, d) => {
      const { fingerprint } = parse(VerifyCertBody, body, 'body');
      return { json: d.keys.verifyCert(identity, fingerprint) };
    },
  },
  {
    // A server asks which keys behind its open sessions and connections still hold (SES-1).
    method: 'POST',
    path: '/v1/verify/live',
    auth: true,
    handler: ({ identity, body }, d) => {
      const { keyIds } = parse(LiveKeysBody, body, 'body');
      return { json: d.keys.live(identity, keyIds) };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/keys/:keyId',
    auth: true,
    handler: ({ identity, params, source }, d) => {
      d.keys.revoke(identity, params.keyId ?? '', source);
      return { status: 204 };
    },
  },
];

/**
 * POST /v1/verify through express. The daemon serves this path from the fast path
 * (verify-fast-path.ts); the route stays in the table so the app is complete on its own (tests,
 * embedding) and so other methods on the path answer 405.
 */
keyRoutes.push({
  method: 'POST',
  path: '/v1/verify',
  auth: true,
  handler: ({ identity, body, source, meta }, d) => {
    const { key } = parse(VerifyBody, body, 'body');
    const result = d.keys.verify(identity, key, source);
    meta.fields.valid = result.valid;
    return { json: result };
  },
});

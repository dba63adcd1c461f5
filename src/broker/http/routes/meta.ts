/** Routes about the broker itself: health, CA, OpenAPI, whoami, audit. */
import { BrokerError } from '../../../protocol/errors.js';
import { Authenticator } from '../../auth.js';
import { isLoopback } from '../../net-util.js';
import { socketPeerUid } from '../../../host/socket-owner.js';
import { requireAdmin } from '../../principals.js';
import { auditJson, principalJson, serviceJson } from '../../serialize.js';
import type { Route } from '../route.js';
import { AuditParams, NoParams, parse } from '../schemas.js';

export const metaRoutes: Route[] = [
  {
    // Prometheus text; from loopback (a local scraper) or with an admin token.
    method: 'GET',
    path: '/metrics',
    auth: false,
    handler: async ({ req, source }, d) => {
      // Without a token only a local scraper running as the broker's own user (or root, or a
      // UID the config names) may read it: loopback alone is every local user (LOC-5).
      const local =
        isLoopback(source) &&
        !req.headers.authorization &&
        d.metricsUids.includes((await socketPeerUid(req.socket).catch(() => null)) ?? -1);
      if (!local)
        requireAdmin(d.auth.authenticate(Authenticator.bearer(req.headers.authorization)));
      const { contentType, body } = await d.metrics.render();
      return { text: { contentType, body } };
    },
  },
  {
    method: 'GET',
    path: '/v1/health',
    auth: false,
    handler: (_c, d) => ({ json: { status: 'ok', version: d.version, ...d.health() } }),
  },
  {
    method: 'GET',
    path: '/v1/ca',
    auth: false,
    handler: (_c, d) => ({ text: { contentType: 'application/x-pem-file', body: d.caCertPem } }),
  },
  {
    method: 'GET',
    path: '/v1/openapi.json',
    auth: false,
    handler: (_c, d) => {
      if (!d.openapi) throw new BrokerError('not_found', 'this build ships no OpenAPI document');
      return { json: d.openapi };
    },
  },
  {
    method: 'GET',
    path: '/v1/whoami',
    auth: true,
    handler: ({ identity, query }) => {
      parse(NoParams, query, 'query');
      if (identity.kind === 'service')
        return { json: { kind: 'service', service: serviceJson(identity.service) } };
      const exp = identity.tokenExpiresAt;
      return {
        json: {
          kind: 'principal',
          principal: principalJson(identity.principal),
          token: {
            id: identity.tokenId,
            expiresAt: exp === null ? null : new Date(exp).toISOString(),
          },
        },
      };
    },
  },
  {
    method: 'GET',
    path: '/v1/audit',
    auth: true,
    handler: ({ identity, query }, d) => {
      const q = parse(AuditParams, query, 'query');
      if (identity.kind !== 'principal')
        throw new BrokerError('forbidden', 'audit needs a user token');
      d.flushAudit();
      const rows = d.store.listAudit({
        since: q.since ? Date.parse(q.since) : undefined,
        principal: identity.principal.role === 'admin' ? undefined : identity.principal.name,
        limit: q.limit ?? 100,
      });
      return { json: { events: rows.map(auditJson) } };
    },
  },
];

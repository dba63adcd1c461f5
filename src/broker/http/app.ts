/**
 * createApp(deps) → an express app that does not listen (verdaccio's defineAPI). All routes come
 * from one table; the pipeline around them is: request id → refuse secrets in URLs → content type
 * → JSON body (≤ 16 KiB) → auth → handler → one error handler.
 */
import express, { type NextFunction, type Request, type Response } from 'express';
import { BrokerError } from '../../protocol/errors.js';
import { MAX_BODY_BYTES } from '../../protocol/constants.js';
import { Authenticator, type Identity } from '../auth.js';
import {
  logAccess,
  sendError,
  sendJson,
  sourceOf,
  startRequest,
  toBrokerError,
  type RequestMeta,
} from './respond.js';
import type { AppDeps, Route } from './route.js';
import { identityRoutes } from './routes/identity.js';
import { keyRoutes } from './routes/keys.js';
import { metaRoutes } from './routes/meta.js';
import { principalRoutes } from './routes/principals.js';
import { serviceRoutes } from './routes/services.js';

/** Every route of the API, in one table. POST /v1/verify is also served by the fast path. */
export const ROUTES: readonly Route[] = [
  ...metaRoutes,
  ...identityRoutes,
  ...serviceRoutes,
  ...keyRoutes,
  ...principalRoutes,
];

/** A secret's prefix in a query string, raw or percent-encoded (`bku%5F…`). */
const SECRET_IN_QUERY = /bk[usk](?:_|%5f)/i;

/** Map body-parser failures to catalogue errors. */
function bodyParserError(err: { type?: string }): BrokerError | null {
  switch (err.type) {
    case 'entity.too.large':
      return new BrokerError('payload_too_large', `request body exceeds ${MAX_BODY_BYTES} bytes`);
    case 'entity.parse.failed':
      return new BrokerError('bad_request', 'request body is not valid JSON');
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new BrokerError(
        'unsupported_media_type',
        'request body must be application/json in UTF-8',
      );
    case 'request.aborted':
    case 'request.size.invalid':
      return new BrokerError('bad_request', 'request body was cut short');
    default:
      return null;
  }
}

export function hasBody(req: { headers: Record<string, string | string[] | undefined> }): boolean {
  const cl = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (cl !== undefined && cl !== '0');
}

export function isJson(contentType: string | undefined): boolean {
  if (!contentType) return false;
  const [type, ...params] = contentType
    .toLowerCase()
    .split(';')
    .map((s) => s.trim());
  if (type !== 'application/json') return false;
  const charset = params.find((p) => p.startsWith('charset='));
  return !charset || charset === 'charset=utf-8' || charset === 'charset="utf-8"';
}

/**
 * Checks on a request's body headers, before anything else looks at it (both pipelines): a body
 * must be `application/json` in UTF-8 and not content-encoded (no gzip bombs).
 */
export function checkBodyHeaders(req: {
  method?: string;
  headers: Record<string, string | string[] | undefined>;
}): BrokerError | null {
  if (!hasBody(req)) return null;
  const enc = req.headers['content-encoding'];
  if (enc !== undefined && enc !== 'identity') {
    return new BrokerError(
      'unsupported_media_type',
      'content-encoded bodies are not accepted; send plain JSON',
    );
  }
  if (
    (req.method === 'POST' || req.method === 'PATCH' || req.method === 'PUT') &&
    !isJson(req.headers['content-type'] as string | undefined)
  ) {
    return new BrokerError(
      'unsupported_media_type',
      'request body must be Content-Type: application/json',
    );
  }
  return null;
}

export function createApp(deps: AppDeps): express.Express {
  const app = express();
  app.disable('x-powered-by');
  app.disable('etag');
  app.set('query parser', 'simple');

  app.use((req: Request, res: Response, next: NextFunction) => {
    const meta = startRequest(res);
    res.locals.meta = meta;
    res.on('finish', () => logAccess(deps.log, req, res, meta, deps.metrics));
    const q = req.url.indexOf('?');
    if (q !== -1 && SECRET_IN_QUERY.test(req.url.slice(q))) {
      return next(
        new BrokerError(
          'bad_request',
          'secrets never go in URLs: send tokens in the Authorization header, keys in the JSON body',
        ),
      );
    }
    const bad = checkBodyHeaders(req);
    if (bad) return next(bad);
    next();
  });
  // Bodies are parsed per route, after authentication: unauthenticated callers never get their
  // bodies read (the verify fast path does the same, in the same order).
  const json = express.json({
    limit: MAX_BODY_BYTES,
    strict: true,
    inflate: false,
    type: () => true,
  });
  const authenticate = (req: Request, res: Response, next: NextFunction) => {
    const identity = deps.auth.authenticate(Authenticator.bearer(req.headers.authorization));
    res.locals.identity = identity;
    (res.locals.meta as RequestMeta).fields.actor =
      identity.kind === 'principal' ? identity.principal.name : `service:${identity.service.id}`;
    next();
  };

  const methodsByPath = new Map<string, string[]>();
  for (const route of ROUTES) {
    methodsByPath.set(route.path, [...(methodsByPath.get(route.path) ?? []), route.method]);
    const method = route.method.toLowerCase() as 'get' | 'post' | 'patch' | 'delete';
    const chain = route.auth ? [authenticate, json] : [json];
    app[method](route.path, ...chain, async (req: Request, res: Response) => {
      const meta = res.locals.meta as RequestMeta;
      const identity = res.locals.identity as Identity | undefined;
      const reply = await route.handler(
        {
          req,
          params: req.params as Record<string, string>,
          query: req.query as Record<string, unknown>,
          body: req.body,
          identity: identity!,
          source: sourceOf(req),
          meta,
        },
        deps,
      );
      if (reply.text) {
        res
          .status(reply.status ?? 200)
          .type(reply.text.contentType)
          .send(reply.text.body);
      } else if (reply.json !== undefined) {
        sendJson(res, reply.status ?? 200, reply.json);
      } else {
        res.status(reply.status ?? 204).end();
      }
    });
  }
  for (const [path, methods] of methodsByPath) {
    app.all(path, (_req: Request, res: Response, next: NextFunction) => {
      res.setHeader('Allow', methods.join(', '));
      next(new BrokerError('method_not_allowed', `use ${methods.join(' or ')} on this route`));
    });
  }
  app.use((req: Request, _res: Response, next: NextFunction) => {
    next(new BrokerError('not_found', `no route ${req.method} ${req.path.slice(0, 100)}`));
  });
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    const meta = (res.locals.meta as RequestMeta | undefined) ?? startRequest(res);
    const mapped =
      err instanceof BrokerError
        ? err
        : err instanceof URIError
          ? new BrokerError('bad_request', 'malformed percent-encoding in the request path')
          : bodyParserError(err as { type?: string });
    sendError(res, mapped ?? toBrokerError(err, deps.log, meta), meta);
  });
  return app;
}

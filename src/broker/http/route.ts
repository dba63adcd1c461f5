/** The shape of a route in the table: thin handlers — parse, validate, one domain call, respond. */
import type { Request } from 'express';
import type { Logger } from 'pino';
import type { Identity } from '../auth.js';
import type { Authenticator } from '../auth.js';
import type { KeyService } from '../keys.js';
import type { LoginService } from '../identity/login.js';
import type { PrincipalAdmin } from '../principals.js';
import type { ServiceRegistry } from '../services.js';
import type { Store } from '../store/store.js';
import type { RequestMeta } from './respond.js';
import type { Metrics } from '../metrics.js';

export interface AppDeps {
  registry: ServiceRegistry;
  keys: KeyService;
  principals: PrincipalAdmin;
  login: LoginService;
  auth: Authenticator;
  store: Store;
  caCertPem: string;
  version: string;
  log: Logger;
  /** The OpenAPI document served at /v1/openapi.json (null: not shipped). */
  openapi: unknown;
  health: () => Record<string, unknown>;
  metrics: Metrics;
  /** Local UIDs that may read /metrics without a token (the broker's own, root, the config's). */
  metricsUids: readonly number[];
  /** Write buffered audit events (before reading the audit table). */
  flushAudit: () => void;
}

export interface Ctx {
  req: Request;
  params: Record<string, string>;
  query: Record<string, unknown>;
  body: unknown;
  /** Present on routes with `auth: true`. */
  identity: Identity;
  source: string;
  meta: RequestMeta;
}

export interface Reply {
  status?: number;
  json?: unknown;
  /** A non-JSON body (the CA PEM). */
  text?: { contentType: string; body: string };
}

export interface Route {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  path: string;
  auth: boolean;
  handler: (ctx: Ctx, deps: AppDeps) => Reply | Promise<Reply>;
}

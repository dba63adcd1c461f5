/** Service routes: register, query, get, unregister, ready, heartbeat, load, list keys. */
import type { Route } from '../route.js';
import {
  EmptyBody,
  RenewCertBody,
  LoadBody,
  NoParams,
  QueryParams,
  RegisterBody,
  parse,
  serviceParams,
} from '../schemas.js';

export const serviceRoutes: Route[] = [
  {
    method: 'POST',
    path: '/v1/services',
    auth: true,
    handler: async ({ identity, body, source, meta }, d) => {
      const res = await d.registry.register(identity, parse(RegisterBody, body, 'body'), source);
      meta.fields.service = `${res.service.owner}/${res.service.name}`;
      return { status: 201, json: res };
    },
  },
  {
    method: 'GET',
    path: '/v1/services',
    auth: true,
    handler: ({ identity, query }, d) => {
      const q = parse(QueryParams, query, 'query');
      return {
        json: d.registry.query(identity, {
          match: q.match,
          limit: q.limit ?? 100,
          cursor: q.cursor,
        }),
      };
    },
  },
  {
    method: 'GET',
    path: '/v1/services/:owner/:name',
    auth: true,
    handler: ({ identity, params, query }, d) => {
      parse(NoParams, query, 'query');
      const { owner, name } = serviceParams(params);
      return { json: { service: d.registry.get(identity, owner, name) } };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/services/:owner/:name',
    auth: true,
    handler: ({ identity, params, source }, d) => {
      const { owner, name } = serviceParams(params);
      d.registry.unregister(identity, owner, name, source);
      return { status: 204 };
    },
  },
  {
    method: 'POST',
    path: '/v1/services/:owner/:name/ready',
    auth: true,
    handler: async ({ req, identity, params, body, source }, d) => {
      parse(EmptyBody, body, 'body');
      const { owner, name } = serviceParams(params);
      // The request's own connection: on the broker host it tells which Unix user confirms.
      return {
        json: { service: await d.registry.ready(identity, owner, name, source, req.socket) },
      };
    },
  },
  {
    method: 'POST',
    path: '/v1/services/:owner/:name/heartbeat',
    auth: true,
    handler: ({ identity, params, body }, d) => {
      parse(EmptyBody, body, 'body');
      const { owner, name } = serviceParams(params);
      return { json: { service: d.registry.heartbeat(identity, owner, name) } };
    },
  },
  {
    method: 'POST',
    path: '/v1/services/:owner/:name/cert',
    auth: true,
    handler: async ({ identity, params, body }, d) => {
      const { csr } = parse(RenewCertBody, body, 'body');
      const { owner, name } = serviceParams(params);
      return { json: await d.registry.renewCert(identity, owner, name, csr) };
    },
  },
  {
    method: 'POST',
    path: '/v1/services/:owner/:name/keys',
    auth: true,
    handler: ({ identity, params, body, source, meta }, d) => {
      const req = parse(LoadBody, body, 'body');
      const { owner, name } = serviceParams(params);
      const res = d.keys.load(identity, owner, name, req, source);
      meta.fields.service = `${owner}/${name}`;
      meta.fields.keyId = res.keyId;
      return { status: 201, json: res };
    },
  },
  {
    method: 'GET',
    path: '/v1/services/:owner/:name/keys',
    auth: true,
    handler: ({ identity, params, query }, d) => {
      parse(NoParams, query, 'query');
      const { owner, name } = serviceParams(params);
      return { json: d.keys.list(identity, owner, name) };
    },
  },
];

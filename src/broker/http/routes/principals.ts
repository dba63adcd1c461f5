/** Principal and token routes (admin, and self-service tokens). */
import type { Route } from '../route.js';
import {
  AddSshKeyBody,
  ClientCertBody,
  CreatePrincipalBody,
  CreateTokenBody,
  NoParams,
  UpdatePrincipalBody,
  parse,
  principalParam,
} from '../schemas.js';
import { requireAdmin } from '../../principals.js';
import { actorOf } from '../../auth.js';

export const principalRoutes: Route[] = [
  {
    method: 'GET',
    path: '/v1/principals',
    auth: true,
    handler: ({ identity, query }, d) => {
      parse(NoParams, query, 'query');
      return { json: d.principals.list(identity) };
    },
  },
  {
    method: 'POST',
    path: '/v1/principals',
    auth: true,
    handler: ({ identity, body, source }, d) => {
      requireAdmin(identity);
      const req = parse(CreatePrincipalBody, body, 'body');
      return {
        status: 201,
        json: d.principals.create(
          actorOf(identity),
          req.name,
          req.role ?? 'user',
          source,
          req.uid ?? null,
        ),
      };
    },
  },
  {
    method: 'GET',
    path: '/v1/principals/:name',
    auth: true,
    handler: ({ identity, params }, d) => ({
      json: { principal: d.principals.get(identity, principalParam(params)) },
    }),
  },
  {
    method: 'PATCH',
    path: '/v1/principals/:name',
    auth: true,
    handler: ({ identity, params, body, source }, d) => {
      requireAdmin(identity);
      const patch = parse(UpdatePrincipalBody, body, 'body');
      return {
        json: { principal: d.principals.update(identity, principalParam(params), patch, source) },
      };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/principals/:name',
    auth: true,
    handler: ({ identity, params, source }, d) => {
      d.principals.remove(identity, principalParam(params), source);
      return { status: 204 };
    },
  },
  {
    method: 'GET',
    path: '/v1/principals/:name/tokens',
    auth: true,
    handler: ({ identity, params }, d) => ({
      json: d.principals.listTokens(identity, principalParam(params)),
    }),
  },
  {
    method: 'POST',
    path: '/v1/principals/:name/tokens',
    auth: true,
    handler: ({ identity, params, body, source }, d) => {
      const req = parse(CreateTokenBody, body, 'body');
      return {
        status: 201,
        json: d.principals.createToken(identity, principalParam(params), req, source),
      };
    },
  },
  {
    method: 'GET',
    path: '/v1/principals/:name/ssh-keys',
    auth: true,
    handler: ({ identity, params }, d) => ({
      json: d.principals.listSshKeys(identity, principalParam(params)),
    }),
  },
  {
    method: 'POST',
    path: '/v1/principals/:name/ssh-keys',
    auth: true,
    handler: ({ identity, params, body, source }, d) => {
      const { key } = parse(AddSshKeyBody, body, 'body');
      return {
        status: 201,
        json: d.principals.addSshKey(identity, principalParam(params), key, source),
      };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/principals/:name/ssh-keys/:fingerprint',
    auth: true,
    handler: ({ identity, params, source }, d) => {
      d.principals.removeSshKey(identity, principalParam(params), params.fingerprint ?? '', source);
      return { status: 204 };
    },
  },
  {
    method: 'POST',
    path: '/v1/principals/:name/client-cert',
    auth: true,
    handler: async ({ identity, params, body, source }, d) => {
      const { csr } = parse(ClientCertBody, body, 'body');
      return {
        status: 201,
        json: await d.principals.issueClientCert(identity, principalParam(params), csr, source),
      };
    },
  },
  {
    method: 'DELETE',
    path: '/v1/tokens/:tokenId',
    auth: true,
    handler: ({ identity, params, source }, d) => {
      d.principals.revokeToken(identity, params.tokenId ?? '', source);
      return { status: 204 };
    },
  },
];

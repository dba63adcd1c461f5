/** Logging in as the Unix user one is (issue 12): `POST /v1/login`. */
import { BrokerError } from '../../../protocol/errors.js';
import type { Route } from '../route.js';
import { EmptyBody, parse } from '../schemas.js';

export const identityRoutes: Route[] = [
  {
    // `Authorization: MUNGE <credential>` anywhere the cluster's munge.key reaches; no
    // Authorization at all on the broker host (the kernel names the connection's owner).
    method: 'POST',
    path: '/v1/login',
    auth: false,
    handler: async ({ req, body, source }, d) => {
      if (body !== undefined) parse(EmptyBody, body, 'body');
      const auth = req.headers.authorization;
      if (auth !== undefined) {
        const m = /^MUNGE (\S{1,16384})$/.exec(auth);
        if (!m)
          throw new BrokerError(
            'unauthenticated',
            'log in with Authorization: MUNGE <credential> (munge -n), or with no Authorization on the broker host',
          );
        return { json: await d.login.withMunge(m[1]!, source) };
      }
      return { json: await d.login.asPeer(req.socket, source) };
    },
  },
];

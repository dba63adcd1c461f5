/** docs/api/openapi.json describes exactly the routes of the route table, and every error code. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROUTES } from '../../src/broker/http/app.js';
import { ERROR_CATALOGUE } from '../../src/protocol/errors.js';
import { ROOT } from '../helpers/daemon.js';

const doc = JSON.parse(readFileSync(join(ROOT, 'docs', 'api', 'openapi.json'), 'utf8'));
const openapiPath = (p: string) => p.replace(/:(\w+)/g, '{$1}');

describe('OpenAPI document', () => {
  it('is OpenAPI 3.x', () => {
    expect(doc.openapi).toMatch(/^3\./);
  });

  for (const r of ROUTES) {
    it(`documents ${r.method} ${r.path}`, () => {
      expect(
        doc.paths[openapiPath(r.path)]?.[r.method.toLowerCase()],
        `${r.method} ${r.path}`,
      ).toBeDefined();
    });
  }

  it('documents no route the broker does not serve', () => {
    const served = new Set(ROUTES.map((r) => `${r.method.toLowerCase()} ${openapiPath(r.path)}`));
    for (const [path, ops] of Object.entries(
      doc.paths as Record<string, Record<string, unknown>>,
    )) {
      for (const method of Object.keys(ops).filter((m) =>
        ['get', 'post', 'patch', 'delete', 'put'].includes(m),
      )) {
        expect(served.has(`${method} ${path}`), `${method} ${path}`).toBe(true);
      }
    }
  });

  it('lists every wire error code', () => {
    // Client-only codes (status 0: unreachable, insecure_path) never cross the wire.
    const wire = Object.entries(ERROR_CATALOGUE)
      .filter(([, e]) => e.status !== 0)
      .map(([c]) => c);
    expect([...doc.components.schemas.ErrorCode.enum].sort()).toEqual(wire.sort());
  });
});

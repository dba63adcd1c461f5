/** The error catalogue: every code documented, every code used (fastify test/internals/errors). */
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BrokerError, ERROR_CATALOGUE } from '../../src/protocol/errors.js';
import { ROOT } from '../helpers/daemon.js';

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

describe('error catalogue', () => {
  const docs = readFileSync(join(ROOT, 'docs', 'errors.md'), 'utf8');
  const code = sources(join(ROOT, 'src'))
    .filter((f) => !f.endsWith('protocol/errors.ts'))
    .map((f) => readFileSync(f, 'utf8'))
    .join('\n');

  for (const [name, entry] of Object.entries(ERROR_CATALOGUE)) {
    it(`${name} is documented in docs/errors.md`, () => {
      expect(docs).toContain('### `' + name + '`');
    });
    it(`${name} is used by the code`, () => {
      expect(code).toMatch(new RegExp(`['"]${name}['"]`));
    });
    it(`${name} has a 4xx/5xx status (or 0 for client-only)`, () => {
      expect(entry.status === 0 || (entry.status >= 400 && entry.status < 600)).toBe(true);
    });
  }

  it('BrokerError carries code, status and the wire shape', () => {
    const e = new BrokerError('service_not_found', 'no service a/b');
    expect(e.status).toBe(404);
    expect(e.toJSON('r1')).toEqual({
      error: { code: 'service_not_found', message: 'no service a/b' },
      requestId: 'r1',
    });
  });
});

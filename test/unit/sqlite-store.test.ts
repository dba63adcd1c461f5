/** DUR-1 holds after bookkeeping writes: they relax synchronous for their own commit only. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/broker/store/sqlite-store.js';

describe('SqliteStore bookkeeping writes', () => {
  const dirs: string[] = [];
  afterEach(() => {
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  it('audit rows and key uses commit, and synchronous is FULL again afterwards', () => {
    const dir = mkdtempSync(join(tmpdir(), 'store-'));
    dirs.push(dir);
    const store = new SqliteStore(join(dir, 'broker.db'));
    try {
      expect(store.pragmas().synchronous).toBe(2);
      store.appendAudit([
        {
          at: 1,
          actor: 'a',
          action: 'test.event',
          target: null,
          outcome: 'ok',
          source: null,
          count: 1,
          details: null,
        },
      ]);
      store.touchKeys(new Map([['key_missing', 1]]));
      expect(store.pragmas().synchronous).toBe(2);
      expect(store.listAudit({ limit: 10 }).map((r) => r.action)).toEqual(['test.event']);
    } finally {
      store.close();
    }
  });
});

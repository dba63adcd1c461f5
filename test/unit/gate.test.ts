/** The TCP gate of DESIGN §7, on real sockets with a stub verify (the broker is not the subject here). */
import { createConnection, createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { gate } from '../../src/server-sdk/gate.js';

const GOOD = 'bkk_' + 'g'.repeat(43);
let server: Server | undefined;
afterEach(() => server?.close());

async function start(opts: { timeoutMs?: number } = {}) {
  const seen: string[] = [];
  server = createServer(
    gate(
      (s) => {
        s.on('data', (c) => {
          seen.push(c.toString());
          s.write('got:' + c.toString());
        });
      },
      {
        verify: async (k) =>
          k === GOOD
            ? { valid: true, principal: 'alice', keyId: 'key_1', expiresAt: '' }
            : { valid: false },
        ...opts,
      },
    ),
  );
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  return { port: (server!.address() as { port: number }).port, seen };
}

function exchange(port: number, chunks: string[], waitMs = 300): Promise<string> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: '127.0.0.1' });
    let out = '';
    s.on('data', (c) => (out += c.toString()));
    s.on('close', () => resolve(out));
    s.on('error', () => resolve(out));
    (async () => {
      for (const c of chunks) {
        s.write(c);
        await new Promise((r) => setTimeout(r, 20));
      }
      setTimeout(() => s.destroy(), waitMs);
    })();
  });
}

describe('gate()', () => {
  it('ok/key split across packets, data after the key line reaches the app untouched', async () => {
    const { port, seen } = await start();
    const out = await exchange(port, [GOOD.slice(0, 10), GOOD.slice(10) + '\nhel', 'lo']);
    expect(out.startsWith('OK\n')).toBe(true);
    expect(seen.join('')).toBe('hello');
  });

  it('ok/CRLF line endings are accepted', async () => {
    const { port } = await start();
    expect(await exchange(port, [GOOD + '\r\n'])).toBe('OK\n');
  });

  it('fail/no key line in time → DENIED, app sees nothing', async () => {
    const { port, seen } = await start({ timeoutMs: 200 });
    expect(await exchange(port, ['bkk_partial'], 600)).toBe('DENIED\n');
    expect(seen).toEqual([]);
  });

  it('fail/line over 512 bytes → DENIED without waiting for a newline', async () => {
    const { port, seen } = await start();
    expect(await exchange(port, ['x'.repeat(513)])).toBe('DENIED\n');
    expect(seen).toEqual([]);
  });

  it('fail/verify throws (broker down) → DENIED', async () => {
    server = createServer(
      gate(() => {}, { verify: async () => Promise.reject(new Error('down')) }),
    );
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    expect(await exchange(port, [GOOD + '\n'])).toBe('DENIED\n');
  });
});

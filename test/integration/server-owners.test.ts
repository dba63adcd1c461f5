/**
 * LOC-3: broker run attributes each connection it makes to its app's port (src/host/sock-diag.ts).
 * By netlink through the Python helper, and by /proc/net/tcp where the helper cannot run: the
 * same answers — our own listener is ours, a listener of another real Unix user is hers, even
 * before it has accepted the connection (older kernels show such a socket as UID 0).
 */
import { spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { ServerOwners } from '../../src/host/sock-diag.js';
import { announceSkip, killAs, lineFrom, unixUser } from '../helpers/users.js';

const connected = (port: number, host: string) =>
  new Promise<Socket>((resolve, reject) => {
    const s = connect(port, host, () => resolve(s));
    s.once('error', reject);
  });

const listening = (host: string) =>
  new Promise<Server>((resolve) => {
    const srv = createServer(() => {}).listen(0, host, () => resolve(srv));
  });

describe.each([
  ['netlink', {}],
  ['/proc (no helper)', { python: '/nonexistent/python3' }],
])('ServerOwners by %s', (how, opts) => {
  const owners = new ServerOwners(opts);
  afterAll(() => owners.close());

  it(`ok/the helper ${how === 'netlink' ? 'runs' : 'is not there and /proc answers'}`, async () => {
    expect(await owners.viaNetlink()).toBe(how === 'netlink');
  });

  it.each([
    ['127.0.0.1', '127.0.0.1'],
    ['127.0.0.1', '::'],
    ['::1', '::1'],
  ])('ok/our own listener on %s (connecting to %s) is ours', async (host, listenOn) => {
    const srv = await listening(listenOn);
    const s = await connected((srv.address() as { port: number }).port, host);
    expect(await owners.lookup(s)).toEqual([process.getuid!()]);
    s.destroy();
    srv.close();
  });

  it.skipIf(announceSkip('ServerOwners against another user'))(
    "fail/LOC-3 mallory's listener, which has not accepted the connection: her UID",
    async () => {
      const mallory = unixUser('bt-mallory');
      const p = spawn(
        'runuser',
        [
          '-u',
          mallory.name,
          '--',
          'python3',
          '-c',
          "import socket,time\ns=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(5); print(s.getsockname()[1],flush=True); time.sleep(30)",
        ],
        { stdio: ['ignore', 'pipe', 'ignore'], detached: true },
      );
      const port = Number(await lineFrom(p, (l) => /^\d+$/.test(l)));
      const s = await connected(port, '127.0.0.1');
      expect(await owners.lookup(s)).toEqual([mallory.uid]);
      s.destroy();
      killAs(p);
    },
  );
});

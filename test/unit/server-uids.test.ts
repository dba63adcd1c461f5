/**
 * LOC-3: who owns the server end of a connection broker run made to its app's port
 * (src/host/socket-owner.ts serverUids), from rows of /proc/net/tcp{,6}. An accepted socket names
 * its owner; one not accepted yet (inode 0) is shown with UID 0 by older kernels, so its
 * listener's owner counts; a connection that is not (or no longer) there has no owner.
 */
import { describe, expect, it } from 'vitest';
import { serverUids, type TcpSocketEntry } from '../../src/host/socket-owner.js';

const ours = { address: '127.0.0.1', port: 50000 };
const app = { address: '127.0.0.1', port: 41000 };
const row = (
  local: { address: string; port: number },
  remote: { address: string; port: number },
  state: string,
  uid: number,
  inode: number,
): TcpSocketEntry => ({ local, remote, state, uid, inode });
const any = { address: '0.0.0.0', port: 0 };

describe('serverUids', () => {
  it('ok/an accepted socket: its owner', () => {
    const t = [row(app, any, 'LISTEN', 1000, 7), row(app, ours, 'ESTABLISHED', 1000, 9)];
    expect(serverUids(t, ours, app)).toEqual([1000]);
  });

  it("fail/LOC-3 mallory's listener answered: her UID, whatever listens elsewhere", () => {
    const t = [
      row({ address: '::1', port: 41000 }, any, 'LISTEN', 1000, 7),
      row(app, any, 'LISTEN', 1001, 8),
      row(app, ours, 'ESTABLISHED', 1001, 9),
    ];
    expect(serverUids(t, ours, app)).toEqual([1001]);
  });

  it('ok/not accepted yet (inode 0, UID 0 on older kernels): the listener on its address or a wildcard owns it', () => {
    const queued = row(app, ours, 'ESTABLISHED', 0, 0);
    expect(serverUids([row(app, any, 'LISTEN', 1000, 7), queued], ours, app)).toEqual([1000]);
    expect(
      serverUids([row({ address: '::', port: 41000 }, any, 'LISTEN', 1001, 7), queued], ours, app),
    ).toEqual([1001]);
    // A listener on another address of the same port did not make it.
    expect(
      serverUids(
        [row({ address: '127.0.0.2', port: 41000 }, any, 'LISTEN', 0, 7), queued],
        ours,
        app,
      ),
    ).toBeNull();
  });

  it("fail/LOC-5 the client end of an accepted connection with inode 0 (its process closed it): no owner, never the listener's", () => {
    // mallory bound the port before alice listened on it (SO_REUSEADDR), connected, wrote, closed.
    const orphan = row(app, ours, 'ESTABLISHED', 1001, 0);
    const alices = row(app, any, 'LISTEN', 1000, 7);
    expect(serverUids([alices, orphan], ours, app, { peer: true })).toBeNull();
    expect(
      serverUids([alices, row(app, ours, 'ESTABLISHED', 1001, 9)], ours, app, { peer: true }),
    ).toEqual([1001]);
  });

  it('fail/not there, or only its TIME_WAIT remains (UID 0): no owner', () => {
    expect(serverUids([row(app, any, 'LISTEN', 1000, 7)], ours, app)).toBeNull();
    expect(serverUids([row(app, ours, '06', 0, 0)], ours, app)).toBeNull();
    // Our own end of the connection is not its server end.
    expect(serverUids([row(ours, app, 'ESTABLISHED', 1000, 5)], ours, app)).toBeNull();
  });

  it('ok/IPv4-mapped and IPv6 addresses are compared in canonical form', () => {
    const v6 = { address: '::1', port: 41000 };
    const me = { address: '0:0:0:0:0:0:0:1', port: 50001 };
    const t = [row(v6, { address: '::1', port: 50001 }, 'ESTABLISHED', 1000, 9)];
    expect(serverUids(t, me, v6)).toEqual([1000]);
    const mapped = row(app, ours, 'ESTABLISHED', 1000, 9);
    expect(serverUids([mapped], { ...ours, address: '::ffff:127.0.0.1' }, app)).toEqual([1000]);
  });
});

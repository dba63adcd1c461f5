/**
 * SSH to the broker's gateway with the host key pinned through the TLS API (no trust on first
 * use), Nagle off (PERFORMANCE.md fact 1). ssh2 is loaded lazily: commands that do not tunnel
 * never pay for it.
 */
import { createHash } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import type { Client as SshClient } from 'ssh2';
import { BrokerError } from '../protocol/errors.js';
import type { BrokerClient } from './broker-client.js';

export interface GatewayInfo {
  host: string;
  port: number;
  hostKey: string;
  fingerprint: string;
}

export async function gatewayInfo(broker: BrokerClient): Promise<GatewayInfo> {
  const h = await broker.health();
  if (!h.gateway) throw new BrokerError('unreachable', 'this broker runs no SSH gateway');
  return h.gateway;
}

/** A `known_hosts` line for stock OpenSSH, from the pinned API. */
export function knownHostsLine(g: GatewayInfo): string {
  const host = g.port === 22 ? g.host : `[${g.host}]:${g.port}`;
  return `${host} ${g.hostKey}`;
}

/** Open an authenticated SSH connection to the gateway. `password` is a user or service token. */
export async function sshConnect(
  g: GatewayInfo,
  username: string,
  password: string,
  opts: { readyTimeoutMs?: number; keepaliveMs?: number } = {},
): Promise<SshClient> {
  const { default: ssh2 } = await import('ssh2');
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host: g.host, port: g.port });
    sock.setNoDelay(true);
    const client = new ssh2.Client();
    let settled = false;
    client.once('ready', () => {
      settled = true;
      resolve(client);
    });
    client.on('error', (err: Error & { level?: string }) => {
      if (settled) return;
      settled = true;
      sock.destroy();
      const what =
        err.level === 'client-authentication'
          ? 'the gateway refused the token'
          : /host key/i.test(err.message) || err.message.includes('verification')
            ? `the gateway's host key does not match the pinned ${g.fingerprint}`
            : err.message;
      reject(
        new BrokerError(
          err.level === 'client-authentication' ? 'unauthenticated' : 'unreachable',
          `SSH to ${g.host}:${g.port}: ${what}`,
          {
            cause: err,
          },
        ),
      );
    });
    client.connect({
      sock,
      username,
      password,
      tryKeyboard: false,
      readyTimeout: opts.readyTimeoutMs ?? 15_000,
      keepaliveInterval: opts.keepaliveMs ?? 15_000,
      keepaliveCountMax: 3,
      hostVerifier: (key: Buffer) =>
        'SHA256:' + createHash('sha256').update(key).digest('base64').replace(/=+$/, '') ===
        g.fingerprint,
    });
  });
}

/** Address helpers. No DNS anywhere: hosts are IP literals, canonicalised before any check. */
import { createConnection, isIP } from 'node:net';
import { networkInterfaces } from 'node:os';

/** Canonical form of an IP literal (IPv4-mapped IPv6 folded to IPv4), or null if not an IP. */
export function canonicalIp(value: string): string | null {
  let v = value.trim();
  if (v.startsWith('[') && v.endsWith(']')) v = v.slice(1, -1);
  const kind = isIP(v);
  if (kind === 4) return v;
  if (kind !== 6) return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(v);
  if (mapped) return mapped[1]!;
  return v.toLowerCase();
}

export function isLoopback(ip: string): boolean {
  return ip === '::1' || /^127\./.test(ip);
}

/** Is `ip` an address of this host (loopback or any interface)? */
export function isLocalAddress(ip: string): boolean {
  if (isLoopback(ip)) return true;
  return Object.values(networkInterfaces())
    .flat()
    .some((a) => a && canonicalIp(a.address) === ip);
}

/** Probe `host:port` with a TCP connect: true when something accepts within `timeoutMs`. */
export async function probeTcp(host: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host, port });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(timeoutMs, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

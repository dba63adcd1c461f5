/**
 * Follow a one-time login URL the way a browser does, with curl: the key is exchanged for a
 * one-time ticket and a redirect to the session's own host (`s<hex>.NAME.OWNER.localhost`), where
 * the ticket becomes the `__Host-broker_session` cookie and a redirect to the page (SES-1).
 */
import { execFile } from 'node:child_process';

export interface LoggedIn {
  /** `https://s<hex>.NAME.OWNER.localhost:PORT` — the only origin the session works on. */
  origin: string;
  /** `__Host-broker_session=…`, for a Cookie header. */
  cookie: string;
  /** The cookie's attributes as set (`HttpOnly; Secure; …`). */
  attributes: string;
  /** Where the first step sent the browser (the ticket URL), and where the second one did. */
  ticketUrl: string;
  page: string;
}

function headersOf(url: string, caFile: string, extra: string[]): Promise<string> {
  return new Promise((resolve) =>
    execFile(
      'curl',
      ['-sS', '-D', '-', '-o', '/dev/null', '--cacert', caFile, ...extra, url],
      { timeout: 15_000 },
      (_e, out, err) => resolve(out + err),
    ),
  );
}

/** Both steps of a browser login; throws with the headers when a step is not a 303. */
export async function loginWith(
  url: string,
  caFile: string,
  extra: string[] = [],
): Promise<LoggedIn> {
  const first = await headersOf(url, caFile, extra);
  const ticketUrl = /^Location: (\S+)\r?$/m.exec(first)?.[1];
  if (!/^HTTP\/1\.1 303/.test(first) || !ticketUrl) throw new Error(`login step 1:\n${first}`);
  const second = await headersOf(ticketUrl, caFile, extra);
  const page = /^Location: (\S+)\r?$/m.exec(second)?.[1];
  const cookie = /^Set-Cookie: (__Host-broker_session=[^;]+); ?(.*)\r?$/m.exec(second);
  if (!/^HTTP\/1\.1 303/.test(second) || !page || !cookie)
    throw new Error(`login step 2:\n${second}`);
  return {
    origin: new URL(ticketUrl).origin,
    cookie: cookie[1]!,
    attributes: cookie[2]!,
    ticketUrl,
    page,
  };
}

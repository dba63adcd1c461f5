/** Requests node's HTTP parser rejects still get the API's JSON error shape (FUZZ-1, NET-3). */
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Daemon } from '../helpers/daemon.js';

function raw(d: Daemon, request: string): Promise<string> {
  const { hostname, port } = new URL(d.url);
  return new Promise((resolve, reject) => {
    const s = connect(
      { host: hostname, port: Number(port), ca: d.ca, servername: 'localhost' },
      () => s.end(request),
    );
    let out = '';
    s.on('data', (c) => (out += c.toString()));
    s.on('close', () => resolve(out));
    s.on('error', (e: NodeJS.ErrnoException) => (out ? resolve(out) : reject(e)));
  });
}

function bodyOf(response: string): any {
  return JSON.parse(response.slice(response.indexOf('\r\n\r\n') + 4));
}

describe('requests the HTTP parser rejects', () => {
  let d: Daemon;
  beforeAll(async () => {
    d = await Daemon.start();
  });
  afterAll(async () => {
    await d.stop();
  });

  it('fail/headers over 16 KiB → 431 headers_too_large in the error shape', async () => {
    const res = await raw(
      d,
      `GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
    );
    expect(res).toMatch(/^HTTP\/1\.1 431 /);
    const body = bodyOf(res);
    expect(body.error.code).toBe('headers_too_large');
    expect(res).toContain(`X-Request-Id: ${body.requestId}`);
  });

  it('fail/a malformed request line → 400 bad_request in the error shape', async () => {
    const res = await raw(d, 'GARBAGE\x01 / NOT-HTTP\r\n\r\n');
    expect(res).toMatch(/^HTTP\/1\.1 400 /);
    expect(bodyOf(res).error.code).toBe('bad_request');
  });

  it('ok/GET /v1/openapi.json serves the API description without a token', async () => {
    const r = await d.api('GET', '/v1/openapi.json', { token: null });
    expect(r.status).toBe(200);
    expect(r.body.openapi).toMatch(/^3\./);
    expect(Object.keys(r.body.paths)).toContain('/v1/verify');
  });

  it('ok/the daemon answers normally afterwards', async () => {
    expect((await d.api('GET', '/v1/health')).status).toBe(200);
  });
});

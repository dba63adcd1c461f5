/**
 * The error catalogue shared by the broker, both SDKs and the CLI.
 *
 * Every API error leaves the broker as `{"error":{"code","message"},"requestId"}` with the
 * status listed here. Codes are stable: clients branch on `code`, never on `message`. A code is
 * never reused for another meaning; `docs/errors.md` documents each one and a test keeps the two
 * in step.
 */
export const ERROR_CATALOGUE = {
  bad_request: {
    status: 400,
    summary: 'The request could not be parsed (malformed JSON, bad header).',
  },
  validation_failed: {
    status: 400,
    summary: 'The request parsed but a field is missing, unknown or out of policy.',
  },
  unauthenticated: { status: 401, summary: 'No credential, or one the broker does not accept.' },
  forbidden: { status: 403, summary: 'The credential is valid but may not do this.' },
  not_found: { status: 404, summary: 'No such route or resource.' },
  service_not_found: { status: 404, summary: 'No such service, or one the caller may not see.' },
  key_not_found: { status: 404, summary: 'No such client key, or one the caller may not revoke.' },
  principal_not_found: { status: 404, summary: 'No such principal.' },
  token_not_found: { status: 404, summary: 'No such token id.' },
  method_not_allowed: { status: 405, summary: 'The route exists but not with this method.' },
  name_taken: {
    status: 409,
    summary: 'A live service or principal already has this name, or another principal this UID.',
  },
  service_not_ready: {
    status: 409,
    summary: 'The service is registered but not ready (pending or offline).',
  },
  ssh_key_exists: {
    status: 409,
    summary: 'This SSH public key is already registered (to this or another principal).',
  },
  port_unavailable: {
    status: 409,
    summary: 'The requested port is in use, cooling down or outside the range.',
  },
  payload_too_large: { status: 413, summary: 'The request body exceeds 16 KiB.' },
  headers_too_large: {
    status: 431,
    summary: 'The request line and headers exceed 16 KiB.',
  },
  unsupported_media_type: { status: 415, summary: 'The body is not application/json (UTF-8).' },
  rate_limited: {
    status: 429,
    summary: 'Too many failed attempts; retry after `Retry-After` seconds.',
  },
  internal: {
    status: 500,
    summary: 'An unexpected error; details are in the broker log under the requestId.',
  },
  port_range_exhausted: {
    status: 503,
    summary: 'Every port in the configured range is taken or cooling down.',
  },
  identity_unavailable: {
    status: 503,
    summary:
      'The broker cannot check who you are right now: munged or unmunge is not answering on the broker host, or that way of logging in is off.',
  },
  unreachable: {
    status: 0,
    summary: 'Client side only: the broker could not be reached or TLS failed.',
  },
  insecure_path: {
    status: 0,
    summary:
      'Client side only: a file or directory others could read or replace (a loose credentials file, an --out-dir another user can write) was refused.',
  },
} as const satisfies Record<string, { status: number; summary: string }>;

/** A stable error code from {@link ERROR_CATALOGUE}. */
export type ErrorCode = keyof typeof ERROR_CATALOGUE;

/** The JSON body of every error response. */
export interface ErrorBody {
  error: { code: ErrorCode; message: string; details?: unknown };
  requestId: string;
}

/**
 * The one error class of the project. Thrown by the broker's domain code, answered by the HTTP
 * error handler, and rebuilt by the client SDK from the response body so that
 * `err.code === 'service_not_found'` works across the wire.
 */
export class BrokerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly details?: unknown;
  requestId?: string;
  /** Seconds to wait before retrying (rate_limited only). */
  retryAfterSeconds?: number;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: unknown } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'BrokerError';
    this.code = code;
    this.status = ERROR_CATALOGUE[code].status;
    this.details = options.details;
  }

  toJSON(requestId: string): ErrorBody {
    const error: ErrorBody['error'] = { code: this.code, message: this.message };
    if (this.details !== undefined) error.details = this.details;
    return { error, requestId };
  }
}

/** True when `code` names an entry of the catalogue. */
export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CATALOGUE, code);
}

/** Constants every part of the project agrees on. */
export const API_PREFIX = '/v1';
/** JSON request bodies larger than this are refused with 413. */
export const MAX_BODY_BYTES = 16 * 1024;
/** DESIGN §7: a key line longer than this is a refusal. */
export const MAX_KEY_LINE_BYTES = 512;
/** DESIGN §7: no key line within this time is a refusal. */
export const KEY_LINE_TIMEOUT_MS = 10_000;
export const DEFAULT_API_PORT = 7700;
export const DEFAULT_SSH_PORT = 7722;

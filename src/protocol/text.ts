/**
 * Text that reaches a terminal or a log line: control characters (C0, DEL, C1) and the Unicode
 * characters that reorder or hide text (bidi overrides and isolates, as in "Trojan Source") are
 * shown as `\uXXXX` escapes, and the result is bounded. (SECURITY.md LOG-2)
 */
// eslint-disable-next-line no-control-regex
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/g;
// eslint-disable-next-line no-control-regex
const UNSAFE_ONE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]/;

/** True when `s` has nothing a terminal would interpret or reorder. */
export function isPrintable(s: string): boolean {
  return !UNSAFE_ONE.test(s);
}

/** `s` with unsafe characters escaped, cut to `max` characters (an ellipsis marks the cut). */
export function printable(s: string, max = 200): string {
  const escaped = s.replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  return escaped.length > max ? `${escaped.slice(0, max - 1)}…` : escaped;
}

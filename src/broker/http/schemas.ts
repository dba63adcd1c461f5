/** Strict request schemas: unknown fields are a 400, never ignored (COMP-4). */
import { z } from 'zod';
import { BrokerError } from '../../protocol/errors.js';
import { GLOB_RE, PRINCIPAL_RE, SERVICE_NAME_RE } from '../../protocol/names.js';
import { MAX_KEY_LINE_BYTES } from '../../protocol/constants.js';
import { isPrintable } from '../../protocol/text.js';

const labelKey = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,62}$/);
const seconds = z.number().int().min(60);

export const RegisterBody = z
  .object({
    name: z.string().regex(SERVICE_NAME_RE, 'must match ^[a-z0-9][a-z0-9._-]{0,62}$'),
    mode: z.enum(['tcp', 'https']).optional(),
    tunnel: z.enum(['ssh', 'none']).optional(),
    host: z.string().min(1).max(64).optional(),
    port: z.number().int().min(1).max(65535).optional(),
    ttlSeconds: seconds.optional(),
    csr: z.string().min(1).max(8192).optional(),
    labels: z
      .record(labelKey, z.string().max(256).refine(isPrintable, 'no control or bidi characters'))
      .refine((l) => Object.keys(l).length <= 16, 'at most 16 labels')
      .optional(),
    exposure: z.enum(['unix-socket', 'private-network', 'app-credential', 'open']).optional(),
  })
  .strict();

export const LoadBody = z
  .object({ ttlSeconds: seconds.optional(), once: z.boolean().optional() })
  .strict();

export const VerifyBody = z.object({ key: z.string().max(MAX_KEY_LINE_BYTES) }).strict();

export const VerifyCertBody = z.object({ fingerprint: z.string().max(80) }).strict();

export const LiveKeysBody = z.object({ keyIds: z.array(z.string().max(40)).max(1000) }).strict();

export const RenewCertBody = z.object({ csr: z.string().min(1).max(8192).optional() }).strict();

export const ClientCertBody = z.object({ csr: z.string().min(1).max(8192) }).strict();

export const EmptyBody = z.object({}).strict();

/** A Unix UID (uid_t; 2^32-1 is (uid_t)-1, never a user). */
const unixUid = z
  .number()
  .int()
  .min(0)
  .max(2 ** 32 - 2);

export const CreatePrincipalBody = z
  .object({
    name: z.string().regex(PRINCIPAL_RE, 'must match ^[a-z_][a-z0-9_.-]{0,31}$'),
    role: z.enum(['user', 'admin']).optional(),
    /** The Unix user it is: a MUNGE or same-host login as that UID gets this principal. */
    uid: unixUid.optional(),
  })
  .strict();

export const UpdatePrincipalBody = z
  .object({
    role: z.enum(['user', 'admin']).optional(),
    disabled: z.boolean().optional(),
    /** Bind the principal to a Unix user (its UID), or unbind it (null). */
    uid: unixUid.nullable().optional(),
  })
  .strict();

export const CreateTokenBody = z
  .object({
    label: z
      .string()
      .max(64)
      .regex(/^[\x20-\x7e]*$/, 'printable ASCII only')
      .optional(),
    ttlSeconds: seconds.optional(),
  })
  .strict();

export const AddSshKeyBody = z.object({ key: z.string().min(20).max(4096) }).strict();

export const QueryParams = z
  .object({
    match: z.string().regex(GLOB_RE, 'a glob of name characters, * and ?').optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
    cursor: z
      .string()
      .max(200)
      .regex(/^[A-Za-z0-9_-]+$/)
      .optional(),
  })
  .strict();

export const AuditParams = z
  .object({
    since: z.iso.datetime({ offset: true }).optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
  })
  .strict();

export const NoParams = z.object({}).strict();

/** Parse with a schema or throw 400 validation_failed with short, input-free details. */
const POISON_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** The first key anywhere in `value` that could pollute a prototype, or null. */
function poisonKey(value: unknown, depth = 0): string | null {
  if (typeof value !== 'object' || value === null || depth > 32) return null;
  for (const key of Object.keys(value)) {
    if (POISON_KEYS.has(key)) return key;
    const inner = poisonKey((value as Record<string, unknown>)[key], depth + 1);
    if (inner) return inner;
  }
  return null;
}

/** Parse with a schema or throw 400 validation_failed with short, input-free details. */
export function parse<T extends z.ZodType>(
  schema: T,
  input: unknown,
  where: 'body' | 'query',
): z.infer<T> {
  // zod drops a `__proto__` key from records without a word; refuse such keys outright (COMP-4).
  const poison = poisonKey(input);
  if (poison) {
    throw new BrokerError(
      'validation_failed',
      `invalid ${where}: the key ${poison} is not allowed`,
      {
        details: [{ path: where, message: `the key ${poison} is not allowed` }],
      },
    );
  }
  const r = schema.safeParse(input ?? {});
  if (r.success) return r.data;
  const details = r.error.issues.slice(0, 10).map((i) => ({
    path: [where, ...i.path.map(String)].join('.').slice(0, 100),
    message: i.message.slice(0, 200),
  }));
  throw new BrokerError(
    'validation_failed',
    `invalid ${where}: ${details[0]!.path}: ${details[0]!.message}`,
    {
      details,
    },
  );
}

/** Path parameters: names are allow-listed, never used as paths (FUZZ-2). */
export function serviceParams(p: Record<string, string>): { owner: string; name: string } {
  const { owner = '', name = '' } = p;
  if (!PRINCIPAL_RE.test(owner) || !SERVICE_NAME_RE.test(name)) {
    throw new BrokerError('validation_failed', 'not a valid service name; expected OWNER/NAME');
  }
  return { owner, name };
}

export function principalParam(p: Record<string, string>): string {
  const name = p.name ?? '';
  if (!PRINCIPAL_RE.test(name))
    throw new BrokerError('validation_failed', 'not a valid principal name');
  return name;
}

/**
 * The embedded registry on better-sqlite3: WAL with synchronous=FULL (read back at open, DUR-1),
 * immediate write transactions, prepared statements, foreign keys on. Open it on `:memory:` for
 * unit tests: the same SQL, no file.
 */
import Database from 'better-sqlite3';
import { randomInt } from 'node:crypto';
import { BrokerError } from '../../protocol/errors.js';
import { MIGRATIONS } from './migrations.js';
import type {
  AuditQuery,
  AuditRow,
  ClientCertRow,
  KeyRow,
  NewService,
  PortPolicy,
  PrincipalRow,
  Revocation,
  UnixIdentity,
  ServiceQuery,
  ServiceRow,
  SshKeyRow,
  Store,
  TokenRow,
} from './store.js';

type Row = Record<string, unknown>;

const toPrincipal = (r: Row): PrincipalRow => ({
  name: r.name as string,
  role: r.role as PrincipalRow['role'],
  disabled: r.disabled === 1,
  createdAt: r.created_at as number,
  uid: (r.uid as number | null) ?? null,
  groups: r.groups ? (JSON.parse(r.groups as string) as string[]) : null,
  managed: r.managed === 1,
});

const toToken = (r: Row): TokenRow => ({
  id: r.id as string,
  hash: r.hash as Buffer,
  principal: r.principal as string,
  label: (r.label as string | null) ?? null,
  createdAt: r.created_at as number,
  expiresAt: (r.expires_at as number | null) ?? null,
  revokedAt: (r.revoked_at as number | null) ?? null,
  parentId: (r.parent_id as string | null) ?? null,
});

const toService = (r: Row): ServiceRow => ({
  id: r.id as string,
  owner: r.owner as string,
  name: r.name as string,
  mode: r.mode as ServiceRow['mode'],
  tunnel: r.tunnel as ServiceRow['tunnel'],
  host: r.host as string,
  port: r.port as number,
  status: r.status as ServiceRow['status'],
  tokenHash: r.token_hash as Buffer,
  ttlSeconds: r.ttl_seconds as number,
  createdAt: r.created_at as number,
  expiresAt: r.expires_at as number,
  lastSeenAt: (r.last_seen_at as number | null) ?? null,
  heartbeatAt: (r.heartbeat_at as number | null) ?? null,
  certFingerprint: (r.cert_fingerprint as string | null) ?? null,
  certNotAfter: (r.cert_not_after as number | null) ?? null,
  labels: JSON.parse(r.labels as string) as Record<string, string>,
  tokenId: (r.token_id as string | null) ?? null,
  uid: (r.uid as number | null) ?? null,
  exposure: (r.exposure as ServiceRow['exposure']) ?? null,
});

const toKey = (r: Row): KeyRow => ({
  id: r.id as string,
  hash: r.hash as Buffer,
  serviceId: r.service_id as string,
  principal: r.principal as string,
  createdAt: r.created_at as number,
  expiresAt: r.expires_at as number,
  usesLeft: (r.uses_left as number | null) ?? null,
  lastUsedAt: (r.last_used_at as number | null) ?? null,
  tokenId: (r.token_id as string | null) ?? null,
});

const toCert = (r: Row): ClientCertRow => ({
  id: r.id as string,
  fingerprint: r.fingerprint as string,
  principal: r.principal as string,
  tokenId: (r.token_id as string | null) ?? null,
  createdAt: r.created_at as number,
  expiresAt: r.expires_at as number,
});

const toSshKey = (r: Row): SshKeyRow => ({
  fingerprint: r.fingerprint as string,
  principal: r.principal as string,
  key: r.key as string,
  comment: (r.comment as string | null) ?? null,
  createdAt: r.created_at as number,
});

const isUnique = (err: unknown, column: string) =>
  (err as { code?: string }).code === 'SQLITE_CONSTRAINT_UNIQUE' &&
  String((err as Error).message).includes(column);

export class SqliteStore implements Store {
  readonly kind = 'sqlite';
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<SqliteStore['prepare']>;
  /** Next-fit cursor for port allocation: spreads reuse so cool-downs rarely bite. */
  private portCursor = -1;

  constructor(readonly path: string) {
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    // The daemon is the only writer (the state-dir lock sees to that; `broker backup` only reads,
    // and WAL readers never block it), so a lock held by someone else is an operator's sqlite3
    // session. better-sqlite3 waits synchronously, freezing the whole event loop: wait briefly,
    // then fail that one request with a 500 rather than stall every client for seconds.
    this.db.pragma('busy_timeout = 1000');
    const p = this.pragmas();
    if (path !== ':memory:' && (p.journal_mode !== 'wal' || p.synchronous !== 2)) {
      throw new Error(`SQLite durability settings did not take: ${JSON.stringify(p)}`);
    }
    this.migrate();
    this.stmts = this.prepare();
  }

  pragmas(): Record<string, string | number> {
    return {
      journal_mode: this.db.pragma('journal_mode', { simple: true }) as string,
      synchronous: this.db.pragma('synchronous', { simple: true }) as number,
      foreign_keys: this.db.pragma('foreign_keys', { simple: true }) as number,
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new Error(
        `database schema version ${current} is newer than this broker (${MIGRATIONS.length}); upgrade the broker`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db
        .transaction(() => {
          this.db.exec(MIGRATIONS[v]!);
          this.db.pragma(`user_version = ${v + 1}`);
        })
        .immediate();
    }
  }

  private prepare() {
    const d = this.db;
    return {
      getMeta: d.prepare('SELECT value FROM meta WHERE key = ?').pluck(),
      setMeta: d.prepare(
        'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
      ),
      insPrincipal: d.prepare(
        'INSERT INTO principals (name, role, disabled, created_at, uid, groups, managed) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      principalByUid: d.prepare('SELECT * FROM principals WHERE uid = ?'),
      loginUpdate: d.prepare(
        'UPDATE principals SET uid = @uid, groups = @groups, role = @role WHERE name = @name',
      ),
      seenCredential: d.prepare(
        'INSERT INTO munge_seen (hash, expires_at) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING',
      ),
      dropSeen: d.prepare('DELETE FROM munge_seen WHERE expires_at <= ?'),
      isSeen: d.prepare('SELECT 1 FROM munge_seen WHERE hash = ? AND expires_at > ?'),
      getPrincipal: d.prepare('SELECT * FROM principals WHERE name = ?'),
      listPrincipals: d.prepare('SELECT * FROM principals ORDER BY name'),
      delPrincipal: d.prepare('DELETE FROM principals WHERE name = ?'),
      insToken: d.prepare(
        'INSERT INTO tokens (id, hash, principal, label, created_at, expires_at, revoked_at, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      tokenByHash: d.prepare('SELECT * FROM tokens WHERE hash = ?'),
      tokenById: d.prepare('SELECT * FROM tokens WHERE id = ?'),
      tokensOf: d.prepare('SELECT * FROM tokens WHERE principal = ? ORDER BY created_at, id'),
      // The token and its descendants (tokens created from it), revoked or not: a revoked
      // parent's live children must still go.
      tokenTree: d.prepare(
        `WITH RECURSIVE tree(id) AS (SELECT id FROM tokens WHERE id = ?
           UNION SELECT t.id FROM tokens t JOIN tree ON t.parent_id = tree.id)
         SELECT * FROM tokens WHERE id IN (SELECT id FROM tree)`,
      ),
      revokeToken: d.prepare(
        'UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL',
      ),
      servicesOfToken: d.prepare('SELECT * FROM services WHERE token_id = ?'),
      keysOfToken: d.prepare('DELETE FROM client_keys WHERE token_id = ? RETURNING id'),
      certsOfToken: d.prepare('DELETE FROM client_certs WHERE token_id = ? RETURNING id'),
      insCert: d.prepare(
        'INSERT INTO client_certs (id, fingerprint, principal, token_id, created_at, expires_at) VALUES (@id, @fingerprint, @principal, @tokenId, @createdAt, @expiresAt)',
      ),
      certByFingerprint: d.prepare('SELECT * FROM client_certs WHERE fingerprint = ?'),
      certById: d.prepare('SELECT * FROM client_certs WHERE id = ?'),
      delExpiredCerts: d.prepare('DELETE FROM client_certs WHERE expires_at <= ?'),
      serviceByName: d.prepare('SELECT * FROM services WHERE owner = ? AND name = ?'),
      serviceById: d.prepare('SELECT * FROM services WHERE id = ?'),
      serviceByToken: d.prepare('SELECT * FROM services WHERE token_hash = ?'),
      serviceByPort: d.prepare('SELECT * FROM services WHERE port = ?'),
      tunnelsOffline: d.prepare(
        "UPDATE services SET status = 'offline' WHERE tunnel = 'ssh' AND status = 'ready' RETURNING *",
      ),
      servicesOf: d.prepare('SELECT * FROM services WHERE owner = ?'),
      allServices: d.prepare('SELECT * FROM services ORDER BY owner, name'),
      takenInRange: d
        .prepare(
          `SELECT (SELECT count(*) FROM services WHERE port BETWEEN @min AND @max)
                + (SELECT count(*) FROM port_cooldown WHERE port BETWEEN @min AND @max AND until > @now)`,
        )
        .pluck(),
      portTaken: d
        .prepare(
          'SELECT 1 FROM services WHERE port = @port UNION ALL SELECT 1 FROM port_cooldown WHERE port = @port AND until > @now',
        )
        .pluck(),
      dropCooldowns: d.prepare('DELETE FROM port_cooldown WHERE until <= ?'),
      insService:
        d.prepare(`INSERT INTO services (id, owner, name, mode, tunnel, host, port, status, token_hash, ttl_seconds,
          created_at, expires_at, last_seen_at, heartbeat_at, cert_fingerprint, cert_not_after, labels,
          token_id, exposure)
        VALUES (@id, @owner, @name, @mode, @tunnel, @host, @port, @status, @tokenHash, @ttlSeconds,
          @createdAt, @expiresAt, NULL, NULL, @certFingerprint, @certNotAfter, @labels,
          @tokenId, @exposure)`),
      delService: d.prepare('DELETE FROM services WHERE id = ? RETURNING port'),
      coolPort: d.prepare(
        'INSERT INTO port_cooldown (port, until) VALUES (?, ?) ON CONFLICT (port) DO UPDATE SET until = max(until, excluded.until)',
      ),
      expired: d.prepare('SELECT * FROM services WHERE expires_at <= ?'),
      stale: d.prepare(
        "UPDATE services SET status = 'offline' WHERE status != 'offline' AND heartbeat_at IS NOT NULL AND heartbeat_at < ? RETURNING *",
      ),
      insKey:
        d.prepare(`INSERT INTO client_keys (id, hash, service_id, principal, created_at, expires_at, uses_left, last_used_at, token_id)
        VALUES (@id, @hash, @serviceId, @principal, @createdAt, @expiresAt, @usesLeft, NULL, @tokenId)`),
      keyByHash: d.prepare('SELECT * FROM client_keys WHERE hash = ?'),
      keyById: d.prepare('SELECT * FROM client_keys WHERE id = ?'),
      keysOf: d.prepare(
        'SELECT * FROM client_keys WHERE service_id = ? AND expires_at > ? ORDER BY created_at, id',
      ),
      consumeKey: d.prepare(
        'UPDATE client_keys SET uses_left = uses_left - 1, last_used_at = @now WHERE id = @id AND uses_left > 0 AND expires_at > @now',
      ),
      delKey: d.prepare('DELETE FROM client_keys WHERE id = ?'),
      // A used one-time key stays until it expires: a session made from it lives as long (SES-1).
      delExpiredKeys: d.prepare('DELETE FROM client_keys WHERE expires_at <= ?'),
      touchKey: d.prepare(
        'UPDATE client_keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?',
      ),
      insSshKey: d.prepare(
        'INSERT INTO ssh_keys (fingerprint, principal, key, comment, created_at) VALUES (@fingerprint, @principal, @key, @comment, @createdAt)',
      ),
      sshKeysOf: d.prepare(
        'SELECT * FROM ssh_keys WHERE principal = ? ORDER BY created_at, fingerprint',
      ),
      sshKey: d.prepare('SELECT * FROM ssh_keys WHERE principal = ? AND fingerprint = ?'),
      delSshKey: d.prepare('DELETE FROM ssh_keys WHERE principal = ? AND fingerprint = ?'),
      insAudit:
        d.prepare(`INSERT INTO audit (at, actor, action, target, outcome, source, count, details)
        VALUES (@at, @actor, @action, @target, @outcome, @source, @count, @details)`),
    };
  }

  getMeta(key: string): string | null {
    return (this.stmts.getMeta.get(key) as string | undefined) ?? null;
  }

  setMeta(key: string, value: string): void {
    this.stmts.setMeta.run(key, value);
  }

  createPrincipal(row: PrincipalRow, token?: TokenRow): void {
    this.db
      .transaction(() => {
        try {
          this.stmts.insPrincipal.run(
            row.name,
            row.role,
            row.disabled ? 1 : 0,
            row.createdAt,
            row.uid,
            row.groups ? JSON.stringify(row.groups) : null,
            row.managed ? 1 : 0,
          );
        } catch (err) {
          if (
            isUnique(err, 'principals.name') ||
            (err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
          ) {
            throw new BrokerError('name_taken', `principal ${row.name} already exists`);
          }
          if (isUnique(err, 'principals.uid'))
            throw new BrokerError(
              'name_taken',
              `UID ${row.uid} is already bound to another principal`,
            );
          throw err;
        }
        if (token) this.insertTokenRow(token);
      })
      .immediate();
  }

  recordLogin(
    user: UnixIdentity,
    token: TokenRow,
    now: number,
    credential?: { hash: Buffer; expiresAt: number },
  ): { principal: PrincipalRow; created: boolean; roleChanged: boolean } | null {
    return this.db
      .transaction(() => {
        if (credential) {
          this.stmts.dropSeen.run(now);
          if (this.stmts.seenCredential.run(credential.hash, credential.expiresAt).changes === 0)
            return null;
        }
        const existing = this.getPrincipal(user.name);
        const other = this.stmts.principalByUid.get(user.uid) as Row | undefined;
        if (other && other.name !== user.name)
          throw new BrokerError(
            'forbidden',
            `UID ${user.uid} is bound to principal ${String(other.name)}, not ${user.name}`,
          );
        if (existing?.disabled)
          throw new BrokerError('forbidden', `principal ${user.name} is disabled`);
        if (existing && existing.uid !== null && existing.uid !== user.uid)
          throw new BrokerError(
            'forbidden',
            `principal ${user.name} belongs to UID ${existing.uid}, not ${user.uid}`,
          );
        // A principal made by hand is someone's only once an admin says whose (its UID): a Unix
        // user who happens to share its name does not inherit it, its role or its services.
        if (existing && existing.uid === null && !existing.managed)
          throw new BrokerError(
            'forbidden',
            `principal ${user.name} was created by hand and is not bound to a Unix user; an admin can bind it: broker user set ${user.name} --uid ${user.uid}`,
          );
        let created = false;
        let roleChanged = false;
        if (!existing) {
          this.stmts.insPrincipal.run(
            user.name,
            user.role,
            0,
            now,
            user.uid,
            JSON.stringify(user.groups),
            1,
          );
          created = true;
        } else {
          const role = existing.managed ? user.role : existing.role;
          roleChanged = role !== existing.role;
          this.stmts.loginUpdate.run({
            name: user.name,
            uid: user.uid,
            groups: JSON.stringify(user.groups),
            role,
          });
        }
        this.insertTokenRow(token);
        return { principal: this.getPrincipal(user.name)!, created, roleChanged };
      })
      .immediate();
  }

  credentialSeen(hash: Buffer, now: number): boolean {
    return this.stmts.isSeen.get(hash, now) !== undefined;
  }

  getPrincipal(name: string): PrincipalRow | null {
    const r = this.stmts.getPrincipal.get(name) as Row | undefined;
    return r ? toPrincipal(r) : null;
  }

  listPrincipals(): PrincipalRow[] {
    return (this.stmts.listPrincipals.all() as Row[]).map(toPrincipal);
  }

  updatePrincipal(
    name: string,
    patch: Partial<Pick<PrincipalRow, 'role' | 'disabled' | 'uid'>>,
  ): PrincipalRow | null {
    return this.db
      .transaction(() => {
        const sets: string[] = [];
        const args: unknown[] = [];
        if (patch.role !== undefined) {
          sets.push('role = ?');
          args.push(patch.role);
        }
        if (patch.disabled !== undefined) {
          sets.push('disabled = ?');
          args.push(patch.disabled ? 1 : 0);
        }
        if (patch.uid !== undefined) {
          sets.push('uid = ?');
          args.push(patch.uid);
          const other = this.stmts.principalByUid.get(patch.uid) as Row | undefined;
          if (patch.uid !== null && other && other.name !== name)
            throw new BrokerError(
              'name_taken',
              `UID ${patch.uid} is already bound to principal ${String(other.name)}`,
            );
        }
        if (sets.length)
          this.db
            .prepare(`UPDATE principals SET ${sets.join(', ')} WHERE name = ?`)
            .run(...args, name);
        return this.getPrincipal(name);
      })
      .immediate();
  }

  deletePrincipal(name: string, _now: number, cooldownUntil: number): ServiceRow[] | null {
    return this.db
      .transaction(() => {
        if (!this.stmts.getPrincipal.get(name)) return null;
        const services = (this.stmts.servicesOf.all(name) as Row[]).map(toService);
        for (const s of services) this.removeServiceRow(s.id, cooldownUntil);
        this.db.prepare('DELETE FROM client_keys WHERE principal = ?').run(name);
        this.stmts.delPrincipal.run(name);
        return services;
      })
      .immediate();
  }

  private insertTokenRow(t: TokenRow): void {
    this.stmts.insToken.run(
      t.id,
      t.hash,
      t.principal,
      t.label,
      t.createdAt,
      t.expiresAt,
      t.revokedAt,
      t.parentId,
    );
  }

  insertToken(row: TokenRow): void {
    this.db.transaction(() => this.insertTokenRow(row)).immediate();
  }

  findTokenByHash(hash: Buffer): TokenRow | null {
    const r = this.stmts.tokenByHash.get(hash) as Row | undefined;
    return r ? toToken(r) : null;
  }

  getToken(id: string): TokenRow | null {
    const r = this.stmts.tokenById.get(id) as Row | undefined;
    return r ? toToken(r) : null;
  }

  listTokens(principal: string): TokenRow[] {
    return (this.stmts.tokensOf.all(principal) as Row[]).map(toToken);
  }

  revokeToken(id: string, now: number, cooldownUntil: number): Revocation | null {
    return this.db
      .transaction(() => {
        const tree = (this.stmts.tokenTree.all(id) as Row[]).map(toToken);
        const root = tree.find((t) => t.id === id);
        if (!root || root.revokedAt !== null) return null;
        const out: Revocation = { tokens: [], services: [], keyIds: [], certIds: [] };
        for (const t of tree) {
          if (this.stmts.revokeToken.run(now, t.id).changes > 0)
            out.tokens.push({ ...t, revokedAt: now });
          for (const k of this.stmts.keysOfToken.all(t.id) as { id: string }[])
            out.keyIds.push(k.id);
          for (const c of this.stmts.certsOfToken.all(t.id) as { id: string }[])
            out.certIds.push(c.id);
          for (const r of this.stmts.servicesOfToken.all(t.id) as Row[]) {
            const svc = toService(r);
            this.removeServiceRow(svc.id, cooldownUntil);
            out.services.push(svc);
          }
        }
        return out;
      })
      .immediate();
  }

  registerService(row: NewService, policy: PortPolicy): ServiceRow {
    return this.db
      .transaction(() => {
        if (this.stmts.serviceByName.get(row.owner, row.name)) {
          throw new BrokerError(
            'name_taken',
            `service ${row.owner}/${row.name} is already registered`,
          );
        }
        this.stmts.dropCooldowns.run(policy.now);
        const port = policy.requested ?? this.pickPort(policy);
        if (policy.requested !== undefined) {
          if (port < policy.min || port > policy.max) {
            throw new BrokerError(
              'validation_failed',
              `port ${port} is outside the range ${policy.min}-${policy.max}`,
            );
          }
          if (this.stmts.portTaken.get({ port, now: policy.now })) {
            throw new BrokerError(
              'port_unavailable',
              `port ${port} is in use or cooling down; omit --port to get a free one`,
            );
          }
        }
        this.stmts.insService.run({
          ...row,
          port,
          labels: JSON.stringify(row.labels),
        });
        return toService(this.stmts.serviceById.get(row.id) as Row);
      })
      .immediate();
  }

  /**
   * Next-fit from a cursor: one count for an instant 503 when the range is full, then point
   * lookups, so the cost does not grow with the number of live services.
   */
  private pickPort(policy: PortPolicy): number {
    const size = policy.max - policy.min + 1;
    const exhausted = () =>
      new BrokerError(
        'port_range_exhausted',
        `all ${size} ports in ${policy.min}-${policy.max} are taken or cooling down; try again later or ask an admin to widen --port-range`,
      );
    if ((this.stmts.takenInRange.get(policy) as number) >= size) throw exhausted();
    if (this.portCursor < policy.min || this.portCursor > policy.max) {
      this.portCursor = policy.min + randomInt(size);
    }
    for (let i = 0; i < size; i++) {
      const port = policy.min + ((this.portCursor - policy.min + i) % size);
      if (!this.stmts.portTaken.get({ port, now: policy.now })) {
        this.portCursor = port + 1;
        return port;
      }
    }
    throw exhausted();
  }

  getService(owner: string, name: string): ServiceRow | null {
    const r = this.stmts.serviceByName.get(owner, name) as Row | undefined;
    return r ? toService(r) : null;
  }

  getServiceById(id: string): ServiceRow | null {
    const r = this.stmts.serviceById.get(id) as Row | undefined;
    return r ? toService(r) : null;
  }

  findServiceByTokenHash(hash: Buffer): ServiceRow | null {
    const r = this.stmts.serviceByToken.get(hash) as Row | undefined;
    return r ? toService(r) : null;
  }

  findServiceByPort(port: number): ServiceRow | null {
    const r = this.stmts.serviceByPort.get(port) as Row | undefined;
    return r ? toService(r) : null;
  }

  markTunnelsOffline(): ServiceRow[] {
    return this.db
      .transaction(() => (this.stmts.tunnelsOffline.all() as Row[]).map(toService))
      .immediate();
  }

  queryServices(q: ServiceQuery): ServiceRow[] {
    const where: string[] = [];
    const args: Record<string, unknown> = { limit: q.limit };
    if (q.owner !== undefined) {
      where.push('owner = @owner');
      args.owner = q.owner;
    }
    if (q.glob !== undefined) {
      where.push(q.globFull ? "(owner || '/' || name) GLOB @glob" : 'name GLOB @glob');
      args.glob = q.glob;
    }
    if (q.after) {
      where.push('(owner, name) > (@afterOwner, @afterName)');
      args.afterOwner = q.after.owner;
      args.afterName = q.after.name;
    }
    const sql = `SELECT * FROM services ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY owner, name LIMIT @limit`;
    return (this.db.prepare(sql).all(args) as Row[]).map(toService);
  }

  updateService(
    id: string,
    patch: Partial<
      Pick<
        ServiceRow,
        'status' | 'expiresAt' | 'lastSeenAt' | 'heartbeatAt' | 'certFingerprint' | 'certNotAfter'
      >
    >,
  ): ServiceRow | null {
    const columns: Record<string, string> = {
      status: 'status',
      expiresAt: 'expires_at',
      lastSeenAt: 'last_seen_at',
      heartbeatAt: 'heartbeat_at',
      certFingerprint: 'cert_fingerprint',
      certNotAfter: 'cert_not_after',
    };
    const keys = Object.keys(patch).filter(
      (k) => k in columns && patch[k as keyof typeof patch] !== undefined,
    );
    return this.db
      .transaction(() => {
        if (keys.length) {
          const sql = `UPDATE services SET ${keys.map((k) => `${columns[k]} = @${k}`).join(', ')} WHERE id = @id`;
          this.db.prepare(sql).run({ ...patch, id });
        }
        const r = this.stmts.serviceById.get(id) as Row | undefined;
        return r ? toService(r) : null;
      })
      .immediate();
  }

  reassignPort(id: string, policy: PortPolicy, cooldownUntil: number): ServiceRow | null {
    return this.db
      .transaction(() => {
        const old = this.stmts.serviceById.get(id) as Row | undefined;
        if (!old) return null;
        this.stmts.dropCooldowns.run(policy.now);
        // Cool the old port first so the pick cannot land on it again.
        this.stmts.coolPort.run(old.port, cooldownUntil);
        const port = this.pickPort(policy);
        this.db.prepare('UPDATE services SET port = ? WHERE id = ?').run(port, id);
        return toService(this.stmts.serviceById.get(id) as Row);
      })
      .immediate();
  }

  handOverToken(from: string, to: string): void {
    this.db
      .transaction(() => {
        this.db.prepare('UPDATE client_certs SET token_id = ? WHERE token_id = ?').run(to, from);
        this.db.prepare('UPDATE tokens SET parent_id = ? WHERE parent_id = ?').run(to, from);
        this.db.prepare('UPDATE services SET token_id = ? WHERE token_id = ?').run(to, from);
        this.db.prepare('UPDATE client_keys SET token_id = ? WHERE token_id = ?').run(to, from);
      })
      .immediate();
  }

  insertClientCert(row: ClientCertRow): void {
    this.db.transaction(() => this.stmts.insCert.run(row)).immediate();
  }

  findClientCert(fingerprint: string): ClientCertRow | null {
    const r = this.stmts.certByFingerprint.get(fingerprint) as Row | undefined;
    return r ? toCert(r) : null;
  }

  getClientCert(id: string): ClientCertRow | null {
    const r = this.stmts.certById.get(id) as Row | undefined;
    return r ? toCert(r) : null;
  }

  deleteExpiredClientCerts(now: number): number {
    return this.db.transaction(() => this.stmts.delExpiredCerts.run(now).changes).immediate();
  }

  deleteKeysOfService(serviceId: string): string[] {
    return this.db
      .transaction(() =>
        (
          this.db
            .prepare('DELETE FROM client_keys WHERE service_id = ? RETURNING id')
            .all(serviceId) as { id: string }[]
        ).map((r) => r.id),
      )
      .immediate();
  }

  setServiceUid(id: string, uid: number | null): void {
    this.db.prepare('UPDATE services SET uid = ? WHERE id = ?').run(uid, id);
  }

  private removeServiceRow(id: string, cooldownUntil: number): boolean {
    const gone = this.stmts.delService.get(id) as { port: number } | undefined;
    if (gone) this.stmts.coolPort.run(gone.port, cooldownUntil);
    return gone !== undefined;
  }

  removeService(id: string, cooldownUntil: number): boolean {
    return this.db.transaction(() => this.removeServiceRow(id, cooldownUntil)).immediate();
  }

  reapExpired(now: number, cooldownSeconds: number): ServiceRow[] {
    return this.db
      .transaction(() => {
        const rows = (this.stmts.expired.all(now) as Row[]).map(toService);
        for (const s of rows) this.removeServiceRow(s.id, now + cooldownSeconds * 1000);
        return rows;
      })
      .immediate();
  }

  markStale(heartbeatBefore: number): ServiceRow[] {
    return this.db
      .transaction(() => (this.stmts.stale.all(heartbeatBefore) as Row[]).map(toService))
      .immediate();
  }

  listServices(): ServiceRow[] {
    return (this.stmts.allServices.all() as Row[]).map(toService);
  }

  insertKey(row: KeyRow): void {
    this.db.transaction(() => this.stmts.insKey.run(row)).immediate();
  }

  findKeyByHash(hash: Buffer): KeyRow | null {
    const r = this.stmts.keyByHash.get(hash) as Row | undefined;
    return r ? toKey(r) : null;
  }

  getKey(id: string): KeyRow | null {
    const r = this.stmts.keyById.get(id) as Row | undefined;
    return r ? toKey(r) : null;
  }

  listKeys(serviceId: string, now: number): KeyRow[] {
    return (this.stmts.keysOf.all(serviceId, now) as Row[]).map(toKey);
  }

  consumeKey(id: string, now: number): boolean {
    return this.db
      .transaction(() => this.stmts.consumeKey.run({ id, now }).changes > 0)
      .immediate();
  }

  deleteKey(id: string): boolean {
    return this.db.transaction(() => this.stmts.delKey.run(id).changes > 0).immediate();
  }

  deleteExpiredKeys(now: number): number {
    return this.db.transaction(() => this.stmts.delExpiredKeys.run(now).changes).immediate();
  }

  touchKeys(uses: Map<string, number>): void {
    if (uses.size === 0) return;
    this.relaxed(() => {
      for (const [id, at] of uses) this.stmts.touchKey.run(at, id);
    });
  }

  /**
   * Bookkeeping (audit rows, key last-use times) commits without waiting for the disk. Both are
   * buffered in memory for a few hundred ms before they get here, so a power cut can already
   * lose that much; an fsync on every flush bought nothing but a 1–15 ms stall of the event loop
   * (and every verify waiting behind it). In WAL mode with synchronous=NORMAL the rows are safe
   * against a crash of the process and become durable with the next FULL commit or checkpoint;
   * registrations, keys and tokens keep synchronous=FULL.
   */
  private relaxed(fn: () => void): void {
    if (this.path === ':memory:') {
      this.db.transaction(fn).immediate();
      return;
    }
    this.db.pragma('synchronous = NORMAL');
    try {
      this.db.transaction(fn).immediate();
    } finally {
      this.db.pragma('synchronous = FULL');
    }
  }

  addSshKey(row: SshKeyRow): void {
    this.db
      .transaction(() => {
        try {
          this.stmts.insSshKey.run(row);
        } catch (err) {
          if ((err as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
            throw new BrokerError(
              'ssh_key_exists',
              `the key ${row.fingerprint} is already registered`,
            );
          }
          throw err;
        }
      })
      .immediate();
  }

  listSshKeys(principal: string): SshKeyRow[] {
    return (this.stmts.sshKeysOf.all(principal) as Row[]).map(toSshKey);
  }

  findSshKey(principal: string, fingerprint: string): SshKeyRow | null {
    const r = this.stmts.sshKey.get(principal, fingerprint) as Row | undefined;
    return r ? toSshKey(r) : null;
  }

  deleteSshKey(principal: string, fingerprint: string): boolean {
    return this.db
      .transaction(() => this.stmts.delSshKey.run(principal, fingerprint).changes > 0)
      .immediate();
  }

  appendAudit(rows: AuditRow[]): void {
    if (rows.length === 0) return;
    this.relaxed(() => {
      for (const r of rows)
        this.stmts.insAudit.run({ ...r, details: r.details ? JSON.stringify(r.details) : null });
    });
  }

  listAudit(q: AuditQuery): (AuditRow & { id: number })[] {
    const where: string[] = [];
    const args: Record<string, unknown> = { limit: q.limit };
    if (q.since !== undefined) {
      where.push('at >= @since');
      args.since = q.since;
    }
    if (q.principal !== undefined) {
      where.push("(actor = @principal OR target = @principal OR target LIKE @prefix ESCAPE '\\')");
      args.principal = q.principal;
      args.prefix = q.principal.replace(/[\\%_]/g, (c) => '\\' + c) + '/%';
    }
    const sql = `SELECT * FROM audit ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY id DESC LIMIT @limit`;
    return (this.db.prepare(sql).all(args) as Row[]).map((r) => ({
      id: r.id as number,
      at: r.at as number,
      actor: (r.actor as string | null) ?? null,
      action: r.action as string,
      target: (r.target as string | null) ?? null,
      outcome: r.outcome as AuditRow['outcome'],
      source: (r.source as string | null) ?? null,
      count: r.count as number,
      details: r.details ? (JSON.parse(r.details as string) as Record<string, unknown>) : null,
    }));
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

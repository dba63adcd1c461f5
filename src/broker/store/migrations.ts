/** Schema migrations, applied in order inside one transaction each; `user_version` records the last. */
export const MIGRATIONS: readonly string[] = [
  /* 1: the core registry */ `
  CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;

  CREATE TABLE principals (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at INTEGER NOT NULL
  ) STRICT;

  CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    label TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
  ) STRICT;
  CREATE INDEX tokens_principal ON tokens(principal);

  -- Live services only: a removed service's row is deleted and its port put in port_cooldown,
  -- so UNIQUE(port) is exactly "unique among live services" (PORT-1).
  CREATE TABLE services (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES principals(name),
    name TEXT NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('tcp', 'https')),
    tunnel TEXT NOT NULL CHECK (tunnel IN ('ssh', 'none')),
    host TEXT NOT NULL,
    port INTEGER NOT NULL UNIQUE CHECK (port BETWEEN 1 AND 65535),
    status TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'offline')),
    token_hash BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    ttl_seconds INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    heartbeat_at INTEGER,
    cert_fingerprint TEXT,
    cert_not_after INTEGER,
    labels TEXT NOT NULL DEFAULT '{}',
    UNIQUE (owner, name)
  ) STRICT;
  CREATE INDEX services_expires ON services(expires_at);

  CREATE TABLE port_cooldown (port INTEGER PRIMARY KEY, until INTEGER NOT NULL) STRICT;

  CREATE TABLE client_keys (
    id TEXT PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    service_id TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    principal TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left INTEGER CHECK (uses_left IS NULL OR uses_left >= 0),
    last_used_at INTEGER
  ) STRICT;
  CREATE INDEX client_keys_service ON client_keys(service_id);
  CREATE INDEX client_keys_expires ON client_keys(expires_at);

  -- Append-only: no UPDATE or DELETE statement touches it.
  CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    actor TEXT,
    action TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
    source TEXT,
    count INTEGER NOT NULL DEFAULT 1,
    details TEXT
  ) STRICT;
  CREATE INDEX audit_at ON audit(at);
  CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
  CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
  `,
  /* 2: SSH public keys registered to principals (gateway publickey auth) */ `
  CREATE TABLE ssh_keys (
    fingerprint TEXT PRIMARY KEY,
    principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    comment TEXT,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX ssh_keys_principal ON ssh_keys(principal);
  `,
  /* 3: who minted what, and how an app is exposed (issue 11: no way around the key) */ `
  -- The user token a service was registered with, a key loaded with, a token created with (by
  -- its own principal): revoking a token takes all of them with it, transitively (a credential
  -- minted with another never outlives it, SES-2).
  ALTER TABLE tokens ADD COLUMN parent_id TEXT;
  CREATE INDEX tokens_parent ON tokens(parent_id) WHERE parent_id IS NOT NULL;
  ALTER TABLE services ADD COLUMN token_id TEXT;
  ALTER TABLE client_keys ADD COLUMN token_id TEXT;
  CREATE INDEX services_token ON services(token_id) WHERE token_id IS NOT NULL;
  CREATE INDEX client_keys_token ON client_keys(token_id) WHERE token_id IS NOT NULL;
  CREATE INDEX client_keys_principal ON client_keys(principal);
  -- The Unix user whose listener a tunnel "none" service on the broker host was confirmed on
  -- (LOC-5), and how broker run reported its app's exposure (LOC-3).
  ALTER TABLE services ADD COLUMN uid INTEGER;
  ALTER TABLE services ADD COLUMN exposure TEXT
    CHECK (exposure IS NULL OR exposure IN ('unix-socket', 'private-network', 'app-credential', 'open'));
  -- Client certificates the CA issued to principals (mTLS): a gate admits one only while its row
  -- is here and its principal enabled; revoking the token that minted it deletes it (SES-2).
  CREATE TABLE client_certs (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    principal TEXT NOT NULL REFERENCES principals(name) ON DELETE CASCADE,
    token_id TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX client_certs_token ON client_certs(token_id) WHERE token_id IS NOT NULL;
  CREATE INDEX client_certs_expires ON client_certs(expires_at);
  `,
  /* 4: identity the cluster already has (issue 12): Unix users, their groups, MUNGE replays */ `
  -- A principal may be a Unix user: its UID (one principal per UID), its groups as the host's NSS
  -- last reported them (a JSON array of names), and whether site policy manages it (created by
  -- a login; its role follows the admin groups at each login).
  ALTER TABLE principals ADD COLUMN uid INTEGER;
  ALTER TABLE principals ADD COLUMN groups TEXT;
  ALTER TABLE principals ADD COLUMN managed INTEGER NOT NULL DEFAULT 0 CHECK (managed IN (0, 1));
  CREATE UNIQUE INDEX principals_uid ON principals(uid) WHERE uid IS NOT NULL;
  -- Every MUNGE credential the broker accepted, by hash, until its TTL ends: a credential is
  -- used once, whichever broker (or munged, after a restart) sees it again (ID-1).
  CREATE TABLE munge_seen (hash BLOB PRIMARY KEY CHECK (length(hash) = 32), expires_at INTEGER NOT NULL) STRICT;
  CREATE INDEX munge_seen_expires ON munge_seen(expires_at);
  `,
];

-- postern's initial schema (SQLite). Never edit this file once released: add a new one.
--
-- Timestamps are unix seconds (INTEGER). There are no boolean columns: a state is a
-- nullable timestamp (disabled_at, revoked_at), which also records when it changed.
-- Foreign keys are declared for integrity, but nothing relies on ON DELETE: the store
-- deletes children explicitly, in the same transaction as their parent.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    login         TEXT    NOT NULL,   -- lowercased by the store
    upstream_user TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER,
    CONSTRAINT users_login_unique UNIQUE (login)
);

CREATE TABLE user_addresses (
    user_id INTEGER NOT NULL REFERENCES users (id),
    address TEXT    NOT NULL,         -- lowercased by the store
    CONSTRAINT user_addresses_unique UNIQUE (user_id, address)
);

CREATE TABLE app_passwords (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users (id),
    name         TEXT    NOT NULL,
    scopes       TEXT    NOT NULL,    -- comma-separated: "imap,smtp"
    tag          TEXT    NOT NULL,    -- finds the one candidate for a login attempt
    hash         TEXT    NOT NULL,    -- argon2id PHC string
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    last_used_ip TEXT,
    expires_at   INTEGER,
    revoked_at   INTEGER
);

-- At most one live app password per (user, tag), so a login attempt has one candidate.
CREATE UNIQUE INDEX app_passwords_live_tag ON app_passwords (user_id, tag)
    WHERE revoked_at IS NULL;
-- Listing a user's app passwords and finding revoked ones by tag.
CREATE INDEX app_passwords_user_tag ON app_passwords (user_id, tag);

-- Revocations, disables and removals, polled by every gateway instance to drop cached
-- verifications and close sessions. No foreign key: a change outlives a removed user.
CREATE TABLE changes (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL,
    app_password_id INTEGER,
    kind            TEXT    NOT NULL,
    at              INTEGER NOT NULL
);

-- The audit trail. Keyed by login (not user id) so it survives removal and records
-- attempts against unknown logins.
CREATE TABLE audit_events (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    at              INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    login           TEXT    NOT NULL,
    app_password_id INTEGER,
    protocol        TEXT,
    client_ip       TEXT,
    client_id       TEXT,
    result          TEXT,
    detail          TEXT
);

CREATE INDEX audit_events_login ON audit_events (login, id);

-- Values the store generates itself on first use (never secrets in a migration).
CREATE TABLE settings (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);

-- The self-service portal: signed-in browser sessions and second factors (sqlite).
-- Never edit this file once released: add a new one.

-- A browser signed in to the portal. The cookie holds a random token; the store holds
-- only its SHA-256, so a copy of the database signs nobody in.
CREATE TABLE portal_sessions (
    token_hash  TEXT    NOT NULL PRIMARY KEY,
    user_id     INTEGER    NOT NULL REFERENCES users (id),
    csrf        TEXT    NOT NULL,   -- every form of this session carries it
    created_at  INTEGER    NOT NULL,
    password_at INTEGER    NOT NULL,   -- when the primary password was last checked
    last_seen_at INTEGER   NOT NULL,   -- idle sessions end
    mfa_at      INTEGER,               -- when the second factor was last passed; NULL: not yet
    expires_at  INTEGER    NOT NULL
);

CREATE INDEX portal_sessions_user ON portal_sessions (user_id);

-- A user's TOTP (RFC 6238) secret. Unconfirmed until the first code is entered.
CREATE TABLE totp_secrets (
    user_id      INTEGER    NOT NULL PRIMARY KEY REFERENCES users (id),
    secret       TEXT    NOT NULL,   -- base32
    created_at   INTEGER    NOT NULL,
    confirmed_at INTEGER,
    last_step    INTEGER    NOT NULL DEFAULT 0   -- a code's time step is accepted once
);

-- Single-use recovery codes, stored as keyed digests (the store's lookup key).
CREATE TABLE recovery_codes (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER    NOT NULL REFERENCES users (id),
    digest  TEXT    NOT NULL,
    used_at INTEGER,
    CONSTRAINT recovery_codes_unique UNIQUE (user_id, digest)
);

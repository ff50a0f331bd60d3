-- Passkeys and security keys (WebAuthn) as second factors (sqlite).
-- Never edit this file once released: add a new one.

-- A user's registered passkey: the public key and signature counter, as webauthn-rs keeps
-- them (JSON). Nothing here signs anybody in without the authenticator.
CREATE TABLE passkeys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id       INTEGER    NOT NULL REFERENCES users (id),
    name          TEXT    NOT NULL,
    credential_id TEXT    NOT NULL,   -- base64url; one credential belongs to one user
    passkey       TEXT    NOT NULL,
    created_at    INTEGER    NOT NULL,
    last_used_at  INTEGER,
    CONSTRAINT passkeys_credential_unique UNIQUE (credential_id)
);

CREATE INDEX passkeys_user ON passkeys (user_id);

-- A passkey registration or sign-in under way in a session: the challenge it must answer
-- (webauthn-rs state, JSON), taken once.
ALTER TABLE portal_sessions ADD COLUMN ceremony TEXT;

-- Single-use links that hand a phone its configuration profile (postgres).
-- Never edit this file once released: add a new one.

-- A link made when an app password is created: the phone that opens it (or scans its QR
-- code) gets an Apple configuration profile carrying the new password, once, within
-- minutes. The store keeps the token's SHA-256 and the password sealed with a key derived
-- from the token, so a copy of the database opens no link and reads no password.
CREATE TABLE device_links (
    token_hash      TEXT    NOT NULL PRIMARY KEY,
    user_id         BIGINT    NOT NULL REFERENCES users (id),
    app_password_id BIGINT    NOT NULL REFERENCES app_passwords (id),
    sealed          TEXT    NOT NULL,   -- base64 of the sealed password
    expires_at      BIGINT    NOT NULL
);

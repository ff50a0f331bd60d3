-- OpenID Connect sign-ins under way (sqlite).
-- Never edit this file once released: add a new one.

-- A browser sent to the provider: the state it must come back with (its SHA-256), the
-- browser it belongs to (a digest of its CSRF token), and what the callback needs (the
-- nonce the ID token must carry, the PKCE verifier). Taken once; gone after 10 minutes.
CREATE TABLE oidc_logins (
    state_hash   TEXT    NOT NULL PRIMARY KEY,
    browser_hash TEXT    NOT NULL,
    nonce        TEXT    NOT NULL,
    verifier     TEXT    NOT NULL,
    created_at   INTEGER    NOT NULL
);

-- Users who came from the organisation's directory (sqlite).
-- Never edit this file once released: add a new one.

-- A user created at their first sign-in through the directory (or pushed by it): the sync
-- follows only these. disabled_at is set when the directory (not an admin) disabled the
-- user, so that the sync enables again only those it disabled.
CREATE TABLE directory_users (
    user_id     INTEGER    NOT NULL PRIMARY KEY REFERENCES users (id),
    source      TEXT    NOT NULL,   -- ldap | oidc | scim
    disabled_at INTEGER
);

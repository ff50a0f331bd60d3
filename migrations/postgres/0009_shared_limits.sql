-- Login penalties and sending quotas shared by every instance (postgres).
-- Never edit this file once released: add a new one.

-- One row per penalised key: 'a:' and the client's address group, or 'l:' and the login.
-- `fingerprints` holds 16-bit fingerprints of the last wrong passwords (a keyed digest cut
-- short), enough to count a retyped password once and too short to test a guess against.
-- A row whose last failure is older than 15 minutes counts as forgotten.
CREATE TABLE penalties (
    key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    fingerprints INTEGER[] NOT NULL,
    failed_at TIMESTAMPTZ NOT NULL
);

-- Messages the upstream accepted, per app password, for the sliding hour of the quotas.
CREATE TABLE sent_messages (
    app_password_id BIGINT NOT NULL,
    sent_at TIMESTAMPTZ NOT NULL,
    recipients INTEGER NOT NULL
);
CREATE INDEX sent_messages_by_app_password ON sent_messages (app_password_id, sent_at);

-- Certificates obtained by ACME, kept in the store so every instance serves them, and the
-- HTTP-01 challenges of an order under way, so every instance answers them.
-- Never edit this file once released: add a new one.

-- One row per configured set of names (`[tls.acme] domains`, joined by commas). The key
-- is the certificate's own, as secret as any key file.
CREATE TABLE certificates (
    name TEXT PRIMARY KEY,
    chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL
);

CREATE TABLE acme_challenges (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

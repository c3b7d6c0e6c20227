-- 0002: principals and tokens (authentication), as baton-sqlite's 0002.
-- Applied inside one transaction by src/schema.rs, which then records
-- version 2 in schema_migrations.

-- Who may call Baton. `name` is unique for ever: a revoked principal keeps its
-- row (and its name), so a new principal never inherits an old one's history.
-- `stages` and `routes` are JSON arrays (stage names; {from, to} objects).
CREATE TABLE principals (
    name       text   NOT NULL PRIMARY KEY,
    role       text   NOT NULL CHECK (role IN ('agent', 'submitter', 'operator', 'admin')),
    stages     text   NOT NULL,
    routes     text   NOT NULL,
    created_at bigint NOT NULL,
    revoked_at bigint
);

-- API tokens, looked up by their public id. Only the SHA-256 of the secret is
-- kept: the token itself is shown once, when it is created, and never stored.
CREATE TABLE tokens (
    id          text   NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    principal   text   NOT NULL REFERENCES principals (name),
    secret_hash bytea  NOT NULL CHECK (length(secret_hash) = 32),
    created_at  bigint NOT NULL,
    revoked_at  bigint
);

-- Revoking a principal revokes its tokens.
CREATE INDEX tokens_principal ON tokens (principal);

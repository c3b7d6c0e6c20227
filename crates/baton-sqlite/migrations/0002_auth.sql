-- 0002: principals and tokens (authentication). Applied inside one transaction
-- by src/schema.rs, which then sets PRAGMA user_version = 2.

-- Who may call Baton. `name` is unique for ever: a revoked principal keeps its
-- row (and its name), so a new principal never inherits an old one's history.
-- `stages` and `routes` are JSON arrays (stage names; {from, to} objects).
CREATE TABLE principals (
    name       TEXT    NOT NULL PRIMARY KEY,
    role       TEXT    NOT NULL CHECK (role IN ('agent', 'submitter', 'operator', 'admin')),
    stages     TEXT    NOT NULL,
    routes     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- API tokens, looked up by their public id. Only the SHA-256 of the secret is
-- kept: the token itself is shown once, when it is created, and never stored.
CREATE TABLE tokens (
    id          TEXT    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    principal   TEXT    NOT NULL REFERENCES principals (name),
    secret_hash BLOB    NOT NULL CHECK (length(secret_hash) = 32),
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- Revoking a principal revokes its tokens.
CREATE INDEX tokens_principal ON tokens (principal);

-- 0003: records of keyed requests (the `Idempotency-Key` header). Applied
-- inside one transaction by src/schema.rs, which then sets PRAGMA
-- user_version = 3.

-- One row per (principal, key): the request's fingerprint and its first
-- outcome as JSON (`baton_core::OpOutcome`), written in the same transaction
-- as the operation itself, so an acknowledged effect always has its record.
-- `at` is when it committed; the engine ignores rows older than
-- `request_key_ttl_ms` and the sweeper purges them, oldest first.
CREATE TABLE requests (
    id          INTEGER PRIMARY KEY,
    principal   TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL CHECK (length(fingerprint) = 32),
    at          INTEGER NOT NULL,
    outcome     TEXT    NOT NULL,
    UNIQUE (principal, key)
);

-- The purge reads the oldest rows first.
CREATE INDEX requests_at ON requests (at);

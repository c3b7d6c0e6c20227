-- 0003: records of keyed requests (the `Idempotency-Key` header), as
-- baton-sqlite's 0003. Applied inside one transaction by src/schema.rs, which
-- then records version 3 in schema_migrations.

-- One row per (principal, key): the request's fingerprint and its first
-- outcome as JSON (`baton_core::OpOutcome`), written in the same transaction
-- as the operation itself, so an acknowledged effect always has its record.
-- `at` is when it committed; the engine ignores rows older than
-- `request_key_ttl_ms` and the sweeper purges them, oldest first.
CREATE TABLE requests (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    principal   text   NOT NULL,
    key         text   NOT NULL,
    fingerprint bytea  NOT NULL CHECK (length(fingerprint) = 32),
    at          bigint NOT NULL,
    outcome     text   NOT NULL,
    UNIQUE (principal, key)
);

-- The purge reads the oldest rows first.
CREATE INDEX requests_at ON requests (at);

-- 0011: the archive, as baton-sqlite's 0011, but the chunks live in this
-- database (`archive_chunks`, gzip JSON lines as bytea), written in the
-- same transaction that deletes the archived rows and indexes them: every
-- replica reads the archive without a shared filesystem, and there is no
-- moment when a chunk exists without its index or the other way round.
CREATE TABLE archive_chunks (
    name text   NOT NULL PRIMARY KEY,
    hour bigint NOT NULL,
    body bytea  NOT NULL
);

CREATE TABLE archived (
    id              uuid   NOT NULL PRIMARY KEY,
    namespace       text   NOT NULL,
    idempotency_key text,
    chunk           text   NOT NULL REFERENCES archive_chunks (name),
    finished_at     bigint NOT NULL
);

-- An archived task's idempotency key stays taken.
CREATE UNIQUE INDEX archived_idempotency ON archived (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Which tasks a chunk holds (audits).
CREATE INDEX archived_chunk ON archived (chunk);

-- Finished tasks by when they finished: what an archive pass reads first.
CREATE INDEX tasks_finished ON tasks ((((body::jsonb) -> 'state' ->> 'at')::bigint))
    WHERE state IN ('done', 'cancelled');

-- What leaves with a task, found by task (or notice) instead of by a scan.
CREATE INDEX handoff_tasks_task ON handoff_tasks (task);
CREATE INDEX alerts_task ON alerts (task);
CREATE INDEX deliveries_notice ON deliveries (notice);

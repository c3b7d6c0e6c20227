-- 0010: the archive (schema version 10). Finished tasks past their
-- retention move to compressed chunk files in a directory beside the
-- database (`<file>.archive/`, written and fsynced before the rows go);
-- this table indexes them, inserted in the transaction that deletes the
-- rows, so a chunk without index rows (a crash between the two) is an
-- orphan the next pass removes. See src/archive.rs.
CREATE TABLE archived (
    id              BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    namespace       TEXT    NOT NULL,
    idempotency_key TEXT,
    chunk           TEXT    NOT NULL,
    finished_at     INTEGER NOT NULL
);

-- An archived task's idempotency key stays taken.
CREATE UNIQUE INDEX archived_idempotency ON archived (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Which tasks a chunk holds (audits; orphan clean-up).
CREATE INDEX archived_chunk ON archived (chunk);

-- Finished tasks by when they finished: what an archive pass reads first.
CREATE INDEX tasks_finished ON tasks (json_extract(body, '$.state.at'))
    WHERE state IN ('done', 'cancelled');

-- What leaves with a task, found by task (or notice) instead of by a scan.
CREATE INDEX handoffs_task ON handoffs (task);
CREATE INDEX alerts_task ON alerts (task);
CREATE INDEX deliveries_notice ON deliveries (notice);

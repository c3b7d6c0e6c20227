-- 0011: the archive (schema version 11). Finished tasks past their
-- retention move to compressed chunk files in a directory beside the
-- database (`<file>.archive/`, written and fsynced before the rows go);
-- these tables index them, written in the transaction that deletes the
-- rows, so a chunk no row here names (a crash between the two) is an
-- orphan the next pass removes. See src/archive.rs.
--
-- The index stays in the database for ever, one row per archived task, so
-- it is kept small: about 40 bytes a task (a chunk number, not its name; the
-- namespace and key only for the tasks that have a key, in their own table).

-- Every chunk: its file's name, its hour of finish and how many tasks it holds.
CREATE TABLE archive_chunks (
    id    INTEGER PRIMARY KEY,
    name  TEXT    NOT NULL UNIQUE,
    hour  INTEGER NOT NULL,
    tasks INTEGER NOT NULL CHECK (tasks >= 1)
);

-- Every archived task: its chunk and when it finished.
CREATE TABLE archived (
    id          BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    chunk       INTEGER NOT NULL REFERENCES archive_chunks (id),
    finished_at INTEGER NOT NULL
) WITHOUT ROWID;

-- An archived task's idempotency key stays taken.
CREATE TABLE archived_keys (
    namespace       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    id              BLOB NOT NULL REFERENCES archived (id),
    PRIMARY KEY (namespace, idempotency_key)
) WITHOUT ROWID;

-- Finished tasks by when they finished: what an archive pass reads first.
CREATE INDEX tasks_finished ON tasks (json_extract(body, '$.state.at'))
    WHERE state IN ('done', 'cancelled');

-- What leaves with a task, found by task (or notice) instead of by a scan.
CREATE INDEX handoff_tasks_task ON handoff_tasks (task);
CREATE INDEX alerts_task ON alerts (task);
CREATE INDEX deliveries_notice ON deliveries (notice);

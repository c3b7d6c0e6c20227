-- 0001: the initial schema. Applied inside one transaction by src/schema.rs,
-- which then sets PRAGMA user_version = 1. Never edit a released migration:
-- add the next number instead (the PostgreSQL store keeps matching numbers).

-- Marks the file as Baton's ('BATN'), so open refuses other applications' databases.
PRAGMA application_id = 1111577678;

-- One row per task. `body` (the task as JSON) is the row's truth; every other
-- column is extracted from it only so an index can find the row. `revision`
-- guards every save (UPDATE ... WHERE id = ? AND revision = ?); `head` is the
-- hash of the task's newest event, the link the next event chains to.
CREATE TABLE tasks (
    id              BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    namespace       TEXT    NOT NULL,
    idempotency_key TEXT,
    stage           TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    priority        INTEGER NOT NULL,
    deadline_rank   INTEGER NOT NULL,
    due_at          INTEGER,
    holder          TEXT,
    ready           INTEGER NOT NULL CHECK (ready IN (0, 1)),
    parent          BLOB    REFERENCES tasks (id),
    revision        INTEGER NOT NULL CHECK (revision >= 1),
    head            BLOB    NOT NULL CHECK (length(head) = 32),
    body            TEXT    NOT NULL
);

-- A repeated submit finds its task by key; the key is unique per namespace.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The ready set, in claim order: a claim reads the first rows of one stage,
-- O(log n) however many tasks wait elsewhere. Only ready rows are indexed, so
-- held, blocked, backing-off and finished tasks cost the claim path nothing.
CREATE INDEX tasks_ready ON tasks (stage, priority DESC, deadline_rank, id)
    WHERE ready = 1;

-- The timers: every live task has a due_at (the custody invariant), finished
-- tasks have none, so this index holds exactly the live tasks.
CREATE INDEX tasks_due ON tasks (due_at) WHERE due_at IS NOT NULL;

-- Leases per agent, for leases_per_agent_max.
CREATE INDEX tasks_holder ON tasks (holder) WHERE holder IS NOT NULL;

-- Children of a task (lineage, listing by parent).
CREATE INDEX tasks_parent ON tasks (parent, id) WHERE parent IS NOT NULL;

-- Listing by stage or by state, in id (age) order, page by page.
CREATE INDEX tasks_stage ON tasks (stage, id);
CREATE INDEX tasks_state ON tasks (state, id);

-- The payload, stored once as the submitter gave it; agents pass task ids.
CREATE TABLE payloads (
    task BLOB NOT NULL PRIMARY KEY REFERENCES tasks (id),
    body TEXT NOT NULL
);

-- The append-only, hash-chained event log. `body` is the event as JSON,
-- hashes included; version equals the task's revision after the change.
CREATE TABLE events (
    task    BLOB    NOT NULL REFERENCES tasks (id),
    version INTEGER NOT NULL CHECK (version >= 1),
    body    TEXT    NOT NULL,
    PRIMARY KEY (task, version)
);

-- Handoffs and their outcomes, by id, so a sender can ask how its handoff went.
CREATE TABLE handoffs (
    id   BLOB NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    task BLOB NOT NULL REFERENCES tasks (id),
    body TEXT NOT NULL
);

-- Alerts raised by escalations, in the order they were raised.
CREATE TABLE alerts (
    id   INTEGER PRIMARY KEY,
    task BLOB    NOT NULL REFERENCES tasks (id),
    at   INTEGER NOT NULL,
    body TEXT    NOT NULL
);
CREATE INDEX alerts_at ON alerts (at);

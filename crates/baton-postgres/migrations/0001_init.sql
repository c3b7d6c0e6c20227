-- 0001: the initial schema (matches baton-sqlite's 0001). Applied inside one
-- transaction by src/schema.rs under the migration advisory lock, which then
-- records version 1 in schema_migrations. Never edit a released migration:
-- add the next number instead (the SQLite store keeps matching numbers).

-- One row per task. `body` (the task as JSON text) is the row's truth; every
-- other column is extracted from it only so an index can find the row.
-- `revision` guards every save (UPDATE ... WHERE id = $1 AND revision = $2);
-- `head` is the hash of the task's newest event, the link the next event
-- chains to. Times are milliseconds since the Unix epoch, as in the engine.
CREATE TABLE tasks (
    id              uuid    NOT NULL PRIMARY KEY,
    namespace       text    NOT NULL,
    idempotency_key text,
    stage           text    NOT NULL,
    state           text    NOT NULL,
    priority        integer NOT NULL,
    deadline_rank   bigint  NOT NULL,
    due_at          bigint,
    holder          text,
    ready           boolean NOT NULL,
    parent          uuid    REFERENCES tasks (id),
    revision        bigint  NOT NULL CHECK (revision >= 1),
    head            bytea   NOT NULL CHECK (length(head) = 32),
    body            text    NOT NULL
);

-- A repeated submit finds its task by key; the key is unique per namespace.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (namespace, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The ready set, in claim order: a claim reads the first rows of one stage
-- (FOR UPDATE SKIP LOCKED), O(log n) however many tasks wait elsewhere. Only
-- ready rows are indexed, so held, blocked, backing-off and finished tasks
-- cost the claim path nothing.
CREATE INDEX tasks_ready ON tasks (stage, priority DESC, deadline_rank, id)
    WHERE ready;

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
    task uuid NOT NULL PRIMARY KEY REFERENCES tasks (id),
    body text NOT NULL
);

-- The append-only, hash-chained event log. `body` is the event as JSON,
-- hashes included; version equals the task's revision after the change.
CREATE TABLE events (
    task    uuid   NOT NULL REFERENCES tasks (id),
    version bigint NOT NULL CHECK (version >= 1),
    body    text   NOT NULL,
    PRIMARY KEY (task, version)
);

-- Handoffs and their outcomes, by id, so a sender can ask how its handoff went.
CREATE TABLE handoffs (
    id   uuid NOT NULL PRIMARY KEY,
    task uuid NOT NULL REFERENCES tasks (id),
    body text NOT NULL
);

-- Alerts raised by escalations, in the order they were raised.
CREATE TABLE alerts (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task uuid   NOT NULL REFERENCES tasks (id),
    at   bigint NOT NULL,
    body text   NOT NULL
);
CREATE INDEX alerts_at ON alerts (at);

-- Singleton duties shared by replicas (PostgreSQL only; SQLite has one
-- process). A replica holds a duty while `expires_at` (database clock, ms)
-- is in the future and renews it periodically; when it dies, the lease runs
-- out and another replica takes the duty over.
CREATE TABLE leader (
    duty       text   NOT NULL PRIMARY KEY,
    holder     text   NOT NULL,
    expires_at bigint NOT NULL
);

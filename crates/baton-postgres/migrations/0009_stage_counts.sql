-- 0009: per-stage counters of live tasks, as baton-sqlite's 0009, so the
-- stage gauges (dashboard overview, /metrics) read O(stages) rows instead of
-- grouping every live task. Each writer adds its batch's summed deltas
-- (computed by the engine from the old and new row of every save,
-- baton_core::gauge) in the batch's transaction, to its own slot row: the
-- slot is the backend pid modulo a fixed count, so concurrent writers
-- (threads and replicas) almost never update the same row, and no row is one
-- that every handoff must lock. A stage's counts are the sum of its slots.
CREATE TABLE stage_counts (
    stage   text    NOT NULL,
    slot    integer NOT NULL,
    live    bigint  NOT NULL,
    ready   bigint  NOT NULL,
    held    bigint  NOT NULL,
    blocked bigint  NOT NULL,
    PRIMARY KEY (stage, slot)
);

-- Since when a ready task waits (NULL unless ready), extracted like the other
-- index columns, and indexed per stage: a stage's oldest ready task is one
-- seek to the first entry. The claim index (tasks_ready) orders by priority,
-- not by time, so it cannot answer this. The ALTER takes the table's
-- exclusive lock first, so no write slips between the recount below and
-- this migration's commit.
ALTER TABLE tasks ADD COLUMN ready_since bigint;
UPDATE tasks SET ready_since = ((body::jsonb) -> 'state' ->> 'since')::bigint WHERE ready;
CREATE INDEX tasks_ready_since ON tasks (stage, ready_since) WHERE ready;

-- Existing schemas start from a full recount, in slot 0 (`tasks_due` holds
-- exactly the live tasks).
INSERT INTO stage_counts (stage, slot, live, ready, held, blocked)
SELECT stage, 0, count(*), count(*) FILTER (WHERE ready), count(*) FILTER (WHERE state = 'held'),
       count(*) FILTER (WHERE state = 'blocked')
FROM tasks WHERE due_at IS NOT NULL GROUP BY stage;

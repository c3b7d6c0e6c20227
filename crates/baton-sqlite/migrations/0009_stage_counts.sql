-- 0009: per-stage counters of live tasks, so the stage gauges (dashboard
-- overview, /metrics) read O(stages) rows instead of grouping every live task.
-- The writer adds each batch's summed deltas (computed by the engine from the
-- old and new row of every save, baton_core::gauge) in the batch's
-- transaction. One writer: one plain row per stage.
CREATE TABLE stage_counts (
    stage   TEXT    NOT NULL PRIMARY KEY,
    live    INTEGER NOT NULL,
    ready   INTEGER NOT NULL,
    held    INTEGER NOT NULL,
    blocked INTEGER NOT NULL
) WITHOUT ROWID;

-- Existing databases start from a full recount (the same grouping the
-- counters replace; `tasks_due` holds exactly the live tasks).
INSERT INTO stage_counts (stage, live, ready, held, blocked)
SELECT stage, count(*), sum(ready), sum(state = 'held'), sum(state = 'blocked')
FROM tasks WHERE due_at IS NOT NULL GROUP BY stage;

-- Since when a ready task waits (NULL unless ready), extracted like the other
-- index columns, and indexed per stage: a stage's oldest ready task is one
-- seek to the first entry. The claim index (tasks_ready) orders by priority,
-- not by time, so it cannot answer this.
ALTER TABLE tasks ADD COLUMN ready_since INTEGER;
UPDATE tasks SET ready_since = json_extract(body, '$.state.since') WHERE ready = 1;
CREATE INDEX tasks_ready_since ON tasks (stage, ready_since) WHERE ready = 1;

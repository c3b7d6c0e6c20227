-- 0010: a handoff's record comes from its task's events (the event that
-- leaves the task waiting with it open, and the claim, cancel, reroute or
-- escalation that settles it: baton_core::event::handoff_from_history), so
-- the store keeps only which task a handoff id belongs to, written once when
-- the handoff is made, instead of a copy of the record rewritten when it
-- settles. Existing handoffs keep their ids; their records are read from
-- their tasks' events like new ones.
CREATE TABLE handoff_tasks (
    id   uuid NOT NULL PRIMARY KEY,
    task uuid NOT NULL REFERENCES tasks (id)
);

INSERT INTO handoff_tasks (id, task) SELECT id, task FROM handoffs;
DROP TABLE handoffs;

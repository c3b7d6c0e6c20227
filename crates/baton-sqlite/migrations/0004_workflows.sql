-- Workflows, the notice outbox and webhook deliveries (schema version 4).

-- Every version of every workflow; a version never changes once stored.
-- `body` is the checked workflow as JSON.
CREATE TABLE workflows (
    name    TEXT    NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    body    TEXT    NOT NULL,
    PRIMARY KEY (name, version)
);

-- The outbox: what custodians and operators must hear about (handoff
-- outcomes, alerts), written in the same transaction as the change. Webhook
-- deliveries read it in order.
CREATE TABLE notices (
    id   INTEGER PRIMARY KEY,
    task BLOB             REFERENCES tasks (id),  -- NULL: not about one task (an anomaly)
    body TEXT    NOT NULL
);

-- Every webhook delivery attempt, in order.
CREATE TABLE deliveries (
    id       INTEGER PRIMARY KEY,
    notice   INTEGER NOT NULL REFERENCES notices (id),
    webhook  TEXT    NOT NULL,
    final    INTEGER NOT NULL CHECK (final IN (0, 1)),
    body     TEXT    NOT NULL
);
-- Where a webhook's deliveries resume: its highest final notice.
CREATE INDEX deliveries_resume ON deliveries (webhook, notice) WHERE final = 1;

-- Stage capacity counts the tasks held at a stage.
CREATE INDEX tasks_held_by_stage ON tasks (stage) WHERE holder IS NOT NULL;

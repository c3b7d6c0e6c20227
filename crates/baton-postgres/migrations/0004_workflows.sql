-- 0004: workflows, the notice outbox and webhook deliveries, as
-- baton-sqlite's 0004. Applied inside one transaction by src/schema.rs,
-- which then records version 4 in schema_migrations.

-- Every version of every workflow; a version never changes once stored.
-- `body` is the checked workflow as JSON.
CREATE TABLE workflows (
    name    text    NOT NULL,
    version bigint  NOT NULL CHECK (version >= 1),
    body    text    NOT NULL,
    PRIMARY KEY (name, version)
);

-- The outbox: what custodians and operators must hear about (handoff
-- outcomes, alerts), written in the same transaction as the change. Webhook
-- deliveries read it in order.
CREATE TABLE notices (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task uuid            REFERENCES tasks (id),  -- NULL: not about one task (an anomaly)
    body text   NOT NULL
);

-- Every webhook delivery attempt, in order.
CREATE TABLE deliveries (
    id      bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice  bigint  NOT NULL REFERENCES notices (id),
    webhook text    NOT NULL,
    final   boolean NOT NULL,
    body    text    NOT NULL
);
-- Where a webhook's deliveries resume: its highest final notice.
CREATE INDEX deliveries_resume ON deliveries (webhook, notice) WHERE final;

-- Stage capacity counts the tasks held at a stage.
CREATE INDEX tasks_held_by_stage ON tasks (stage) WHERE holder IS NOT NULL;

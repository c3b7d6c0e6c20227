-- 0008: push notification configs, as baton-sqlite's 0008: an A2A client
-- asks for a task's status updates at a URL; `body` is the config as JSON
-- (the token it is signed with included).
CREATE TABLE push_configs (
    task uuid NOT NULL REFERENCES tasks (id),
    id   text NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (task, id)
);
-- A push config reads the outbox notices of its task only.
CREATE INDEX notices_task ON notices (task, id);

-- Push notification configs (schema version 8): an A2A client asks for a
-- task's status updates at a URL; `body` is the config as JSON (the token
-- it is signed with included). Deleted with the config, never kept after.
CREATE TABLE push_configs (
    task BLOB NOT NULL REFERENCES tasks (id),
    id   TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (task, id)
);
-- A push config reads the outbox notices of its task only.
CREATE INDEX notices_task ON notices (task, id);

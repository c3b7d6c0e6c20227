-- 0005: metric rollups, as baton-sqlite's 0005: counters per key per time
-- bucket (baton_core::metrics), added to by every replica. `key` is the
-- rollup key as JSON, `body` the counters as JSON.
CREATE TABLE rollups (
    bucket bigint NOT NULL,
    key    text   NOT NULL,
    body   text   NOT NULL,
    PRIMARY KEY (bucket, key)
);

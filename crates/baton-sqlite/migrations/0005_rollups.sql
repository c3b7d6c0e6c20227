-- Metric rollups (schema version 5): counters per key per time bucket, added
-- to by every replica (baton_core::metrics). `key` is the rollup key as JSON,
-- `body` the counters as JSON. Space is keys x buckets kept, never events.
CREATE TABLE rollups (
    bucket INTEGER NOT NULL,
    key    TEXT    NOT NULL,
    body   TEXT    NOT NULL,
    PRIMARY KEY (bucket, key)
);

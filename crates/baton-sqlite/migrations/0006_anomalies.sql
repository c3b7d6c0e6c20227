-- Anomalies flagged by anomaly detection (schema version 6), in the order
-- they were raised; `open` is 1 until an operator acknowledges one.
CREATE TABLE anomalies (
    id   INTEGER PRIMARY KEY,
    open INTEGER NOT NULL CHECK (open IN (0, 1)),
    body TEXT    NOT NULL
);
CREATE INDEX anomalies_open ON anomalies (id) WHERE open = 1;

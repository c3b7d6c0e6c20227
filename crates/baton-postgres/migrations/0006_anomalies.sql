-- 0006: anomalies flagged by anomaly detection, as baton-sqlite's 0006, in
-- the order they were raised; `open` until an operator acknowledges one.
CREATE TABLE anomalies (
    id   bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    open boolean NOT NULL,
    body text    NOT NULL
);
CREATE INDEX anomalies_open ON anomalies (id) WHERE open;

-- Each webhook's latest delivery record (schema version 7): after a restart,
-- a notice whose latest record is not final was in flight, and its attempts
-- go on from that record's count and `retry_at` instead of starting again.
CREATE INDEX deliveries_latest ON deliveries (webhook, id);

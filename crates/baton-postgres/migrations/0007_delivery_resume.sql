-- 0007: each webhook's latest delivery record, as baton-sqlite's 0007: after
-- a restart (or a duty takeover), a notice whose latest record is not final
-- was in flight, and its attempts go on from that record's count and
-- `retry_at` instead of starting again.
CREATE INDEX deliveries_latest ON deliveries (webhook, id);

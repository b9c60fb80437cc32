-- Members are handled concurrently: a redelivered event flushes only its member's
-- leftover commands, not its whole partition's.
ALTER TABLE outbox ADD COLUMN member_id uuid;
CREATE INDEX outbox_by_member ON outbox (member_id, seq);

-- Each answered message writes four timeline steps and two transcript lines; their index
-- entries are most of what Postgres spends on them (docs/performance.md, "What each
-- answered message writes").
--
-- A trace finds steps by equality only (an event id, a cause). A hash index answers that
-- as a B-tree does, and on random ids costs well under half as much to keep.
DROP INDEX message_steps_by_event;
DROP INDEX message_steps_by_cause;
CREATE INDEX message_steps_by_event ON message_steps USING hash (event_id);
CREATE INDEX message_steps_by_cause ON message_steps USING hash (causation_id);

-- A line without a platform message id (a bot's answer, the hub's own notices) can never
-- repeat one, so it needs no entry in the index that finds repeats: half the lines.
DROP INDEX messages_source_per_member;
CREATE UNIQUE INDEX messages_source_per_member
    ON messages (member_id, channel_id, source_message_id)
    WHERE source_message_id IS NOT NULL;

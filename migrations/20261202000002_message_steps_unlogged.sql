-- The message timeline is observability, written for every message handled: keep it off
-- the write-ahead log (Postgres is the hub's busiest part). After a Postgres crash the
-- table starts empty, which costs old traces and no message. Pruning by age scans a BRIN
-- index, nearly free to keep on an append-only table.
ALTER TABLE message_steps SET UNLOGGED;
DROP INDEX message_steps_by_age;
CREATE INDEX message_steps_by_age ON message_steps USING brin (at);

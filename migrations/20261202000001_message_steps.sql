-- "Where is my message": every time a service handled a bus message (the router an event,
-- a gateway a command), with the outcome. Services report these as receipts the router
-- writes in batches; a trace follows `causation_id` from a customer's message to each of
-- its deliveries. Pruned with the inbox.
CREATE TABLE message_steps (
    id            bigserial PRIMARY KEY,
    event_id      text NOT NULL,
    causation_id  text NOT NULL DEFAULT '',
    member_id     text NOT NULL DEFAULT '',
    kind          text NOT NULL,
    service       text NOT NULL,
    channel       text NOT NULL DEFAULT '',
    -- done, retry or parked
    outcome       text NOT NULL,
    detail        text NOT NULL DEFAULT '',
    attempt       integer NOT NULL,
    accepted_at   timestamptz NOT NULL,
    at            timestamptz NOT NULL
);
CREATE INDEX message_steps_by_event ON message_steps (event_id);
CREATE INDEX message_steps_by_cause ON message_steps (causation_id);
CREATE INDEX message_steps_by_age ON message_steps (at);

-- A disabled channel refuses new messages; what it holds is still delivered.
ALTER TABLE channels ADD COLUMN enabled boolean NOT NULL DEFAULT true;

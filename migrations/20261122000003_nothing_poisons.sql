-- A platform's message id is unique per member at most (some number messages per
-- conversation), so a transcript line is a duplicate only within its member and channel.
ALTER TABLE messages DROP CONSTRAINT messages_channel_id_source_message_id_key;
CREATE UNIQUE INDEX messages_source_per_member
    ON messages (member_id, channel_id, source_message_id);

-- Messages that can never be handled as they are (the store refuses them, a receiver
-- refuses them, a retry horizon passed, undecodable bytes): kept with the reason and the
-- exact bytes, until an operator replays or drops them (`handoffctl dead-letters`).
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    -- Which parking this is: a redelivered message parked twice is one row.
    parked_id   uuid NOT NULL UNIQUE,
    service     text NOT NULL,
    -- Where it was consumed from; a replay publishes `payload` there again.
    subject     text NOT NULL,
    member_id   text NOT NULL DEFAULT '',
    event_id    text NOT NULL DEFAULT '',
    kind        text NOT NULL DEFAULT '',
    reason      text NOT NULL,
    payload     bytea NOT NULL,
    truncated   boolean NOT NULL DEFAULT false,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    state       text NOT NULL DEFAULT 'parked' CHECK (state IN ('parked', 'replayed', 'dropped')),
    resolved_at timestamptz
);
CREATE INDEX dead_letters_parked ON dead_letters (id) WHERE state = 'parked';

-- Retention prunes by age.
CREATE INDEX processed_events_by_age ON processed_events (processed_at);
CREATE INDEX conversations_closed_at ON conversations (closed_at) WHERE state = 'closed';

-- Handoff's state. The router is the only writer.

CREATE TABLE channels (
    id          text PRIMARY KEY,
    org         text NOT NULL,
    platform    text NOT NULL,
    role        text NOT NULL,
    -- The channel's non-secret settings as last applied (tokens and secrets are never stored).
    config      jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE members (
    -- Handoff's `_id`: a name-based UUID of (channel, external_id), see handoff-config.
    id           uuid PRIMARY KEY,
    channel_id   text NOT NULL REFERENCES channels (id),
    external_id  text NOT NULL,
    profile      jsonb NOT NULL DEFAULT '{}',
    meta         jsonb NOT NULL DEFAULT '{}',
    temp_data    jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel_id, external_id)
);

-- One bot -> human -> bot cycle. A member with no open conversation is served by the bot.
CREATE TABLE conversations (
    id                uuid PRIMARY KEY,
    member_id         uuid NOT NULL REFERENCES members (id),
    state             text NOT NULL CHECK (state IN ('pending', 'live', 'closed')),
    outlet_channel_id text NOT NULL REFERENCES channels (id),
    -- The outlet's own ticket / group id, when its Livechat API answer carried one.
    external_id       text,
    summary           text NOT NULL DEFAULT '',
    group_name        text NOT NULL DEFAULT '',
    label             text NOT NULL DEFAULT '',
    meta              jsonb NOT NULL DEFAULT '{}',
    trigger           text NOT NULL DEFAULT '',
    history_token     text NOT NULL UNIQUE,
    history_expires_at timestamptz NOT NULL,
    opened_at         timestamptz NOT NULL DEFAULT now(),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    last_activity_at  timestamptz NOT NULL DEFAULT now(),
    closed_at         timestamptz,
    close_reason      text
);

-- At most one open conversation per member, enforced by the database.
CREATE UNIQUE INDEX conversations_one_open_per_member
    ON conversations (member_id) WHERE state <> 'closed';
CREATE INDEX conversations_open_by_state ON conversations (state) WHERE state <> 'closed';
CREATE INDEX conversations_by_external_id ON conversations (outlet_channel_id, external_id)
    WHERE external_id IS NOT NULL;

-- The transcript: every turn, customer, bot, agent and system.
CREATE TABLE messages (
    id                bigserial PRIMARY KEY,
    event_id          uuid NOT NULL UNIQUE,
    member_id         uuid NOT NULL REFERENCES members (id),
    conversation_id   uuid REFERENCES conversations (id),
    channel_id        text NOT NULL REFERENCES channels (id),
    source_message_id text,
    author            text NOT NULL CHECK (author IN ('customer', 'bot', 'agent', 'system')),
    content           jsonb NOT NULL,
    -- Customer messages received while PENDING wait here until the outlet accepts.
    held              boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel_id, source_message_id)
);
CREATE INDEX messages_by_member ON messages (member_id, id);
CREATE INDEX messages_held ON messages (conversation_id, id) WHERE held;

-- Inbox: every event the router has applied, so a redelivered event has no second effect.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Outbox: commands written in the same transaction as the state they derive from, published
-- after commit and deleted once JetStream has them (crash in between: published at restart).
CREATE TABLE outbox (
    seq        bigserial PRIMARY KEY,
    partition  integer NOT NULL,
    command_id uuid NOT NULL UNIQUE,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_by_partition ON outbox (partition, seq);

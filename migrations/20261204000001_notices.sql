-- The customer experience of a handoff (notices, a bot that never talks over a human).

-- Bumped each time a live chat starts or ends: a bot's answer carries back the epoch it
-- was asked in, and one that outlived a live chat is withheld from the customer.
ALTER TABLE members ADD COLUMN epoch integer NOT NULL DEFAULT 0;

-- Who took the live chat and since when: the "agent joined" notice is sent once.
ALTER TABLE conversations ADD COLUMN agent_name text;
ALTER TABLE conversations ADD COLUMN agent_joined_at timestamptz;

-- A bot answer that was not sent to the customer because a human owned the conversation
-- (kept for the transcript; relayed to the desk as context).
ALTER TABLE messages ADD COLUMN withheld boolean NOT NULL DEFAULT false;

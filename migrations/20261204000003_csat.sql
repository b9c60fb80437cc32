-- A satisfaction question after a live chat, and its answer.

-- The conversation the member was last asked about, and until when an answer counts.
ALTER TABLE members ADD COLUMN csat_conversation_id uuid;
ALTER TABLE members ADD COLUMN csat_until timestamptz;

-- The reply the customer picked.
ALTER TABLE conversations ADD COLUMN csat_answer text;

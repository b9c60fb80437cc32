-- A returning customer: the member's last live chat, whom it was with and when it closed,
-- so a new handoff names it and an outlet that reopens can take the next message back.
ALTER TABLE members ADD COLUMN last_live_id uuid;
ALTER TABLE members ADD COLUMN last_live_outlet text;
ALTER TABLE members ADD COLUMN last_live_closed_at timestamptz;

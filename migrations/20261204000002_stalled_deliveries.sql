-- Deliveries that keep failing are told early (issue: a visible outcome for every message).

-- The customer was told of a relay the desk keeps refusing: once per conversation.
ALTER TABLE conversations ADD COLUMN trouble_told_at timestamptz;

-- The member's bot was found down (calls failing for the inlet's botDownSecs): acted on
-- once, until the bot answers again.
ALTER TABLE members ADD COLUMN bot_down_since timestamptz;

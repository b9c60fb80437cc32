-- Timers with a meaning in a live chat: a first reply that does not come, an agent who
-- goes quiet while the customer waits. Each fires once per state.
ALTER TABLE conversations ADD COLUMN last_agent_at timestamptz;
ALTER TABLE conversations ADD COLUMN last_customer_at timestamptz;
-- The customer was told they are still waiting for a first reply (this state).
ALTER TABLE conversations ADD COLUMN waiting_told_at timestamptz;
-- The customer was told the agent has gone quiet (the chat closes after a grace).
ALTER TABLE conversations ADD COLUMN idle_told_at timestamptz;
-- Times the request went to the desk again for want of a first reply.
ALTER TABLE conversations ADD COLUMN requeues integer NOT NULL DEFAULT 0;

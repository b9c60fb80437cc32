-- A customer's messages waiting to be given to a coalescing bot as one turn are held
-- lines without a conversation; the router's sweeper finds those left overdue.
CREATE INDEX messages_pending_turns ON messages (created_at)
    WHERE held AND conversation_id IS NULL;

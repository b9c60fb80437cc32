//! What the router knows, as types: the state machine decides over these, the store reads
//! and writes them. Neither the wire (protobuf, JSON) nor SQL appears here.

use uuid::Uuid;

/// A conversation's state, as stored (`conversations.state`). A member with no open
/// conversation is with the bot; "bot" is therefore not a state a row can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ConvState {
    /// Handed over; the outlet has not accepted yet. Customer messages are held.
    Pending,
    /// A human is on it.
    Live,
    Closed,
}

impl ConvState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvState::Pending => "pending",
            ConvState::Live => "live",
            ConvState::Closed => "closed",
        }
    }
}

/// Who wrote a transcript line (`messages.author`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Author {
    Customer,
    Bot,
    Agent,
    /// The hub itself: handoff requested, live chat started or ended, failures.
    System,
}

impl Author {
    pub fn as_str(self) -> &'static str {
        match self {
            Author::Customer => "customer",
            Author::Bot => "bot",
            Author::Agent => "agent",
            Author::System => "system",
        }
    }
}

/// A dead letter's state (`dead_letters.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum DeadLetterState {
    Parked,
    Replayed,
    Dropped,
}

impl DeadLetterState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterState::Parked => "parked",
            DeadLetterState::Replayed => "replayed",
            DeadLetterState::Dropped => "dropped",
        }
    }
}

/// The state of an open conversation: the only ones the state machine sees (closed ones
/// are history). The same column as [`ConvState`]; a row read as open is never closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum OpenState {
    Pending,
    Live,
}

impl OpenState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenState::Pending => "pending",
            OpenState::Live => "live",
        }
    }
}

/// A member's open conversation (PENDING or LIVE).
#[derive(Debug, Clone)]
pub struct OpenConversation {
    pub id: Uuid,
    pub state: OpenState,
    pub outlet_channel_id: String,
    /// The customer has been told an agent joined.
    pub agent_joined: bool,
    /// The customer has been told the desk is not getting their messages.
    pub trouble_told: bool,
    /// An agent opened it on a member the bot held (no handoff was asked).
    pub taken_over: bool,
    /// The agent who took it, when the desk said.
    pub agent_name: String,
    /// Times the request went to the desk again for want of a first reply.
    pub requeues: u32,
    /// An agent has written in this state.
    pub replied: bool,
    /// Seconds since it entered this state (for LIVE: since the desk accepted).
    pub in_state_secs: f64,
    /// A transfer's request: the live chat it came from and that chat's outlet, where the
    /// customer goes back if the new desk refuses.
    pub transferred_from: Option<(Uuid, String)>,
}

/// A live-chat timer, as the router checks it again inside the transaction that acts on
/// it: it fires only if still due, so at most once per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// LIVE, no agent message yet, not told yet.
    FirstReply,
    /// LIVE, no agent message yet (what then, requeue or the bot, the machine decides).
    NoReply,
    /// LIVE, the customer waits since the agent last wrote, not told yet.
    AgentIdle,
    /// Told the agent is quiet `limit` ago, and the agent still has not written.
    AgentIdleClose,
}

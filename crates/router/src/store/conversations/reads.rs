//! What the timeout sweeper, the admin API and transcript links read of conversations.

use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::{ConvState, OpenState};
use crate::store::members::Whereabouts;

/// An open conversation as the timeout sweeper sees it.
#[derive(Debug)]
pub struct Waiting {
    pub id: Uuid,
    pub member_id: Uuid,
    pub state: OpenState,
    pub channel_id: String,
    /// Seconds since the state changed, and since the last activity.
    pub in_state: f64,
    pub idle: f64,
    /// When it went quiet (ms since the epoch): the timeout event's id derives from it.
    pub quiet_since: i64,
    pub outlet_channel_id: String,
    /// When the state last changed (ms): the first-reply timers' ids derive from it.
    pub state_since: i64,
    /// No agent has written in this state; the customer was told they still wait.
    pub unanswered: bool,
    pub waiting_told: bool,
    /// The customer has written since the agent last did (or the chat went live), and
    /// how long ago that was, in seconds, and since when (ms).
    pub customer_waits: bool,
    pub agent_quiet: f64,
    pub agent_quiet_since: i64,
    /// Seconds since the customer was told the agent is quiet (`None`: not told).
    pub idle_told: Option<f64>,
}

/// The open conversations with what their timers need; only those of `ids` when given
/// (the admin's page of conversations, not every open one).
pub async fn waiting(pool: &PgPool, ids: Option<&[Uuid]>) -> sqlx::Result<Vec<Waiting>> {
    sqlx::query_as!(
        Waiting,
        r#"SELECT c.id, c.member_id, c.state AS "state: OpenState", m.channel_id,
                  EXTRACT(EPOCH FROM now() - c.state_changed_at)::float8 AS "in_state!",
                  EXTRACT(EPOCH FROM now() - c.last_activity_at)::float8 AS "idle!",
                  (EXTRACT(EPOCH FROM c.last_activity_at) * 1000)::int8 AS "quiet_since!",
                  c.outlet_channel_id,
                  (EXTRACT(EPOCH FROM c.state_changed_at) * 1000)::int8 AS "state_since!",
                  (c.last_agent_at IS NULL OR c.last_agent_at < c.state_changed_at)
                    AS "unanswered!",
                  c.waiting_told_at IS NOT NULL AS "waiting_told!",
                  COALESCE(c.last_customer_at > COALESCE(c.last_agent_at, c.state_changed_at),
                           false) AS "customer_waits!",
                  EXTRACT(EPOCH FROM now() - COALESCE(c.last_agent_at, c.state_changed_at))::float8
                    AS "agent_quiet!",
                  (EXTRACT(EPOCH FROM COALESCE(c.last_agent_at, c.state_changed_at)) * 1000)::int8
                    AS "agent_quiet_since!",
                  EXTRACT(EPOCH FROM now() - c.idle_told_at)::float8 AS idle_told
           FROM conversations c JOIN members m ON m.id = c.member_id
           WHERE c.state IN ('pending', 'live')
             AND ($1::uuid[] IS NULL OR c.id = ANY($1))"#,
        ids as Option<&[Uuid]>,
    )
    .fetch_all(pool)
    .await
}

/// Open conversations per state, every state present (a zero is a reading too).
pub async fn count_open(pool: &PgPool) -> sqlx::Result<Vec<(&'static str, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state: OpenState", count(*) AS "n!" FROM conversations
           WHERE state <> 'closed' GROUP BY state"#
    )
    .fetch_all(pool)
    .await?;
    Ok([OpenState::Pending, OpenState::Live]
        .into_iter()
        .map(|state| {
            let n = rows.iter().find(|r| r.state == state).map_or(0, |r| r.n);
            (state.as_str(), n)
        })
        .collect())
}

/// The conversation an outlet names by its own reference or by Handoff's id, the open one
/// first.
pub async fn by_outlet_reference(
    pool: &PgPool,
    outlet: &str,
    reference: &str,
) -> sqlx::Result<Option<Whereabouts>> {
    sqlx::query_as!(
        Whereabouts,
        r#"SELECT c.member_id, m.channel_id AS inlet, c.id AS "conversation_id?",
                  c.state AS "state?: ConvState", c.outlet_channel_id AS "outlet_channel_id?"
           FROM conversations c JOIN members m ON m.id = c.member_id
           WHERE c.outlet_channel_id = $1 AND (c.id::text = $2 OR c.external_id = $2)
           ORDER BY (c.state <> 'closed') DESC, c.opened_at DESC LIMIT 1"#,
        outlet,
        reference,
    )
    .fetch_optional(pool)
    .await
}

/// A conversation as the admin API shows it.
#[derive(Debug)]
pub struct ConversationView {
    pub id: Uuid,
    pub member_id: Uuid,
    pub inlet: String,
    pub external_id: String,
    pub outlet_channel_id: String,
    pub state: ConvState,
    pub trigger: String,
    pub opened_at: OffsetDateTime,
    pub state_changed_at: OffsetDateTime,
    pub closed_at: Option<OffsetDateTime>,
    pub close_reason: Option<String>,
    pub outlet_ref: Option<String>,
    pub csat_answer: Option<String>,
}

/// The newest conversations in `state` (`None`: the open ones), of `channel` (inlet or
/// outlet) when given.
pub async fn list(
    pool: &PgPool,
    state: Option<ConvState>,
    channel: Option<&str>,
    limit: i64,
) -> sqlx::Result<Vec<ConversationView>> {
    sqlx::query_as!(
        ConversationView,
        r#"SELECT c.id, c.member_id, m.channel_id AS inlet, m.external_id,
                  c.outlet_channel_id, c.state AS "state: ConvState", c.trigger, c.opened_at,
                  c.state_changed_at, c.closed_at, c.close_reason, c.external_id AS outlet_ref,
                  c.csat_answer
           FROM conversations c JOIN members m ON m.id = c.member_id
           WHERE (($1::text IS NULL AND c.state <> 'closed') OR c.state = $1)
             AND ($2::text IS NULL OR m.channel_id = $2 OR c.outlet_channel_id = $2)
           ORDER BY c.opened_at DESC LIMIT $3"#,
        state.map(ConvState::as_str),
        channel,
        limit,
    )
    .fetch_all(pool)
    .await
}

pub async fn view(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ConversationView>> {
    sqlx::query_as!(
        ConversationView,
        r#"SELECT c.id, c.member_id, m.channel_id AS inlet, m.external_id,
                  c.outlet_channel_id, c.state AS "state: ConvState", c.trigger, c.opened_at,
                  c.state_changed_at, c.closed_at, c.close_reason, c.external_id AS outlet_ref,
                  c.csat_answer
           FROM conversations c JOIN members m ON m.id = c.member_id WHERE c.id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// What a transcript link opens: its conversation and member.
#[derive(Debug)]
pub struct HistoryLink {
    pub id: Uuid,
    pub member_id: Uuid,
    pub closed_at: Option<OffsetDateTime>,
    pub valid: bool,
    pub external_id: String,
    pub profile: Value,
}

pub async fn by_history_token(pool: &PgPool, token: &str) -> sqlx::Result<Option<HistoryLink>> {
    sqlx::query_as!(
        HistoryLink,
        r#"SELECT c.id, c.member_id, c.closed_at, c.history_expires_at > now() AS "valid!",
                  m.external_id, m.profile
           FROM conversations c JOIN members m ON m.id = c.member_id
           WHERE c.history_token = $1"#,
        token,
    )
    .fetch_optional(pool)
    .await
}

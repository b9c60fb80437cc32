//! `conversations`: one bot → human → bot cycle of a member. Every transition is a
//! compare-and-set on `state`, so a duplicated or late event cannot apply twice.

use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::model::{OpenConversation, OpenState, Timer};

mod reads;
pub use reads::{
    ConversationView, HistoryLink, Waiting, by_history_token, by_outlet_reference, count_open,
    list, view, waiting,
};

/// A PENDING conversation about to be opened.
pub struct NewConversation<'a> {
    pub id: Uuid,
    pub member_id: Uuid,
    pub outlet_channel_id: &'a str,
    pub summary: &'a str,
    pub group_name: &'a str,
    pub label: &'a str,
    pub meta: &'a Value,
    pub trigger: &'a str,
    pub history_token: &'a str,
    pub history_ttl_secs: f64,
    /// Opened closed, for this reason (a ticket for a desk outside its hours).
    pub closed_as: Option<&'a str>,
}

/// BOT → PENDING. `false` when the member already has an open conversation (or this one
/// was opened before).
pub async fn open(db: impl PgExecutor<'_>, c: NewConversation<'_>) -> sqlx::Result<bool> {
    let opened = sqlx::query!(
        "INSERT INTO conversations (id, member_id, state, outlet_channel_id, summary,
           group_name, label, meta, trigger, history_token, history_expires_at,
           closed_at, close_reason)
         VALUES ($1, $2, CASE WHEN $11::text IS NULL THEN 'pending' ELSE 'closed' END,
                 $3, $4, $5, $6, $7, $8, $9, now() + make_interval(secs => $10),
                 CASE WHEN $11::text IS NULL THEN NULL ELSE now() END, $11)
         ON CONFLICT DO NOTHING",
        c.id,
        c.member_id,
        c.outlet_channel_id,
        c.summary,
        c.group_name,
        c.label,
        c.meta,
        c.trigger,
        c.history_token,
        c.history_ttl_secs,
        c.closed_as,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(opened == 1)
}

/// A live chat an agent opens on a member the bot holds.
pub struct Takeover<'a> {
    pub id: Uuid,
    pub member_id: Uuid,
    pub outlet_channel_id: &'a str,
    pub agent_name: &'a str,
    pub history_token: &'a str,
    pub history_ttl_secs: f64,
}

/// BOT → LIVE at an agent's word, a new epoch for the member; `false` when the member
/// already has an open conversation. Takes the member's lock first, so it waits for (and
/// sees the effect of) a batch applying the member's events meanwhile.
pub async fn take_over(pool: &PgPool, t: Takeover<'_>) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    super::inbox::lock_member(&mut *tx, t.member_id).await?;
    let taken = sqlx::query_scalar!(
        r#"WITH live AS (
             INSERT INTO conversations (id, member_id, state, outlet_channel_id, summary,
               trigger, history_token, history_expires_at, agent_name)
             VALUES ($1, $2, 'live', $3, 'Taken over by an agent', 'agent_takeover', $4,
                     now() + make_interval(secs => $5), NULLIF($6, ''))
             ON CONFLICT DO NOTHING
             RETURNING member_id),
           bumped AS (
             UPDATE members SET epoch = epoch + 1 FROM live WHERE members.id = live.member_id)
           SELECT count(*) AS "taken!" FROM live"#,
        t.id,
        t.member_id,
        t.outlet_channel_id,
        t.history_token,
        t.history_ttl_secs,
        t.agent_name,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(taken == 1)
}

/// PENDING → LIVE, a new epoch for the member. Seconds the customer waited and the
/// outlet, or `None` when it was no longer PENDING.
pub async fn become_live(
    db: impl PgExecutor<'_>,
    id: Uuid,
    external_id: &str,
) -> sqlx::Result<Option<(f64, String)>> {
    let row = sqlx::query!(
        r#"WITH live AS (
             UPDATE conversations SET state = 'live',
               external_id = COALESCE(NULLIF($2, ''), external_id),
               state_changed_at = now(), last_activity_at = now()
             WHERE id = $1 AND state = 'pending'
             RETURNING member_id, outlet_channel_id,
                       EXTRACT(EPOCH FROM now() - opened_at)::float8 AS waited),
           bumped AS (
             UPDATE members SET epoch = epoch + 1 FROM live WHERE members.id = live.member_id)
           SELECT waited AS "waited!", outlet_channel_id AS "outlet!" FROM live"#,
        id,
        external_id,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.waited, r.outlet)))
}

/// `from` → closed (from LIVE: a new epoch for the member). Seconds the conversation
/// lasted, or `None` when it was no longer in `from`.
pub async fn close(
    db: impl PgExecutor<'_>,
    id: Uuid,
    from: OpenState,
    reason: &str,
) -> sqlx::Result<Option<(f64, String)>> {
    let row = sqlx::query!(
        r#"WITH closed AS (
             UPDATE conversations SET state = 'closed', closed_at = now(),
               state_changed_at = now(), close_reason = $3
             WHERE id = $1 AND state = $2
             RETURNING id, member_id, outlet_channel_id,
                       EXTRACT(EPOCH FROM now() - opened_at)::float8 AS lasted),
           bumped AS (
             UPDATE members SET epoch = epoch + 1, last_live_id = closed.id,
               last_live_outlet = closed.outlet_channel_id, last_live_closed_at = now()
             FROM closed
             WHERE members.id = closed.member_id AND $2 = 'live')
           SELECT lasted AS "lasted!", outlet_channel_id AS "outlet!" FROM closed"#,
        id,
        from.as_str(),
        reason,
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.lasted, r.outlet)))
}

/// Whether the conversation has been in `state` (PENDING), or quiet (LIVE), for
/// `limit_secs`: a message may have arrived since the sweeper looked.
pub async fn is_overdue(
    db: impl PgExecutor<'_>,
    id: Uuid,
    state: OpenState,
    limit_secs: f64,
) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT (CASE WHEN $2 = 'pending' THEN state_changed_at ELSE last_activity_at END
                   <= now() - make_interval(secs => $3)) AS "overdue!"
           FROM conversations WHERE id = $1"#,
        id,
        state.as_str(),
        limit_secs,
    )
    .fetch_one(db)
    .await
}

/// Closed conversations older than `age_secs` with no transcript left, at most `chunk`.
pub async fn prune(db: impl PgExecutor<'_>, age_secs: f64, chunk: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM conversations WHERE id IN (
           SELECT c.id FROM conversations c
           WHERE c.state = 'closed' AND c.closed_at < now() - make_interval(secs => $1)
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)
           LIMIT $2)",
        age_secs,
        chunk,
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// The open conversations of a batch's members, locked for this transaction.
pub async fn open_for_update_many(
    db: impl PgExecutor<'_>,
    members: &[Uuid],
) -> sqlx::Result<Vec<(Uuid, OpenConversation)>> {
    let rows = sqlx::query!(
        r#"SELECT member_id, id, state AS "state: OpenState", outlet_channel_id,
                  trigger = 'agent_takeover' AS "taken_over!", agent_name, requeues,
                  COALESCE(last_agent_at >= state_changed_at, false) AS "replied!",
                  EXTRACT(EPOCH FROM now() - state_changed_at)::float8 AS "in_state_secs!",
                  agent_joined_at IS NOT NULL AS "agent_joined!",
                  trouble_told_at IS NOT NULL AS "trouble_told!",
                  CASE WHEN trigger = 'transfer' THEN meta->>'transferredFrom' END
                    AS transferred_from,
                  CASE WHEN trigger = 'transfer' THEN meta->>'fromOutlet' END
                    AS transferred_from_outlet
           FROM conversations
           WHERE member_id = ANY($1) AND state <> 'closed' FOR UPDATE"#,
        members,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.member_id,
                OpenConversation {
                    id: r.id,
                    state: r.state,
                    outlet_channel_id: r.outlet_channel_id,
                    agent_joined: r.agent_joined,
                    trouble_told: r.trouble_told,
                    taken_over: r.taken_over,
                    requeues: u32::try_from(r.requeues).unwrap_or_default(),
                    replied: r.replied,
                    in_state_secs: r.in_state_secs,
                    agent_name: r.agent_name.unwrap_or_default(),
                    transferred_from: r
                        .transferred_from
                        .and_then(|id| id.parse().ok())
                        .zip(r.transferred_from_outlet),
                },
            )
        })
        .collect())
}

/// The customer was told an agent joined (`name`, when the desk gave one); `false` when
/// they already were.
pub async fn agent_joined(db: impl PgExecutor<'_>, id: Uuid, name: &str) -> sqlx::Result<bool> {
    let joined = sqlx::query!(
        "UPDATE conversations SET agent_joined_at = now(), agent_name = NULLIF($2, '')
         WHERE id = $1 AND agent_joined_at IS NULL",
        id,
        name,
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(joined == 1)
}

/// CLOSED → LIVE: the customer writes again within the outlet's return window, and the
/// outlet reopens; a new epoch for the member. `false` when it was not closed (or the
/// member has another open conversation).
pub async fn reopen(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    let reopened = sqlx::query_scalar!(
        r#"WITH live AS (
             UPDATE conversations SET state = 'live', closed_at = NULL, close_reason = NULL,
               state_changed_at = now(), last_activity_at = now(), waiting_told_at = NULL,
               idle_told_at = NULL
             WHERE id = $1 AND state = 'closed'
               AND NOT EXISTS (SELECT 1 FROM conversations o
                               WHERE o.member_id = conversations.member_id
                                 AND o.state <> 'closed')
             RETURNING member_id),
           bumped AS (
             UPDATE members SET epoch = epoch + 1 FROM live WHERE members.id = live.member_id)
           SELECT count(*) AS "n!" FROM live"#,
        id,
    )
    .fetch_one(db)
    .await?;
    Ok(reopened == 1)
}

/// Whom a member's previous live chat was with: its group and its agent.
pub async fn previous(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> sqlx::Result<Option<(String, Option<String>)>> {
    let row = sqlx::query!(
        "SELECT group_name, agent_name FROM conversations WHERE id = $1",
        id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.group_name, r.agent_name)))
}

/// The customer's answer to the satisfaction question about the conversation.
pub async fn csat_answered(db: impl PgExecutor<'_>, id: Uuid, answer: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE conversations SET csat_answer = $2 WHERE id = $1",
        id,
        answer
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The customer was told of a relay the desk keeps refusing.
pub async fn trouble_told(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE conversations SET trouble_told_at = now() WHERE id = $1",
        id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A batch's conversations saw activity (their idle timeouts start again); those in
/// `by_agent` and `by_customer` from that side (the live-chat timers' clocks).
pub async fn touch_many(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    by_agent: &[Uuid],
    by_customer: &[Uuid],
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE conversations SET last_activity_at = now(),
           last_agent_at = CASE WHEN id = ANY($2) THEN now() ELSE last_agent_at END,
           idle_told_at = CASE WHEN id = ANY($2) THEN NULL ELSE idle_told_at END,
           last_customer_at = CASE WHEN id = ANY($3) THEN now() ELSE last_customer_at END
         WHERE id = ANY($1)",
        ids,
        by_agent,
        by_customer,
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn timer_due(
    db: impl PgExecutor<'_>,
    id: Uuid,
    timer: Timer,
    limit_secs: f64,
) -> sqlx::Result<bool> {
    let which = match timer {
        Timer::FirstReply => "first_reply",
        Timer::NoReply => "no_reply",
        Timer::AgentIdle => "agent_idle",
        Timer::AgentIdleClose => "agent_idle_close",
    };
    let due = sqlx::query_scalar!(
        r#"SELECT (state = 'live' AND CASE $2::text
             WHEN 'first_reply' THEN waiting_told_at IS NULL
               AND (last_agent_at IS NULL OR last_agent_at < state_changed_at)
               AND state_changed_at <= now() - make_interval(secs => $3)
             WHEN 'no_reply' THEN (last_agent_at IS NULL OR last_agent_at < state_changed_at)
               AND state_changed_at <= now() - make_interval(secs => $3)
             WHEN 'agent_idle' THEN idle_told_at IS NULL
               AND last_customer_at > COALESCE(last_agent_at, state_changed_at)
               AND COALESCE(last_agent_at, state_changed_at) <= now() - make_interval(secs => $3)
             WHEN 'agent_idle_close' THEN idle_told_at IS NOT NULL
               AND idle_told_at <= now() - make_interval(secs => $3)
               AND (last_agent_at IS NULL OR last_agent_at < idle_told_at)
             ELSE false END) AS "due!"
           FROM conversations WHERE id = $1"#,
        id,
        which,
        limit_secs,
    )
    .fetch_optional(db)
    .await?;
    Ok(due.unwrap_or(false))
}

/// The customer was told of a live-chat timer (`waiting` or `idle`).
pub async fn timer_told(db: impl PgExecutor<'_>, id: Uuid, idle: bool) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE conversations SET
           waiting_told_at = CASE WHEN $2 THEN waiting_told_at ELSE now() END,
           idle_told_at = CASE WHEN $2 THEN now() ELSE idle_told_at END
         WHERE id = $1",
        id,
        idle,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// LIVE → PENDING for want of a first reply: the request goes to the desk again. What it
/// asked for the first time.
pub async fn requeue(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Requeued>> {
    sqlx::query_as!(
        Requeued,
        r#"UPDATE conversations SET state = 'pending', state_changed_at = now(),
             last_activity_at = now(), requeues = requeues + 1, waiting_told_at = NULL,
             agent_joined_at = NULL
           WHERE id = $1 AND state = 'live'
           RETURNING summary, group_name, label, meta, trigger, history_token, requeues"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// A requeued conversation's request, as first asked.
#[derive(Debug)]
pub struct Requeued {
    pub summary: String,
    pub group_name: String,
    pub label: String,
    pub meta: Value,
    pub trigger: String,
    pub history_token: String,
    pub requeues: i32,
}

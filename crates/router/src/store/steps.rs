//! `message_steps`: every time a service handled a bus message, with the outcome; a trace
//! follows `causation_id` from a customer's message to each of its deliveries.

use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// A batch of receipts, column by column.
#[derive(Debug, Default)]
pub struct NewSteps {
    pub event_ids: Vec<String>,
    pub causation_ids: Vec<String>,
    pub member_ids: Vec<String>,
    pub kinds: Vec<String>,
    pub services: Vec<String>,
    pub channels: Vec<String>,
    pub outcomes: Vec<String>,
    pub details: Vec<String>,
    pub attempts: Vec<i32>,
    pub accepted_at: Vec<OffsetDateTime>,
    pub at: Vec<OffsetDateTime>,
}

pub async fn insert(pool: &PgPool, s: &NewSteps) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO message_steps (event_id, causation_id, member_id, kind, service, channel,
                                    outcome, detail, attempt, accepted_at, at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::int4[],
                              $10::timestamptz[], $11::timestamptz[])",
        &s.event_ids,
        &s.causation_ids,
        &s.member_ids,
        &s.kinds,
        &s.services,
        &s.channels,
        &s.outcomes,
        &s.details,
        &s.attempts,
        &s.accepted_at,
        &s.at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether `id` is an event the steps or the transcript know (Handoff's event id).
pub async fn known_event(pool: &PgPool, id: uuid::Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        r#"SELECT event_id AS "event_id!" FROM message_steps WHERE event_id = $1
           UNION ALL
           SELECT event_id::text FROM messages WHERE event_id = $2
           LIMIT 1"#,
        id.to_string(),
        id,
    )
    .fetch_optional(pool)
    .await
}

#[derive(Debug)]
pub struct Step {
    pub event_id: String,
    pub member_id: String,
    pub kind: String,
    pub service: String,
    pub channel: String,
    pub outcome: String,
    pub detail: String,
    pub attempt: i32,
    pub accepted_at: OffsetDateTime,
    pub at: OffsetDateTime,
}

/// The steps of `root` and of what it caused (commands, a bot's answer, that answer's
/// delivery, and so on, eight links deep), in time order.
pub async fn chain(pool: &PgPool, root: &str) -> sqlx::Result<Vec<Step>> {
    sqlx::query_as!(
        Step,
        "WITH RECURSIVE chain(event_id, depth) AS (
             SELECT $1::text, 0
           UNION
             SELECT s.event_id, chain.depth + 1
             FROM message_steps s JOIN chain ON s.causation_id = chain.event_id
             WHERE chain.depth < 8
         )
         SELECT s.event_id, s.member_id, s.kind, s.service, s.channel, s.outcome,
                s.detail, s.attempt, s.accepted_at, s.at
         FROM message_steps s
         WHERE s.event_id IN (SELECT event_id FROM chain)
         ORDER BY s.at, s.id",
        root,
    )
    .fetch_all(pool)
    .await
}

/// Steps older than `age_secs`, at most `chunk`.
pub async fn prune(db: impl PgExecutor<'_>, age_secs: f64, chunk: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM message_steps WHERE id IN (
           SELECT id FROM message_steps
           WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
        age_secs,
        chunk,
    )
    .execute(db)
    .await?
    .rows_affected())
}

//! `dead_letters`: messages that can never be handled as they are, kept with the reason
//! and their exact bytes until an operator replays or drops them.

use handoff_bus::{Parking, storable};
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::DeadLetterState;

/// Keeps a parked message (once per parking id).
pub async fn insert(db: impl PgExecutor<'_>, p: &Parking) -> sqlx::Result<()> {
    let parked_id: Uuid = p.parked_id.parse().unwrap_or_else(|_| Uuid::now_v7());
    sqlx::query!(
        "INSERT INTO dead_letters (parked_id, service, subject, member_id, event_id, kind,
           reason, payload, truncated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (parked_id) DO NOTHING",
        parked_id,
        storable(&p.service),
        storable(&p.subject),
        storable(&p.member_id),
        storable(&p.original_event_id),
        storable(&p.original_kind),
        storable(&p.reason),
        p.payload.as_ref(),
        p.truncated,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A dead letter as listed (without its bytes).
#[derive(Debug)]
pub struct Listed {
    pub id: i64,
    pub parked_at: OffsetDateTime,
    pub service: String,
    pub subject: String,
    pub member_id: String,
    pub event_id: String,
    pub kind: String,
    pub reason: String,
    pub size: i32,
    pub truncated: bool,
    pub state: DeadLetterState,
}

/// The newest, parked ones only unless `all`.
pub async fn list(pool: &PgPool, all: bool, limit: i64) -> sqlx::Result<Vec<Listed>> {
    sqlx::query_as!(
        Listed,
        r#"SELECT id, parked_at, service, subject, member_id, event_id, kind, reason,
                  length(payload) AS "size!", truncated, state AS "state: DeadLetterState"
           FROM dead_letters WHERE $1 OR state = 'parked'
           ORDER BY id DESC LIMIT $2"#,
        all,
        limit,
    )
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<Listed>> {
    sqlx::query_as!(
        Listed,
        r#"SELECT id, parked_at, service, subject, member_id, event_id, kind, reason,
                  length(payload) AS "size!", truncated, state AS "state: DeadLetterState"
           FROM dead_letters WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// What a replay needs.
#[derive(Debug)]
pub struct Parked {
    pub parked_id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
    pub truncated: bool,
    pub state: DeadLetterState,
}

pub async fn for_replay(pool: &PgPool, id: i64) -> sqlx::Result<Option<Parked>> {
    sqlx::query_as!(
        Parked,
        r#"SELECT parked_id, subject, payload, truncated, state AS "state: DeadLetterState"
           FROM dead_letters WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

pub async fn state(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeadLetterState>> {
    sqlx::query_scalar!(
        r#"SELECT state AS "state: DeadLetterState" FROM dead_letters WHERE id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await
}

/// Parked → `to` (replayed or dropped); nothing when it is no longer parked.
pub async fn resolve(pool: &PgPool, id: i64, to: DeadLetterState) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE dead_letters SET state = $2, resolved_at = now() WHERE id = $1 AND state = 'parked'",
        id,
        to.as_str(),
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// How many, by state and service.
pub async fn counts(pool: &PgPool) -> sqlx::Result<Vec<(String, String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT state, service, count(*) AS "n!" FROM dead_letters GROUP BY state, service
           ORDER BY state, service"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.state, r.service, r.n))
        .collect())
}

/// Resolved ones older than `age_secs`, at most `chunk`.
pub async fn prune(db: impl PgExecutor<'_>, age_secs: f64, chunk: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM dead_letters WHERE id IN (
           SELECT id FROM dead_letters
           WHERE state <> 'parked' AND resolved_at < now() - make_interval(secs => $1)
           LIMIT $2)",
        age_secs,
        chunk,
    )
    .execute(db)
    .await?
    .rows_affected())
}

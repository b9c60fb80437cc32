//! Dead letters: messages parked because they can never be handled as they are. Operators
//! list them, replay them (after fixing what refused them) or drop them; `handoffctl
//! dead-letters` is the tool, and the router's `/metrics` counts them.

use async_nats::HeaderMap;
use handoff_bus::{Bus, now_ms};
use handoff_proto::admin::DeadLetter;
use sqlx::{PgPool, Row as _};

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {0} is {1}, not parked")]
    NotParked(i64, String),
    #[error("dead letter {0} was cut to fit the bus when parked; it cannot be replayed whole")]
    Truncated(i64),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("NATS: {0}")]
    Bus(String),
}

const COLUMNS: &str = "id, parked_at, service, subject, member_id, event_id, kind, reason,
    length(payload) AS size, truncated, state";

/// Dead letters, newest first; only the parked ones unless `all`.
pub async fn list(pool: &PgPool, all: bool, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM dead_letters WHERE $1 OR state = 'parked'
         ORDER BY id DESC LIMIT $2"
    ))
    .bind(all)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeadLetter>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM dead_letters WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.as_ref().map(from_row))
}

fn from_row(r: &sqlx::postgres::PgRow) -> DeadLetter {
    let at: time::OffsetDateTime = r.get("parked_at");
    DeadLetter {
        id: r.get("id"),
        parked_at: at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        service: r.get("service"),
        subject: r.get("subject"),
        member_id: r.get("member_id"),
        event_id: r.get("event_id"),
        kind: r.get("kind"),
        reason: r.get("reason"),
        size: i64::from(r.get::<i32, _>("size")),
        truncated: r.get("truncated"),
        state: r.get("state"),
    }
}

/// Publishes a parked message again where it was consumed from, as it was. It goes to
/// the back of its member's lane; receivers recognise it if an earlier try got through.
pub async fn replay(pool: &PgPool, bus: &Bus, id: i64) -> Result<(), DeadLetterError> {
    let row = sqlx::query(
        "SELECT parked_id, subject, payload, truncated, state FROM dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DeadLetterError::NotFound(id))?;
    let state: String = row.get("state");
    if state != "parked" {
        return Err(DeadLetterError::NotParked(id, state));
    }
    if row.get::<bool, _>("truncated") {
        return Err(DeadLetterError::Truncated(id));
    }
    let parked_id: uuid::Uuid = row.get("parked_id");
    // A new dedup id per replay: the original's may still be in JetStream's window.
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("replay-{parked_id}-{}", now_ms()).as_str(),
    );
    let payload: Vec<u8> = row.get("payload");
    bus.publish_all([(row.get::<String, _>("subject"), headers, payload.into())])
        .await
        .map_err(|e| DeadLetterError::Bus(e.to_string()))?;
    resolve(pool, id, "replayed").await
}

/// Marks a parked message as dropped: it stays listed (with `--all`) until retention.
pub async fn drop(pool: &PgPool, id: i64) -> Result<(), DeadLetterError> {
    resolve(pool, id, "dropped").await
}

async fn resolve(pool: &PgPool, id: i64, state: &str) -> Result<(), DeadLetterError> {
    let current: Option<String> =
        sqlx::query_scalar("SELECT state FROM dead_letters WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    match current.as_deref() {
        None => return Err(DeadLetterError::NotFound(id)),
        Some("parked") => {}
        Some(other) => return Err(DeadLetterError::NotParked(id, other.to_string())),
    }
    sqlx::query(
        "UPDATE dead_letters SET state = $2, resolved_at = now() WHERE id = $1 AND state = 'parked'",
    )
    .bind(id)
    .bind(state)
    .execute(pool)
    .await?;
    Ok(())
}

/// Dead letters by state and service, in the Prometheus text format.
pub async fn metrics(pool: &PgPool) -> sqlx::Result<String> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT state, service, count(*) AS n FROM dead_letters GROUP BY state, service
         ORDER BY state, service",
    )
    .fetch_all(pool)
    .await?;
    Ok(handoff_service::gauge_text(
        "handoff_dead_letters",
        "Messages parked because they could not be handled, by state.",
        rows.iter().map(|(state, service, n)| {
            (
                vec![("state", state.as_str()), ("service", service.as_str())],
                *n,
            )
        }),
    ))
}

//! Dead letters: messages parked because they can never be handled as they are. Operators
//! list them, replay them (after fixing what refused them) or drop them; `handoffctl
//! dead-letters` is the tool, and the router's `/metrics` counts them.

use async_nats::HeaderMap;
use handoff_bus::{Bus, now_ms};
use handoff_proto::admin::DeadLetter;
use sqlx::PgPool;

use crate::model::DeadLetterState;
use crate::store;

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

pub async fn list(pool: &PgPool, all: bool, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    let rows = store::dead_letters::list(pool, all, limit).await?;
    Ok(rows.into_iter().map(shown).collect())
}

pub async fn get(pool: &PgPool, id: i64) -> sqlx::Result<Option<DeadLetter>> {
    Ok(store::dead_letters::get(pool, id).await?.map(shown))
}

fn shown(r: store::dead_letters::Listed) -> DeadLetter {
    DeadLetter {
        id: r.id,
        parked_at: r
            .parked_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        service: r.service,
        subject: r.subject,
        member_id: r.member_id,
        event_id: r.event_id,
        kind: r.kind,
        reason: r.reason,
        size: i64::from(r.size),
        truncated: r.truncated,
        state: r.state.as_str().into(),
    }
}

pub async fn replay(pool: &PgPool, bus: &Bus, id: i64) -> Result<(), DeadLetterError> {
    let letter = store::dead_letters::for_replay(pool, id)
        .await?
        .ok_or(DeadLetterError::NotFound(id))?;
    if letter.state != DeadLetterState::Parked {
        return Err(DeadLetterError::NotParked(id, letter.state.as_str().into()));
    }
    if letter.truncated {
        return Err(DeadLetterError::Truncated(id));
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Msg-Id",
        format!("replay-{}-{}", letter.parked_id, now_ms()).as_str(),
    );
    bus.publish_all([(letter.subject, headers, letter.payload.into())])
        .await
        .map_err(|e| DeadLetterError::Bus(e.to_string()))?;
    resolve(pool, id, DeadLetterState::Replayed).await
}

pub async fn drop(pool: &PgPool, id: i64) -> Result<(), DeadLetterError> {
    resolve(pool, id, DeadLetterState::Dropped).await
}

async fn resolve(pool: &PgPool, id: i64, to: DeadLetterState) -> Result<(), DeadLetterError> {
    match store::dead_letters::state(pool, id).await? {
        None => return Err(DeadLetterError::NotFound(id)),
        Some(DeadLetterState::Parked) => {}
        Some(other) => return Err(DeadLetterError::NotParked(id, other.as_str().into())),
    }
    store::dead_letters::resolve(pool, id, to).await?;
    Ok(())
}

pub async fn metrics(pool: &PgPool) -> sqlx::Result<String> {
    let rows = store::dead_letters::counts(pool).await?;
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

//! Retention: what Handoff keeps grows with traffic, so the router prunes it by age in the
//! background, a bounded chunk per statement so no prune holds locks for long. One replica
//! prunes at a time (an advisory lock); the others skip that round.

use std::time::Duration;

use handoff_config::RetentionSettings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Advisory-lock key for "this replica is pruning".
const PRUNE_LOCK: i64 = 0x0048_4650_5255_4e45; // "HFPRUNE"

/// Rows deleted per statement.
const CHUNK: i64 = 5_000;

pub(crate) async fn run(pool: PgPool, settings: RetentionSettings, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(settings.prune_interval_secs.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match prune(&pool, &settings).await {
            Ok(pruned) if pruned.any() => tracing::info!(?pruned, "pruned by retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention prune failed; next round retries"),
        }
    }
}

/// Rows removed by one prune.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub processed_events: u64,
    pub message_steps: u64,
    pub messages: u64,
    pub conversations: u64,
    pub dead_letters: u64,
}

impl Pruned {
    fn any(&self) -> bool {
        *self != Self::default()
    }
}

/// Deletes what is past its retention: the inbox's processed event ids, transcript lines
/// and closed conversations, and dead letters already replayed or dropped. Parked dead
/// letters and open conversations are never pruned.
pub async fn prune(pool: &PgPool, settings: &RetentionSettings) -> sqlx::Result<Pruned> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(PRUNE_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Pruned::default());
    }
    let result = async {
        let days = |d: u32| f64::from(d) * 86_400.0;
        Ok(Pruned {
            processed_events: chunked(
                &mut conn,
                "DELETE FROM processed_events WHERE event_id IN (
                   SELECT event_id FROM processed_events
                   WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
                days(settings.processed_events_days),
            )
            .await?,
            // A message's trace lives as long as the inbox remembers the message.
            message_steps: chunked(
                &mut conn,
                "DELETE FROM message_steps WHERE id IN (
                   SELECT id FROM message_steps
                   WHERE at < now() - make_interval(secs => $1) LIMIT $2)",
                days(settings.processed_events_days),
            )
            .await?,
            messages: chunked(
                &mut conn,
                "DELETE FROM messages WHERE id IN (
                   SELECT m.id FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id
                   WHERE m.created_at < now() - make_interval(secs => $1)
                     AND NOT m.held AND (c.id IS NULL OR c.state = 'closed')
                   LIMIT $2)",
                days(settings.transcript_days),
            )
            .await?,
            conversations: chunked(
                &mut conn,
                "DELETE FROM conversations WHERE id IN (
                   SELECT c.id FROM conversations c
                   WHERE c.state = 'closed' AND c.closed_at < now() - make_interval(secs => $1)
                     AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id)
                   LIMIT $2)",
                days(settings.transcript_days),
            )
            .await?,
            dead_letters: chunked(
                &mut conn,
                "DELETE FROM dead_letters WHERE id IN (
                   SELECT id FROM dead_letters
                   WHERE state <> 'parked' AND resolved_at < now() - make_interval(secs => $1)
                   LIMIT $2)",
                days(settings.resolved_dead_letters_days),
            )
            .await?,
        })
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(PRUNE_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

async fn chunked(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    age_secs: f64,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(statement)
            .bind(age_secs)
            .bind(CHUNK)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        total += n;
        if n < CHUNK as u64 {
            return Ok(total);
        }
    }
}

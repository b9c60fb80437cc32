//! Retention: what Handoff keeps grows with traffic, so the router prunes it by age in the
//! background, a bounded chunk per statement so no prune holds locks for long. One replica
//! prunes at a time (an advisory lock); the others skip that round.

use std::time::Duration;

use handoff_config::RetentionSettings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store;

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

/// Runs a chunked delete until a chunk comes back short; the rows deleted in all.
macro_rules! chunked {
    ($delete:expr) => {{
        let mut total = 0;
        loop {
            let n = $delete.await?;
            total += n;
            if n < CHUNK as u64 {
                break total;
            }
        }
    }};
}

/// Deletes what is past its retention: the inbox's processed event ids, transcript lines
/// and closed conversations, and dead letters already replayed or dropped. Parked dead
/// letters and open conversations are never pruned.
pub async fn prune(pool: &PgPool, settings: &RetentionSettings) -> sqlx::Result<Pruned> {
    let mut conn = pool.acquire().await?;
    if !store::try_lock(&mut *conn, PRUNE_LOCK).await? {
        return Ok(Pruned::default());
    }
    let days = |d: u32| f64::from(d) * 86_400.0;
    let steps = days(settings.processed_events_days);
    let transcripts = days(settings.transcript_days);
    let resolved = days(settings.resolved_dead_letters_days);
    let result = async {
        Ok(Pruned {
            processed_events: chunked!(store::inbox::prune(&mut *conn, steps, CHUNK)),
            message_steps: chunked!(store::steps::prune(&mut *conn, steps, CHUNK)),
            messages: chunked!(store::messages::prune(&mut *conn, transcripts, CHUNK)),
            conversations: chunked!(store::conversations::prune(&mut *conn, transcripts, CHUNK)),
            dead_letters: chunked!(store::dead_letters::prune(&mut *conn, resolved, CHUNK)),
        })
    }
    .await;
    let _ = store::unlock(&mut *conn, PRUNE_LOCK).await;
    result
}

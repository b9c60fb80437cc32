//! `channels`: a mirror of the channels catalog (secrets are not stored), for joins and
//! for when each channel last changed.

use std::collections::HashMap;

use handoff_config::Channels;
use serde_json::Value;
use sqlx::PgPool;
use time::OffsetDateTime;

/// Mirrors the channels catalog: every channel is upserted (secrets are not stored), and
/// its `updated_at` moves only when something about it changed.
pub async fn sync(pool: &PgPool, channels: &Channels) -> sqlx::Result<()> {
    /// Mirrors run one at a time (an admin call and the catalog watcher, or two router
    /// replicas, may mirror at once); concurrent upserts of the same rows would deadlock.
    const SYNC_LOCK: i64 = 0x6368_616e_6e65_6c73;
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", SYNC_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    let mut sorted: Vec<_> = channels.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for c in sorted {
        let config = serde_json::json!({
            // As written: expanded `${ENV}` values are the deploy's secrets.
            "info": c.info_as_written,
            "bot": c.bot,
            "outlet": c.outlet,
            "handoff": {
                "keywords": c.handoff.keywords,
                "postbacks": c.handoff.postbacks,
                "pendingTimeoutSecs": c.handoff.pending_timeout_secs,
                "liveIdleTimeoutSecs": c.handoff.live_idle_timeout_secs,
            },
        });
        let role = c.role.as_str();
        sqlx::query!(
            "INSERT INTO channels (id, org, platform, role, config, enabled)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET org = excluded.org, platform = excluded.platform,
               role = excluded.role, config = excluded.config, enabled = excluded.enabled,
               updated_at = now()
             WHERE (channels.org, channels.platform, channels.role, channels.config,
                    channels.enabled)
                   IS DISTINCT FROM
                   (excluded.org, excluded.platform, excluded.role, excluded.config,
                    excluded.enabled)",
            c.id,
            c.org,
            c.platform.as_str(),
            role,
            config,
            channels.is_enabled(&c.id),
        )
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Each channel's stored settings and when they last changed, by id.
pub async fn stored(pool: &PgPool) -> sqlx::Result<HashMap<String, (Value, OffsetDateTime)>> {
    let rows = sqlx::query!("SELECT id, config, updated_at FROM channels")
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.id, (r.config, r.updated_at)))
        .collect())
}

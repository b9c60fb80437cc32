//! The sweeper: finds conversations past their state's timeout and publishes a
//! `ConversationTimeout` event into the member's partition, where it is applied in order
//! with the member's other events (and only if still overdue then). Its event id derives
//! from the conversation and the moment it went quiet, so replicas sweeping at once
//! produce one effect.

use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{derived_id, now_ms};
use handoff_proto::{Body, ConversationTimeout, Envelope};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::Engine;

pub(crate) async fn run(engine: Arc<Engine>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&engine).await {
            tracing::warn!(error = %format!("{e:#}"), "timeout sweep failed");
        }
    }
}

async fn sweep(engine: &Engine) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT c.id, c.member_id, c.state, m.channel_id,
                EXTRACT(EPOCH FROM now() - c.state_changed_at)::float8 AS in_state,
                EXTRACT(EPOCH FROM now() - c.last_activity_at)::float8 AS idle,
                (EXTRACT(EPOCH FROM c.last_activity_at) * 1000)::int8 AS quiet_since
         FROM conversations c JOIN members m ON m.id = c.member_id
         WHERE c.state IN ('pending', 'live')",
    )
    .fetch_all(&engine.pool)
    .await?;
    for row in rows {
        let channel_id: String = row.get("channel_id");
        let Some(inlet) = engine.catalog.load().channels.get(&channel_id).cloned() else {
            continue;
        };
        let state: String = row.get("state");
        let (elapsed, limit, reason) = if state == "pending" {
            (
                row.get::<f64, _>("in_state"),
                inlet.handoff.pending_timeout_secs,
                "pending_timeout",
            )
        } else {
            (
                row.get::<f64, _>("idle"),
                inlet.handoff.live_idle_timeout_secs,
                "live_idle_timeout",
            )
        };
        if elapsed < limit as f64 {
            continue;
        }
        let conv: Uuid = row.get("id");
        let member: Uuid = row.get("member_id");
        let quiet_since: i64 = row.get("quiet_since");
        let envelope = Envelope {
            event_id: derived_id(&format!("{conv}/{state}/{quiet_since}"), "timeout", 0),
            org: inlet.org.clone(),
            channel: channel_id,
            member_id: member.to_string(),
            conversation_id: conv.to_string(),
            accepted_at_ms: now_ms(),
            body: Some(Body::ConversationTimeout(ConversationTimeout {
                state,
                reason: reason.into(),
            })),
            ..Default::default()
        };
        engine.bus.publish_event(&envelope).await?;
    }
    Ok(())
}

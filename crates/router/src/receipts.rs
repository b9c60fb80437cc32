//! Collects the services' receipts (`handoff_proto::Receipt`) into `message_steps`, a
//! batch per 100 ms: the timeline `handoffctl trace` reads. Best effort by design: a
//! receipt lost to a restart thins a trace and loses no message.

use std::time::Duration;

use futures::StreamExt as _;
use handoff_bus::{Bus, storable};
use handoff_proto::{Message as _, Receipt, Receipts};
use sqlx::PgPool;

use crate::store;
use tokio_util::sync::CancellationToken;

const MAX_BATCH: usize = 1_000;

pub(crate) async fn collect(pool: PgPool, bus: Bus, stop: CancellationToken) -> anyhow::Result<()> {
    let subject = handoff_bus::receipts_subject(&bus.settings().prefix);
    // One router replica takes each batch.
    let mut receipts = bus
        .client()
        .queue_subscribe(subject, "router".into())
        .await?;
    let mut batch: Vec<Receipt> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            message = receipts.next() => {
                let Some(message) = message else { break };
                match Receipts::decode(message.payload) {
                    Ok(receipts) => batch.extend(receipts.receipts),
                    Err(e) => tracing::debug!(error = %e, "unreadable receipts were ignored"),
                }
                if batch.len() >= MAX_BATCH {
                    store(&pool, std::mem::take(&mut batch)).await;
                }
            }
            _ = tick.tick() => {
                if !batch.is_empty() {
                    store(&pool, std::mem::take(&mut batch)).await;
                }
            }
        }
    }
    if !batch.is_empty() {
        store(&pool, batch).await;
    }
    Ok(())
}

async fn store(pool: &PgPool, batch: Vec<Receipt>) {
    let column =
        |f: fn(&Receipt) -> &str| -> Vec<String> { batch.iter().map(|r| storable(f(r))).collect() };
    let at = |ms: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let steps = store::steps::NewSteps {
        event_ids: column(|r| &r.event_id),
        causation_ids: column(|r| &r.causation_id),
        member_ids: column(|r| &r.member_id),
        kinds: column(|r| &r.kind),
        services: column(|r| &r.service),
        channels: column(|r| &r.channel),
        outcomes: column(|r| &r.outcome),
        details: column(|r| &r.detail),
        attempts: batch.iter().map(|r| r.attempt as i32).collect(),
        accepted_at: batch.iter().map(|r| at(r.accepted_at_ms)).collect(),
        at: batch.iter().map(|r| at(r.at_ms)).collect(),
    };
    let inserted = store::steps::insert(pool, &steps).await;
    if let Err(e) = inserted {
        tracing::warn!(error = %e, receipts = batch.len(), "receipts not stored; those traces will miss steps");
    }
}

//! What bounds the hub on this machine, measured in the same run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

use crate::load::{Percentiles, percentiles};

#[derive(Debug, Serialize)]
pub struct PostgresBaseline {
    pub connections: u32,
    pub transactions_per_sec: f64,
}

/// The router's write set for one customer message — the inbox row, the member upsert and
/// the transcript row — one transaction each, from 16 connections at once.
pub async fn postgres(db_url: &str, run: Duration) -> anyhow::Result<PostgresBaseline> {
    const CONNECTIONS: u32 = 16;
    let pool = PgPoolOptions::new()
        .max_connections(CONNECTIONS)
        .connect(db_url)
        .await?;
    let content = serde_json::json!({"type": "TEXT", "text": crate::load::text("baseline", 0)});
    let deadline = Instant::now() + run;
    let tasks = (0..CONNECTIONS).map(|c| {
        let pool = pool.clone();
        let content = content.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let member = uuid::Uuid::new_v5(
                    &uuid::Uuid::NAMESPACE_OID,
                    format!("baseline-{c}-{}", n % 100).as_bytes(),
                );
                let event = uuid::Uuid::now_v7();
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO processed_events (event_id) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(event)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO members (id, channel_id, external_id, profile) VALUES ($1, 'web', $2, '{}')
                     ON CONFLICT (id) DO UPDATE SET updated_at = now()",
                )
                .bind(member)
                .bind(member.to_string())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO messages (event_id, member_id, channel_id, author, content)
                     VALUES ($1, $2, 'web', 'customer', $3)",
                )
                .bind(event)
                .bind(member)
                .bind(&content)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    });
    let started = Instant::now();
    let mut total = 0;
    for t in futures::future::join_all(tasks).await {
        total += t??;
    }
    Ok(PostgresBaseline {
        connections: CONNECTIONS,
        transactions_per_sec: total as f64 / started.elapsed().as_secs_f64(),
    })
}

#[derive(Debug, Serialize)]
pub struct JetStreamBaseline {
    pub publishes_per_sec: f64,
    pub latency: Percentiles,
}

/// One publisher awaiting each acknowledgement (file storage, 512-byte payloads): what
/// the Webhook API pays per accepted message.
pub async fn jetstream(
    nats_url: &str,
    stream: &str,
    run: Duration,
) -> anyhow::Result<JetStreamBaseline> {
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let subject = format!("{}.baseline", stream.to_lowercase());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: stream.to_string(),
        subjects: vec![subject.clone()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = Bytes::from(vec![b'x'; crate::load::MESSAGE_BYTES]);
    let mut samples = Vec::new();
    let started = Instant::now();
    while started.elapsed() < run {
        let t = Instant::now();
        js.publish(subject.clone(), payload.clone()).await?.await?;
        samples.push(t.elapsed());
    }
    let rate = samples.len() as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(stream).await?;
    Ok(JetStreamBaseline {
        publishes_per_sec: rate,
        latency: percentiles(&mut samples),
    })
}

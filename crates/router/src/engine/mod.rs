//! Applies events, batched across members, each in the batch's transaction: loads what
//! the state machine (`machine`) needs to know of the member, lets it decide, applies its
//! steps, and writes the commands it queued to the outbox, published after the commit.
//! Every transition is a compare-and-set on the conversation's state, so a duplicated or
//! late event cannot apply twice.

mod batch;
mod commands;
mod decode;
mod held;
mod outbox;
mod steps;
mod work;

use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler, Parking, Service};
use handoff_platforms::Catalog;
use handoff_proto::Envelope;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::store;
use batch::Job;
pub(crate) use commands::history_token;
pub(crate) use held::TURN_DUE;

/// A failure retrying cannot cure (the event refers to something that does not exist, or
/// is malformed): the event is parked instead of retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Permanent(pub String);

fn permanent(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Permanent(message.into()))
}

/// Whether retrying `e` can ever help. Postgres refusing the data itself (SQLSTATE classes
/// 22 data exception, 23 integrity violation, 54 program limit) is permanent; so is our
/// own `Permanent`. Everything else (connections, timeouts, NATS) is transient.
fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if cause.downcast_ref::<Permanent>().is_some() {
            return true;
        }
        match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| ["22", "23", "54"].iter().any(|c| code.starts_with(c))),
            _ => false,
        }
    })
}

pub(crate) struct Engine {
    pub pool: PgPool,
    pub bus: Bus,
    pub catalog: Catalog,
    public_url: String,
    jobs: mpsc::UnboundedSender<Job>,
    queue: Mutex<mpsc::UnboundedReceiver<Job>>,
    /// Outbox rows JetStream has, waiting for the next clean-up.
    published: std::sync::Mutex<Vec<i64>>,
    /// When an event was last handed to the batches, and when one last got an outcome
    /// (applied or parked): readiness says when events are tried and none gets through.
    last_attempt_ms: std::sync::atomic::AtomicI64,
    last_progress_ms: std::sync::atomic::AtomicI64,
    stalled_after_ms: i64,
}

impl Engine {
    pub fn new(
        pool: PgPool,
        bus: Bus,
        catalog: Catalog,
        public_url: String,
        stalled_after: Duration,
    ) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        Self {
            pool,
            bus,
            catalog,
            public_url,
            jobs,
            queue: Mutex::new(queue),
            published: std::sync::Mutex::new(Vec::new()),
            last_attempt_ms: std::sync::atomic::AtomicI64::new(0),
            last_progress_ms: std::sync::atomic::AtomicI64::new(handoff_bus::now_ms()),
            stalled_after_ms: i64::try_from(stalled_after.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// `Err` while events are being tried and none has been applied (or parked) for the
    /// stall time: every batch failing — a lock held elsewhere, a database refusing
    /// writes. It clears with the next event that gets through, or a stall time after the
    /// last try (its partitions moved on).
    pub fn progressing(&self) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = handoff_bus::now_ms();
        let progress = self.last_progress_ms.load(Relaxed);
        let attempt = self.last_attempt_ms.load(Relaxed);
        let trying = attempt > progress && now - attempt <= self.stalled_after_ms;
        if trying && now - progress > self.stalled_after_ms {
            return Err(format!(
                "events are being tried and none has been applied for {} s",
                (now - progress) / 1000
            ));
        }
        Ok(())
    }

    /// What the side jobs need of the engine's parts.
    pub fn parts(&self) -> crate::Parts {
        crate::Parts {
            pool: self.pool.clone(),
            bus: self.bus.clone(),
            catalog: self.catalog.clone(),
        }
    }

    /// The service that serves `channel`'s platform. A channel no longer configured parks
    /// the event, replayable once it is back.
    fn service_of(&self, channel: &str) -> anyhow::Result<Service> {
        self.catalog
            .load()
            .platforms
            .service_of(channel)
            .ok_or_else(|| permanent(format!("channel `{channel}` is not configured")))
    }
}

fn retry(e: &anyhow::Error) -> Handled {
    Handled::Retry {
        after: Duration::from_millis(500),
        reason: format!("{e:#}"),
    }
}

impl Handler for Engine {
    async fn park(&self, parking: &Parking) -> Option<anyhow::Result<()>> {
        let stored = async {
            store::dead_letters::insert(&self.pool, parking).await?;
            Ok(())
        };
        Some(stored.await)
    }

    async fn partition_started(&self, partition: u16) {
        if let Err(e) = self.flush_outbox(outbox::Scope::Partition(partition)).await {
            tracing::warn!(partition, error = %e, "outbox not flushed at start; will retry with the next event");
        }
    }

    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            envelope,
            span: tracing::Span::current(),
            reply,
        };
        use std::sync::atomic::Ordering::Relaxed;
        self.last_attempt_ms.store(handoff_bus::now_ms(), Relaxed);
        if self.jobs.send(job).is_err() {
            return retry(&anyhow::anyhow!("the router is shutting down"));
        }
        let handled = outcome
            .await
            .unwrap_or_else(|_| retry(&anyhow::anyhow!("the batch was abandoned")));
        if !matches!(handled, Handled::Retry { .. }) {
            self.last_progress_ms.store(handoff_bus::now_ms(), Relaxed);
        }
        handled
    }
}

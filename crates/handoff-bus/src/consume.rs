use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use futures::StreamExt as _;
use handoff_proto::{Envelope, Message as _};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{Bus, propagation};

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Handled {
    /// The effect is durable: acknowledge.
    Done,
    /// A transient failure: redeliver after the delay. Later messages of the partition wait,
    /// which is what keeps each member's messages in order.
    Retry { after: Duration, reason: String },
}

/// Handles one envelope of one partition. Called for one message at a time per partition.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, envelope: Envelope, partition: u16) -> impl Future<Output = Handled> + Send;

    /// Called once per partition before its consumer starts (e.g. to flush an outbox).
    fn partition_started(&self, _partition: u16) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Runs one ordered durable consumer per partition of `<prefix>.<area>.p<N>.>` until
/// `shutdown` is cancelled; the message in hand is finished before returning.
///
/// `area` is `events` (router) or `deliver.<target>` (gateways); `name` is the durable
/// consumer's base name, shared by all replicas of the service.
pub async fn run_consumers<H: Handler>(
    bus: Bus,
    area: String,
    name: String,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stream = bus.jetstream().get_stream(bus.stream_name()).await?;
    let mut tasks = JoinSet::new();
    for p in 0..bus.settings().partitions {
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("{name}-p{p}")),
                filter_subject: format!("{}.{area}.p{p}.>", bus.settings().prefix),
                ack_policy: AckPolicy::Explicit,
                ack_wait: bus.settings().ack_wait,
                // One in flight per partition: strict order across replicas.
                max_ack_pending: 1,
                max_deliver: -1,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let ack_wait = bus.settings().ack_wait;
        tasks.spawn(async move {
            handler.partition_started(p).await;
            run_partition(consumer, ack_wait, p, handler, shutdown).await
        });
    }
    while let Some(res) = tasks.join_next().await {
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "consumer stopped"),
            Err(e) => tracing::error!(error = %e, "consumer task failed"),
        }
    }
    Ok(())
}

async fn run_partition<H: Handler>(
    consumer: consumer::PullConsumer,
    ack_wait: Duration,
    partition: u16,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let mut messages = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = consumer.messages() => match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, partition, "cannot pull; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, partition, "pull error");
                    continue;
                }
                // The pull stream ended (e.g. reconnect): open a new one.
                None => break,
            };
            handle_one(&message, partition, handler.as_ref(), ack_wait).await;
        }
    }
}

async fn handle_one<H: Handler>(
    message: &async_nats::jetstream::Message,
    partition: u16,
    handler: &H,
    ack_wait: Duration,
) {
    let envelope = match Envelope::decode(message.payload.as_ref()) {
        Ok(e) => e,
        Err(e) => {
            // Not ours or corrupt: retrying cannot help, and it would block the partition.
            tracing::error!(subject = %message.subject, error = %e, "undecodable message dropped");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::info_span!(
        "handle",
        kind = envelope.kind(),
        event_id = %envelope.event_id,
        member_id = %envelope.member_id,
        partition,
    );
    propagation::extract_into(&span, message.headers.as_ref());
    // Long handlers (an endpoint being retried) tell JetStream they are still working, so
    // the message is not redelivered to another replica meanwhile.
    let work = handler.handle(envelope, partition).instrument(span);
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    match outcome {
        Handled::Done => {
            // Confirmed ack: once this returns, the message will not be redelivered.
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered");
            }
        }
        Handled::Retry { after, reason } => {
            tracing::warn!(%reason, delay_ms = after.as_millis() as u64, "will retry");
            let _ = message.ack_with(AckKind::Nak(Some(after))).await;
        }
    }
}

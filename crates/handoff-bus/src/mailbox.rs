//! Mailboxes: what the hub has sent each web chat visitor, kept for a week on one JetStream
//! subject per visitor (`<prefix>.mailbox.<channel>.<visitor>`).
//!
//! Where a visitor's messages wait between connections is JetStream, not a gateway: any
//! inlet-gateway replica can serve any visitor, and a browser that comes back (a reload, a
//! dropped network, another replica after a restart) reads on from the last sequence it
//! saw. Each entry is published under the id of what caused it, so a delivery redone after
//! a crash is stored once.

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::stream;
use bytes::Bytes;
use futures::{Stream, StreamExt as _};

use crate::{Bus, PublishError, headers};

/// How long a visitor's messages are kept.
pub const MAILBOX_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// At most this many messages per visitor (the oldest go first).
const MAX_PER_VISITOR: i64 = 2_000;

#[derive(Clone)]
pub struct Mailbox {
    bus: Bus,
    stream: stream::Stream,
}

impl Mailbox {
    /// Creates (or updates) the mailbox stream; every inlet-gateway replica may call it.
    pub async fn open(bus: &Bus) -> anyhow::Result<Self> {
        let prefix = &bus.settings.prefix;
        let name = mailbox_stream(prefix);
        bus.jetstream()
            .create_or_update_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{prefix}.mailbox.>")],
                storage: stream::StorageType::File,
                max_age: MAILBOX_MAX_AGE,
                max_messages_per_subject: MAX_PER_VISITOR,
                // Long enough to cover a delivery redone after a crash or a retry storm.
                duplicate_window: Duration::from_secs(3600),
                num_replicas: bus.settings.replicas,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await?;
        let stream = bus.jetstream().get_stream(name).await?;
        Ok(Self {
            bus: bus.clone(),
            stream,
        })
    }

    fn subject(&self, channel: &str, visitor: &str) -> String {
        format!("{}.mailbox.{channel}.{visitor}", self.bus.settings.prefix)
    }

    /// Stores `entry` for the visitor once per `id`.
    pub async fn post(
        &self,
        channel: &str,
        visitor: &str,
        id: &str,
        entry: Bytes,
    ) -> Result<(), PublishError> {
        self.bus
            .publish_all([(self.subject(channel, visitor), headers(id), entry)])
            .await
    }

    /// The visitor's messages after stream sequence `after` (0: all kept), then each new
    /// one as it is posted, as `(sequence, entry)`. The stream ends when the connection to
    /// NATS cannot be restored by the client.
    pub async fn read(
        &self,
        channel: &str,
        visitor: &str,
        after: u64,
    ) -> anyhow::Result<impl Stream<Item = anyhow::Result<(u64, Bytes)>> + use<>> {
        let deliver_policy = if after == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            }
        };
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: self.subject(channel, visitor),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        Ok(messages.map(|m| {
            let m = m?;
            let seq = m
                .info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence;
            Ok((seq, m.payload.clone()))
        }))
    }
}

pub fn mailbox_stream(prefix: &str) -> String {
    format!("{}_MAILBOX", prefix.to_uppercase())
}

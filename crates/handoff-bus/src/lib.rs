//! Handoff's use of NATS JetStream: two work-queue streams, subjects partitioned by member,
//! publishing that waits for the stream's acknowledgement, and ordered per-partition
//! consumers that ack only after the handler's effect is durable.
//!
//! Subjects (`P` = `hash(member) % partitions`):
//! - `<prefix>.events.p<P>.<kind>` — everything the router consumes, in stream `<PREFIX>`;
//! - `<prefix>.deliver.<service>.p<P>.<kind>` — commands for the service that serves the
//!   destination channel's platform (`inlet-gateway`, `outlet-gateway`, `zendesk-agent`),
//!   in stream `<PREFIX>_OUT`.
//!
//! What comes in and what goes out are kept apart so that a backlog of one never stops
//! the other: the router acknowledges an event only once its commands are stored, and
//! with one stream a full backlog of events left no room for them (nothing drained).
//! Inside the events stream a share is kept for the hub's own results (see
//! `accept_inbound_once`).
//!
//! A partition is the unit of *ownership*, not of concurrency: one replica of a service owns
//! a partition at a time (a lease in a KV bucket), and inside the owner every member has its
//! own lane, so a member's messages are handled strictly in stream order while any number of
//! members are in flight (see `consume` and `lease`).

mod consume;
mod lease;
pub mod mailbox;
mod propagation;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use handoff_proto::{Body, Envelope, Message as _};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

pub use consume::{Handled, Handler, Parking, run_consumers};
pub use lease::NamedLease;
pub use propagation::trace_headers;

/// The service a command is for: the one serving the destination channel's platform
/// (`handoff_platforms` decides which). Each service consumes `deliver.<service>.>` and
/// nothing else, so a new platform served by a new service needs no new routing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// Custom-platform inlets: the Send API to customers.
    InletGateway,
    /// Custom-platform outlets (Livechat, Relay, Send APIs) and bots.
    OutletGateway,
    /// Zendesk Chat: visitors' chats, served as an agent.
    ZendeskAgent,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::InletGateway => "inlet-gateway",
            Service::OutletGateway => "outlet-gateway",
            Service::ZendeskAgent => "zendesk-agent",
        }
    }

    /// The consumer area of this service's commands (see `run_consumers`).
    pub fn deliver_area(self) -> String {
        format!("deliver.{}", self.as_str())
    }
}

/// Why a publish did not happen. `Unavailable` and `Full` are what an HTTP edge turns into
/// 503 (`Full` with `Retry-After`).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("NATS JetStream is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "the hub is working through a backlog ({percent}% of its events stream is in use); try again shortly"
    )]
    Full { percent: u64 },
    #[error("event has no member id; it cannot be partitioned")]
    NoMember,
    /// Larger than a bus message: it can never be stored.
    #[error("the message ({size} bytes) is larger than the bus takes ({limit} bytes)")]
    TooLarge { size: usize, limit: usize },
}

/// The acknowledgement, if it says the message is stored.
///
/// A clustered stream (nats-server before 2.10.26/2.11) notes a message id as "seen"
/// before the proposal carrying it is committed, with sequence 0; if a leader change drops
/// that proposal, every retry under the same id is answered `duplicate` with sequence 0
/// although nothing was stored, until the duplicate window passes (nats-server #6415,
/// #6486). Taking that answer as stored lost an accepted message in the fault run (all NATS
/// nodes restarted). A duplicate is therefore trusted only with the sequence it was stored
/// under; sequence 0 is "not yet", and the caller retries (a webhook gets 503), which ends
/// in a real duplicate once the proposal commits, or in a fresh store once the window
/// has passed.
fn stored(
    ack: jetstream::publish::PublishAck,
) -> Result<jetstream::publish::PublishAck, PublishError> {
    if ack.duplicate && ack.sequence == 0 {
        return Err(PublishError::Unavailable(
            "JetStream has seen this message id but not confirmed storing it; try again".into(),
        ));
    }
    Ok(ack)
}

/// Room kept in a bus message for its headers (dedup id, trace context) beside the payload.
const HEADERS_ROOM: usize = 1024;

#[derive(Debug, Clone)]
pub struct BusSettings {
    pub url: String,
    pub prefix: String,
    pub partitions: u16,
    pub duplicate_window: Duration,
    pub ack_wait: Duration,
    pub replicas: usize,
    pub lease_ttl: Duration,
    pub max_ack_pending: i64,
    pub max_in_flight: usize,
    pub stream_max_bytes: i64,
    pub commands_max_bytes: i64,
    pub inbound_headroom_percent: u8,
    /// See `handoff_config::NatsSettings::hold_after_secs` (`None`: never).
    pub hold_after: Option<Duration>,
    pub max_held_bytes: usize,
}

/// A connection to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    settings: BusSettings,
    /// What keeps this process's consumers from consuming now, by what is affected.
    problems: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
    /// Receipts waiting for the next batch (see `receipt`).
    receipts: tokio::sync::mpsc::UnboundedSender<handoff_proto::Receipt>,
    /// Bytes in the events stream, as last read (see `watch_fill`).
    events_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Started by the first message an edge accepts: only processes with an edge read it.
    watching_fill: std::sync::Arc<tokio::sync::OnceCell<()>>,
    /// Results of commands that could not be published, by the command's event id: a
    /// retried command publishes its kept result instead of doing its work again (calling
    /// a bot twice).
    kept: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (Envelope, Handled)>>>,
}

/// What JetStream stores beside a message's payload (subject, headers, sequence), roughly.
const MESSAGE_OVERHEAD: u64 = 200;

/// Results kept at most (each is one bus message); past it a command is simply redone.
const MAX_KEPT_RESULTS: usize = 10_000;

impl Bus {
    /// Connects and creates (or updates) the stream; idempotent, so every replica of every
    /// service may call it at start.
    pub async fn connect(settings: BusSettings) -> anyhow::Result<Self> {
        // A cluster's nodes may be listed, comma-separated: the client then fails over
        // between them.
        let servers = settings
            .url
            .split(',')
            .map(|url| url.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("handoff-{}", settings.prefix))
            .retry_on_initial_connect()
            .connect(servers)
            .await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(5));
        let (receipts, queued) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(send_receipts(
            client.clone(),
            receipts_subject(&settings.prefix),
            queued,
        ));
        let bus = Self {
            client,
            js,
            settings,
            problems: Default::default(),
            receipts,
            events_bytes: Default::default(),
            watching_fill: Default::default(),
            kept: Default::default(),
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    pub fn settings(&self) -> &BusSettings {
        &self.settings
    }

    /// The events stream: what the router consumes.
    pub fn stream_name(&self) -> String {
        self.settings.prefix.to_uppercase()
    }

    /// The command stream: what the router sends the other services.
    pub fn commands_stream_name(&self) -> String {
        commands_stream(&self.settings.prefix)
    }

    /// The hold stream: commands of members whose deliveries keep failing, out of their
    /// partition's acknowledgement window (see `consume`).
    pub fn hold_stream_name(&self) -> String {
        hold_stream(&self.settings.prefix)
    }

    /// The stream holding consumer area `area` (`events`, `deliver.<service>`).
    pub fn stream_of_area(&self, area: &str) -> String {
        if area.starts_with("deliver") {
            self.commands_stream_name()
        } else {
            self.stream_name()
        }
    }

    /// Bytes in use and the limit of each stream (`events`, `commands`), for the metrics.
    pub async fn stream_usage(&self) -> anyhow::Result<Vec<(&'static str, u64, i64)>> {
        let mut usage = Vec::new();
        for (name, stream, max) in [
            ("events", self.stream_name(), self.settings.stream_max_bytes),
            (
                "commands",
                self.commands_stream_name(),
                self.settings.commands_max_bytes,
            ),
        ] {
            let stream = self.js.get_stream(stream).await?;
            usage.push((name, stream.cached_info().state.bytes, max));
        }
        Ok(usage)
    }

    /// Messages stored and not yet acknowledged, by area (`events`, `deliver.<target>`):
    /// the stream is a work queue, so this is how far its consumers are behind.
    pub async fn pending_by_area(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        use futures::TryStreamExt as _;
        let mut by_area = std::collections::BTreeMap::new();
        // Every area is reported, an empty one as 0: a gap in a graph reads as "unknown".
        by_area.insert("events".to_string(), 0);
        for service in [
            Service::InletGateway,
            Service::OutletGateway,
            Service::ZendeskAgent,
        ] {
            by_area.insert(service.deliver_area(), 0);
        }
        let prefix = format!("{}.", self.settings.prefix);
        for name in [self.stream_name(), self.commands_stream_name()] {
            let stream = self.js.get_stream_no_info(name).await?;
            let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await?;
            while let Some((subject, count)) = subjects.try_next().await? {
                let mut parts = subject.strip_prefix(&prefix).unwrap_or(&subject).split('.');
                let area = match (parts.next(), parts.next()) {
                    (Some("deliver"), Some(target)) => format!("deliver.{target}"),
                    (Some(area), _) => area.to_string(),
                    _ => continue,
                };
                *by_area.entry(area).or_insert(0) += count as u64;
            }
        }
        Ok(by_area)
    }

    /// Queues a receipt for the next batch (never waits).
    pub fn receipt(&self, receipt: handoff_proto::Receipt) {
        let _ = self.receipts.send(receipt);
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn ensure_stream(&self) -> anyhow::Result<()> {
        let prefix = &self.settings.prefix;
        // The events stream first: an older deployment's single stream held `<prefix>.>`,
        // and the command stream's subjects may not overlap it.
        for (name, subjects, max_bytes) in [
            (
                self.stream_name(),
                format!("{prefix}.events.>"),
                self.settings.stream_max_bytes,
            ),
            (
                self.commands_stream_name(),
                format!("{prefix}.deliver.>"),
                self.settings.commands_max_bytes,
            ),
        ] {
            self.js
                .create_or_update_stream(stream::Config {
                    name,
                    subjects: vec![subjects],
                    // Each subject has exactly one consumer, and a message is done once
                    // handled.
                    retention: stream::RetentionPolicy::WorkQueue,
                    storage: stream::StorageType::File,
                    duplicate_window: self.settings.duplicate_window,
                    num_replicas: self.settings.replicas,
                    // Full means "refuse new", never "drop old": nothing accepted is lost.
                    max_bytes,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await?;
        }
        // Not a work queue: a held member's messages are read in order by subject (direct
        // get) and deleted one by one once delivered.
        self.js
            .create_or_update_stream(stream::Config {
                name: self.hold_stream_name(),
                subjects: vec![format!("{prefix}.hold.>")],
                storage: stream::StorageType::File,
                duplicate_window: self.settings.duplicate_window,
                num_replicas: self.settings.replicas,
                max_bytes: self.settings.commands_max_bytes,
                discard: stream::DiscardPolicy::New,
                allow_direct: true,
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    /// How full the events stream is, in percent of its limit (0 without one).
    fn events_percent(&self) -> u64 {
        let max = self.settings.stream_max_bytes;
        if max <= 0 {
            return 0;
        }
        let used = self.events_bytes.load(std::sync::atomic::Ordering::Relaxed);
        used.saturating_mul(100) / max as u64
    }

    /// Whether the server connection is up (readiness).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Readiness as far as the bus is concerned: connected, and every consumer this process
    /// should run is consuming.
    pub fn ready(&self) -> Result<(), String> {
        if !self.is_connected() {
            return Err("NATS is not connected".into());
        }
        let problems = self.problems.lock().expect("problems lock");
        match problems.iter().next() {
            None => Ok(()),
            Some((what, why)) => Err(format!("{what} is not consuming: {why}")),
        }
    }

    pub fn report(&self, what: &str, problem: Option<String>) {
        let mut problems = self.problems.lock().expect("problems lock");
        match problem {
            Some(why) => problems.insert(what.to_string(), why),
            None => problems.remove(what),
        };
    }

    pub fn partition_of(&self, member_id: &str) -> u16 {
        partition_of(member_id, self.settings.partitions)
    }

    pub fn event_subject(&self, envelope: &Envelope) -> Result<String, PublishError> {
        let p = self.partition_for(envelope)?;
        Ok(format!(
            "{}.events.p{p}.{}",
            self.settings.prefix,
            envelope.kind()
        ))
    }

    pub fn command_subject(
        &self,
        service: Service,
        envelope: &Envelope,
    ) -> Result<String, PublishError> {
        let p = self.partition_for(envelope)?;
        Ok(format!(
            "{}.deliver.{}.p{p}.{}",
            self.settings.prefix,
            service.as_str(),
            envelope.kind()
        ))
    }

    fn partition_for(&self, envelope: &Envelope) -> Result<u16, PublishError> {
        if envelope.member_id.is_empty() {
            return Err(PublishError::NoMember);
        }
        Ok(self.partition_of(&envelope.member_id))
    }

    /// Publishes the event a command resulted in (a bot's answer, a delivery that failed
    /// for good), then settles the command as `then`. The event's id derives from the
    /// command's and `purpose`, so a redelivered command publishes the same event, which
    /// JetStream and the router's inbox drop; a failed publish retries the command.
    pub async fn publish_then(
        &self,
        cause: &Envelope,
        purpose: &str,
        channel: &str,
        body: Body,
        then: Handled,
    ) -> Handled {
        let envelope = Envelope {
            event_id: derived_id(&cause.event_id, purpose, 0),
            org: cause.org.clone(),
            channel: channel.to_string(),
            member_id: cause.member_id.clone(),
            conversation_id: cause.conversation_id.clone(),
            causation_id: cause.event_id.clone(),
            occurred_at_ms: cause.occurred_at_ms,
            accepted_at_ms: now_ms(),
            origin_accepted_at_ms: origin_of(cause),
            body: Some(body),
            ..Default::default()
        };
        match self.publish_event(&envelope).await {
            Ok(()) => then,
            // Never publishable: the command is set aside, not retried for ever.
            Err(e @ PublishError::TooLarge { .. }) => Handled::Park {
                reason: format!("its `{purpose}` result: {e}"),
            },
            Err(e) => {
                let mut kept = self.kept.lock().expect("kept results lock");
                if kept.len() < MAX_KEPT_RESULTS {
                    kept.insert(cause.event_id.clone(), (envelope, then));
                }
                Handled::Retry {
                    after: Duration::from_secs(1),
                    reason: e.to_string(),
                }
            }
        }
    }

    /// For a command being handled again: publishes the result its last attempt made but
    /// could not publish, and settles the command as that attempt decided (`None`: no
    /// result kept, do the work).
    pub(crate) async fn publish_kept(&self, cause_id: &str) -> Option<Handled> {
        let (envelope, then) = self
            .kept
            .lock()
            .expect("kept results lock")
            .remove(cause_id)?;
        Some(match self.publish_event(&envelope).await {
            Ok(()) => then,
            Err(e) => {
                self.kept
                    .lock()
                    .expect("kept results lock")
                    .insert(cause_id.to_string(), (envelope, then));
                Handled::Retry {
                    after: Duration::from_secs(1),
                    reason: e.to_string(),
                }
            }
        })
    }

    /// `publish_event_once` for a new message from a platform (a customer's, an agent's):
    /// refused with `Full` once the events stream is past its share for new messages, so
    /// the rest stays for what the hub must publish to work through the backlog.
    pub async fn accept_inbound_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> Result<bool, PublishError> {
        if self.settings.stream_max_bytes > 0 {
            // The first decision already rests on a reading; the watcher keeps it fresh.
            self.watching_fill
                .get_or_init(|| async {
                    if let Ok(stream) = self.js.get_stream(self.stream_name()).await {
                        self.events_bytes.store(
                            stream.cached_info().state.bytes,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    tokio::spawn(watch_fill(
                        self.js.clone(),
                        self.stream_name(),
                        std::sync::Arc::downgrade(&self.events_bytes),
                    ));
                })
                .await;
        }
        let percent = self.events_percent();
        if percent >= 100 - u64::from(self.settings.inbound_headroom_percent.min(90)) {
            return Err(PublishError::Full { percent });
        }
        let duplicate = self.publish_event_once(envelope, dedup_id).await?;
        if !duplicate {
            // Counted here until the next reading: a burst between two readings must not
            // run past the share unseen. (The stream's own limit remains the hard stop.)
            self.events_bytes.fetch_add(
                envelope.encoded_len() as u64 + MESSAGE_OVERHEAD,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        Ok(duplicate)
    }

    /// Publishes an event for the router and waits until JetStream has stored it.
    pub async fn publish_event(&self, envelope: &Envelope) -> Result<(), PublishError> {
        let subject = self.event_subject(envelope)?;
        let payload = self.encode_fitting(envelope)?;
        self.publish_raw(subject, &envelope.event_id, payload.into())
            .await
    }

    /// Publishes an event under a JetStream dedup id other than its event id, and says
    /// whether the stream already had that id within its duplicate window (then nothing
    /// new was stored). For messages known only by their body, whose dedup must expire.
    pub async fn publish_event_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> Result<bool, PublishError> {
        use tracing::Instrument as _;
        // Where a platform's message enters the hub: the trace's first span carries the
        // platform's own ids (its message id; the customer's external id, for a Zendesk
        // chat its channel id) and Handoff's, never text or tokens.
        let external_id = match &envelope.body {
            Some(Body::InboundMessage(m)) => m.external_id.as_str(),
            _ => "",
        };
        let span = tracing::info_span!(
            "accept",
            event_id = %envelope.event_id,
            member_id = %envelope.member_id,
            channel = %envelope.channel,
            kind = envelope.kind(),
            source_message_id = %envelope.source_message_id,
            external_id,
        );
        async {
            let subject = self.event_subject(envelope)?;
            let payload = self.encode_fitting(envelope)?;
            let ack = self
                .js
                .publish_with_headers(subject, headers(dedup_id), payload.into())
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?;
            Ok(stored(ack)?.duplicate)
        }
        .instrument(span)
        .await
    }

    /// Publishes already-encoded bytes under `id`, with the current trace context, and
    /// waits for the stream's acknowledgement (a duplicate id is acknowledged too).
    pub async fn publish_raw(
        &self,
        subject: String,
        id: &str,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        self.publish_all([(subject, headers(id), payload)]).await
    }

    /// Publishes several messages pipelined: all are sent in order on the one connection,
    /// then every acknowledgement is awaited, so N messages cost about one round trip.
    pub async fn publish_all(
        &self,
        messages: impl IntoIterator<Item = (String, HeaderMap, Bytes)>,
    ) -> Result<(), PublishError> {
        let mut acks = Vec::new();
        for (subject, headers, payload) in messages {
            let ack = self
                .js
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| PublishError::Unavailable(e.to_string()))?;
            acks.push(ack);
        }
        for ack in acks {
            stored(
                ack.await
                    .map_err(|e| PublishError::Unavailable(e.to_string()))?,
            )?;
        }
        Ok(())
    }

    /// The largest message the server accepts.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// `envelope`'s bytes, if they fit in a bus message with its headers.
    pub fn encode_fitting(&self, envelope: &Envelope) -> Result<Vec<u8>, PublishError> {
        let payload = envelope.encode_to_vec();
        let limit = self.max_payload();
        if payload.len() + HEADERS_ROOM > limit {
            return Err(PublishError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        Ok(payload)
    }

    /// Sends a parked message to the router, which keeps it in its dead-letter table.
    pub async fn publish_parked(&self, parking: &Parking) -> Result<(), PublishError> {
        self.publish_event(&parking.to_event()).await
    }

    /// Name of the KV bucket holding partition leases and replica heartbeats.
    pub fn lease_bucket(&self) -> String {
        lease_bucket(&self.settings.prefix)
    }

    /// Name of the KV bucket holding the channels catalog (`handoff_platforms::catalog_store`).
    pub fn catalog_bucket(&self) -> String {
        format!("{}_catalog", self.settings.prefix)
    }

    /// A KV bucket keeping the last value of each key, entries living `max_age` (zero: for
    /// good), created if missing.
    pub async fn open_kv(
        &self,
        bucket: &str,
        max_age: std::time::Duration,
        storage: jetstream::stream::StorageType,
    ) -> anyhow::Result<jetstream::kv::Store> {
        lease::open_kv(self, bucket, max_age, storage).await
    }

    /// Removes the streams and the lease bucket (tests clean up after themselves with this).
    pub async fn delete_stream(&self) -> anyhow::Result<()> {
        self.js.delete_stream(self.stream_name()).await?;
        let _ = self.js.delete_stream(self.commands_stream_name()).await;
        let _ = self.js.delete_stream(self.hold_stream_name()).await;
        let _ = self
            .js
            .delete_stream(mailbox::mailbox_stream(&self.settings.prefix))
            .await;
        let _ = self.js.delete_key_value(self.lease_bucket()).await;
        let _ = self.js.delete_key_value(self.catalog_bucket()).await;
        Ok(())
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }
}

/// Stable partition of a member id: the member id is a UUID whose bits are already uniform,
/// but any string is accepted (hashed with FNV-1a so every service agrees).
pub fn partition_of(member_id: &str, partitions: u16) -> u16 {
    let partitions = partitions.max(1) as u64;
    let hash = member_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % partitions) as u16
}

/// The command stream of the services using subject prefix `prefix`.
pub fn commands_stream(prefix: &str) -> String {
    format!("{}_OUT", prefix.to_uppercase())
}

/// The hold stream of the services using subject prefix `prefix`.
pub fn hold_stream(prefix: &str) -> String {
    format!("{}_HOLD", prefix.to_uppercase())
}

/// Reads how full the events stream is, four times a second, for as long as its bus is
/// alive; says in the log when it crosses its share for new messages and when it is back.
async fn watch_fill(
    js: jetstream::Context,
    stream: String,
    bytes: std::sync::Weak<std::sync::atomic::AtomicU64>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut warned = false;
    loop {
        tick.tick().await;
        let Some(bytes) = bytes.upgrade() else { return };
        let Ok(handle) = js.get_stream(&stream).await else {
            continue;
        };
        let info = handle.cached_info();
        let used = info.state.bytes;
        bytes.store(used, std::sync::atomic::Ordering::Relaxed);
        let max = info.config.max_bytes;
        let high = max > 0 && used.saturating_mul(10) >= max as u64 * 8;
        if high != warned {
            warned = high;
            if high {
                tracing::warn!(stream = %stream, used, max, "the events stream is over 80% full: the router is behind or down");
            } else {
                tracing::info!(stream = %stream, used, max, "the events stream is below 80% again");
            }
        }
    }
}

/// The KV bucket holding the leases of the services using subject prefix `prefix`
/// (test and benchmark teardown removes it with the stream).
pub fn lease_bucket(prefix: &str) -> String {
    format!("{}_LEASES", prefix.to_uppercase())
}

/// Headers for a message with id `id`: JetStream's dedup id and the current trace context.
pub fn headers(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    propagation::inject_current(&mut headers);
    headers
}

/// A fresh, time-ordered event id.
pub fn new_event_id() -> String {
    Uuid::now_v7().to_string()
}

/// The id of the `index`-th command derived from event `cause`: deterministic, so
/// re-processing an event re-emits the same ids and JetStream / receivers drop copies.
pub fn derived_id(cause: &str, purpose: &str, index: usize) -> String {
    const NAMESPACE: Uuid = Uuid::from_u128(0x1d0a_77c3_5b1e_4c49_8f0e_63a9_b2d4_e805);
    Uuid::new_v5(&NAMESPACE, format!("{cause}/{purpose}/{index}").as_bytes()).to_string()
}

/// How a message from a platform is known on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKeys {
    pub event_id: String,
    /// JetStream's `Nats-Msg-Id` for it.
    pub dedup_id: String,
    /// The platform's own id; empty when it sent none.
    pub source_message_id: String,
}

/// Keys for a message `channel` received for `member`. A platform's id is unique per
/// member at most (some number messages per conversation), so with one the key is
/// (channel, member, id), for good. Without one, the body (`canonical_body`, e.g. its
/// sorted-key JSON) recognises a re-post within JetStream's duplicate window only: the same
/// words sent later are a new message, with a fresh event id.
pub fn message_keys(
    channel: &str,
    member: &str,
    purpose: &str,
    source_id: Option<String>,
    canonical_body: &[u8],
) -> MessageKeys {
    match source_id {
        Some(id) => {
            let event_id = derived_id(&format!("{channel}\n{member}\n{id}"), purpose, 0);
            MessageKeys {
                dedup_id: event_id.clone(),
                event_id,
                source_message_id: id,
            }
        }
        None => {
            let digest: String = Sha256::digest(canonical_body)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            MessageKeys {
                event_id: new_event_id(),
                dedup_id: derived_id(&format!("{channel}\n{member}\nsha256:{digest}"), purpose, 0),
                source_message_id: String::new(),
            }
        }
    }
}

/// `text` as Postgres can store it: NUL is the one character text and JSON columns refuse.
pub fn storable(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// When the platform message `envelope` derives from was accepted (see the proto field).
pub fn origin_of(envelope: &Envelope) -> i64 {
    if envelope.origin_accepted_at_ms > 0 {
        envelope.origin_accepted_at_ms
    } else {
        envelope.accepted_at_ms
    }
}

/// Where services send their `Receipts` batches.
pub fn receipts_subject(prefix: &str) -> String {
    format!("{prefix}_receipts")
}

/// Sends queued receipts as one message per 50 ms (or per 500): a receipt costs its lane
/// nothing but a queue push, and the bus one message per batch, not one per message.
async fn send_receipts(
    client: async_nats::Client,
    subject: String,
    mut queued: tokio::sync::mpsc::UnboundedReceiver<handoff_proto::Receipt>,
) {
    const MAX: usize = 500;
    let mut batch = Vec::with_capacity(MAX);
    loop {
        // Wait for a first receipt, then give the others 50 ms to join it.
        if queued.recv_many(&mut batch, MAX).await == 0 {
            return;
        }
        let window = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(window);
        while batch.len() < MAX {
            let room = MAX - batch.len();
            tokio::select! {
                () = &mut window => break,
                n = queued.recv_many(&mut batch, room) => if n == 0 { break },
            }
        }
        let payload = handoff_proto::Receipts {
            receipts: std::mem::take(&mut batch),
        }
        .encode_to_vec();
        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
            tracing::debug!(error = %e, "receipts not sent; those traces will miss steps");
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl BusSettings {
    pub fn from_config(nats: &handoff_config::NatsSettings) -> Self {
        Self {
            url: nats.url.clone(),
            prefix: nats.prefix.clone(),
            partitions: nats.partitions,
            duplicate_window: Duration::from_secs(nats.duplicate_window_secs),
            ack_wait: Duration::from_secs(nats.ack_wait_secs),
            replicas: nats.replicas,
            lease_ttl: Duration::from_millis(nats.lease_ttl_ms.max(500)),
            max_ack_pending: nats.max_ack_pending.max(1),
            max_in_flight: nats.max_in_flight.max(1),
            stream_max_bytes: nats.stream_max_bytes,
            commands_max_bytes: nats.commands_max_bytes,
            inbound_headroom_percent: nats.inbound_headroom_percent,
            hold_after: (nats.hold_after_secs > 0)
                .then(|| Duration::from_secs(nats.hold_after_secs)),
            max_held_bytes: nats.max_held_bytes.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duplicate_is_taken_as_stored_only_with_the_sequence_it_was_stored_under() {
        let ack = |duplicate: bool, seq: u64| -> jetstream::publish::PublishAck {
            serde_json::from_value(
                serde_json::json!({"stream": "S", "seq": seq, "duplicate": duplicate}),
            )
            .unwrap()
        };
        assert!(stored(ack(false, 7)).is_ok());
        assert!(stored(ack(true, 7)).is_ok_and(|a| a.duplicate));
        // Seen but not confirmed (a proposal a leader change may have dropped): try again.
        assert!(matches!(
            stored(ack(true, 0)),
            Err(PublishError::Unavailable(_))
        ));
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for i in 0..1000 {
            let id = format!("member-{i}");
            let p = partition_of(&id, 16);
            assert!(p < 16);
            assert_eq!(p, partition_of(&id, 16));
        }
    }

    #[test]
    fn partitions_spread_members() {
        let mut seen = [0usize; 8];
        for i in 0..800 {
            seen[partition_of(&Uuid::new_v4().to_string(), 8) as usize] += 1;
            let _ = i;
        }
        assert!(seen.iter().all(|&n| n > 40), "{seen:?}");
    }

    #[test]
    fn message_keys_are_scoped_to_the_member_and_body_keys_are_fresh_events() {
        let a = message_keys("web", "m1", "inbound", Some("1".into()), b"{}");
        assert_eq!(
            a,
            message_keys("web", "m1", "inbound", Some("1".into()), b"{}")
        );
        assert_ne!(
            a.event_id,
            message_keys("web", "m2", "inbound", Some("1".into()), b"{}").event_id
        );
        let b1 = message_keys("web", "m1", "inbound", None, b"{\"t\":1}");
        let b2 = message_keys("web", "m1", "inbound", None, b"{\"t\":1}");
        assert_eq!(b1.dedup_id, b2.dedup_id);
        assert_ne!(b1.event_id, b2.event_id);
        assert!(b1.source_message_id.is_empty());
    }

    #[test]
    fn derived_ids_are_deterministic_and_distinct() {
        assert_eq!(derived_id("e1", "bot", 0), derived_id("e1", "bot", 0));
        assert_ne!(derived_id("e1", "bot", 0), derived_id("e1", "bot", 1));
        assert_ne!(derived_id("e1", "bot", 0), derived_id("e2", "bot", 0));
    }
}

//! Consuming with a lane per member.
//!
//! A replica consumes the partitions it holds a lease for (see `lease`). Inside a partition,
//! messages are dispatched to one lane per member (deliveries: per member and target
//! platform, so a bot that is down does not hold the member's handoff to the desk): a lane
//! handles its messages one at a time, in stream order, and retries a failing one in place, so only that member's
//! later messages wait. Any number of lanes run at once, bounded by the consumer's
//! `max_ack_pending` per partition and by `max_in_flight` per process.
//!
//! On taking a partition over, the new owner deletes the previous owner's consumer and
//! reads the partition again from its oldest unacknowledged message: the stream is a work
//! queue, so it holds exactly what nobody has finished, in order. Whatever the previous
//! owner finished but could not acknowledge comes again and is absorbed by the handler's
//! idempotency (the router's inbox; the receivers' `webhook-id`). The owner reads its
//! partition afresh the same way when a delivery never reached it (a jump in consumer
//! sequences), so the lost message is handled before its member's later ones instead of
//! an ack wait after them (see `lost_deliveries`).
//!
//! Nothing poisons a lane: a message that can never be handled (undecodable bytes, or a
//! handler's `Park`) is set aside with its reason and exact bytes (see `Parking`), and the
//! member's next message goes on. Transient failures are retried in place for as long as
//! the handler says, without holding an in-flight slot while waiting.
//!
//! Nor does a long outage hold the partition: a lane waits in place only `hold_after`
//! (commands only). Then its member is *held*: the message and every later one of that
//! member are moved, in order, to the hold stream (`<prefix>.hold.<area>.p<N>.<member>`)
//! and acknowledged, so they leave the partition's acknowledgement window — which all the
//! partition's members, of every tenant, share — and a worker delivers them from there in
//! order, retrying to their horizon. When the hold subject is empty and nothing is on its
//! way there, the member is released and its lane works in place again. A new owner finds
//! the held members of its partition by the hold stream's subjects before it consumes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use handoff_proto::{Body, Envelope, Message as _, Parked};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::lease::{Leases, Renewal};
use crate::{Bus, derived_id, now_ms, propagation, storable};

/// What a handler decided about one message.
#[derive(Debug)]
pub enum Handled {
    /// The effect is durable: acknowledge.
    Done,
    /// A transient failure: try the same message again after the delay. The member's later
    /// messages wait (that keeps them in order); other members do not.
    Retry { after: Duration, reason: String },
    /// Retrying cannot help: set the message aside (a dead letter, replayable by an
    /// operator) and go on with the member's next one.
    Park { reason: String },
}

/// A message set aside for good, with what an operator needs to see and replay it.
#[derive(Debug, Clone)]
pub struct Parking {
    /// The same for a redelivery of the same stream message, so it is kept once.
    pub parked_id: String,
    pub service: String,
    pub subject: String,
    /// Empty when the message could not be decoded.
    pub member_id: String,
    pub original_event_id: String,
    pub original_kind: String,
    pub reason: String,
    pub payload: Bytes,
    /// The payload was cut to fit a bus message.
    pub truncated: bool,
}

impl Parking {
    /// The `Parked` event that carries this parking to the router.
    pub fn to_event(&self) -> Envelope {
        Envelope {
            event_id: self.parked_id.clone(),
            // An undecodable message has no member; its subject keeps its partition's
            // parkings in one lane.
            member_id: if self.member_id.is_empty() {
                self.subject.clone()
            } else {
                self.member_id.clone()
            },
            accepted_at_ms: now_ms(),
            body: Some(Body::Parked(Parked {
                service: self.service.clone(),
                subject: self.subject.clone(),
                payload: self.payload.to_vec(),
                truncated: self.truncated,
                reason: self.reason.clone(),
                original_event_id: self.original_event_id.clone(),
                original_kind: self.original_kind.clone(),
            })),
            ..Default::default()
        }
    }

    /// The parking a `Parked` event (made by `to_event`) carries.
    pub fn from_event(envelope: &Envelope, parked: &Parked) -> Self {
        Self {
            parked_id: envelope.event_id.clone(),
            service: parked.service.clone(),
            subject: parked.subject.clone(),
            member_id: if envelope.member_id == parked.subject {
                String::new()
            } else {
                envelope.member_id.clone()
            },
            original_event_id: parked.original_event_id.clone(),
            original_kind: parked.original_kind.clone(),
            reason: parked.reason.clone(),
            payload: Bytes::from(parked.payload.clone()),
            truncated: parked.truncated,
        }
    }
}

/// Handles one envelope. Called for one message at a time per member; many members at once.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, envelope: Envelope, partition: u16) -> impl Future<Output = Handled> + Send;

    /// Called when this replica takes a partition, before its first message (e.g. to flush
    /// an outbox the previous owner left behind).
    fn partition_started(&self, _partition: u16) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Keeps a parked message. `None` (the default) sends it to the router as a `Parked`
    /// event; the router, which owns the dead-letter table, stores it itself.
    fn park(&self, _parking: &Parking) -> impl Future<Output = Option<anyhow::Result<()>>> + Send {
        async { None }
    }
}

/// Room left in a bus message for the parking's own fields around the parked payload.
const PARKING_OVERHEAD: usize = 8 * 1024;

/// How a partition of service `name` is named in readiness reports.
pub(crate) fn partition_key(name: &str, partition: u16) -> String {
    format!("{name} partition {partition}")
}

fn heartbeat_key(name: &str) -> String {
    format!("{name} leases")
}

/// How long a partition being handed to another replica may take to finish what it holds.
const DRAIN: Duration = Duration::from_secs(5);

struct Ctx<H> {
    bus: Bus,
    stream: Stream,
    /// Where held members' messages wait (see the module's docs).
    hold: Stream,
    /// How long a lane retries in place before its member is held (`None`: for ever).
    hold_after: Option<Duration>,
    area: String,
    name: String,
    handler: Arc<H>,
    permits: Arc<Semaphore>,
    /// Payload bytes the process's lanes hold, across its partitions (see `max_held_bytes`).
    held_bytes: Arc<AtomicUsize>,
    /// Deliveries keep a lane per member *and target*: a member's messages for one
    /// platform wait only behind that platform (a bot that is down does not stop the
    /// handoff to the desk). The router's events keep one lane per member.
    per_target: bool,
}

impl<H> Ctx<H> {
    /// The lane `envelope` waits in: its member, or its member and target (a subject
    /// token either way: member ids are UUIDs and channel ids `[A-Za-z0-9_-]`).
    fn lane_of(&self, envelope: &Envelope) -> String {
        if self.per_target {
            format!("{}_{}", envelope.member_id, envelope.channel)
        } else {
            envelope.member_id.clone()
        }
    }
}

/// Bytes one pull asks for at most (a quarter of the process's budget, up to this): what
/// sits fetched but not yet in a lane is bounded too. Never less than a bus message, which
/// a pull must be able to carry.
const PULL_BYTES: usize = 4 * 1024 * 1024;
/// Messages one pull asks for at most, and the heartbeat that shows a pull is alive (the
/// client's defaults).
const PULL_BATCH: usize = 200;
const PULL_HEARTBEAT: Duration = Duration::from_secs(15);

/// Stream sequences a partition remembers as finished, to skip their redelivery.
const RECENTLY_DONE: usize = 16_384;

/// What handling needs of a stored message, wherever it was read from: a partition's
/// consumer, or the hold stream.
struct Stored<'a> {
    /// Where it was published (a held message: where it was before it was held), which is
    /// where a replayed parking goes.
    subject: &'a str,
    payload: &'a Bytes,
    headers: Option<&'a HeaderMap>,
    /// The stream it was read from, and its place there.
    stream: &'a str,
    sequence: u64,
}

/// How a lane's message ended.
enum Settled {
    /// Done or parked: acknowledge it.
    Finished,
    /// Still failing after `hold_after`: its member is to be held.
    Held,
}

/// Header carrying a held message's original subject.
const HELD_SUBJECT: &str = "Handoff-Subject";

struct Owned {
    revision: u64,
    renewed: Instant,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    releasing: bool,
}

/// Consumes `<prefix>.<area>.p<N>.>` for every partition this replica owns, until `shutdown`
/// is cancelled; then finishes what it holds and gives its partitions back.
///
/// `area` is `events` (router) or `deliver.<target>` (gateways); `name` names the service:
/// all its replicas share the leases and divide the partitions between them.
pub async fn run_consumers<H: Handler>(
    bus: Bus,
    area: String,
    name: String,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_of_area(&area))
        .await?;
    let hold = bus.jetstream().get_stream(bus.hold_stream_name()).await?;
    // Only deliveries to platforms wait out outages; the router's events never do.
    let hold_after = area
        .starts_with("deliver")
        .then_some(bus.settings().hold_after)
        .flatten();
    let leases = Leases::open(&bus, &name).await.inspect_err(|e| {
        tracing::error!(service = %name, error = %e, "cannot open the lease bucket");
    })?;
    let partitions = bus.settings().partitions;
    let ctx = Arc::new(Ctx {
        per_target: area.starts_with("deliver"),
        permits: Arc::new(Semaphore::new(bus.settings().max_in_flight)),
        held_bytes: Arc::default(),
        bus,
        stream,
        hold,
        hold_after,
        area,
        name,
        handler,
    });
    let period = leases.ttl() / 3;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owned: HashMap<u16, Owned> = HashMap::new();
    tracing::info!(service = %ctx.name, instance = leases.instance(), "consuming");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Without a heartbeat no lease can be taken or kept: the service cannot work, and
        // says so, until NATS (and its lease bucket, declared again) is back.
        match leases.heartbeat().await {
            Ok(()) => ctx.bus.report(&heartbeat_key(&ctx.name), None),
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat not written");
                ctx.bus.report(
                    &heartbeat_key(&ctx.name),
                    Some(format!("cannot write its heartbeat: {e:#}")),
                );
            }
        }
        let desired = leases.desired(partitions);
        let mut ended = Vec::new();
        for (&p, o) in owned.iter_mut() {
            if o.task.is_finished() {
                ended.push((p, true));
            } else if !desired[usize::from(p)] && !o.releasing {
                // Another replica should have it: finish what is in hand, then hand it over.
                o.stop.cancel();
                o.releasing = true;
            }
        }
        // All at once, each bounded by the tick: one at a time, sixteen slow answers could
        // outlast the lease itself.
        let renewals = futures::future::join_all(
            owned
                .iter()
                .filter(|(p, _)| !ended.iter().any(|(e, _)| e == *p))
                .map(|(&p, o)| {
                    let leases = &leases;
                    let revision = o.revision;
                    async move {
                        let renewal = tokio::time::timeout(period, leases.renew(p, revision))
                            .await
                            .unwrap_or_else(|_| {
                                Renewal::Failed("no answer within a third of the lease TTL".into())
                            });
                        (p, renewal)
                    }
                }),
        )
        .await;
        for (p, renewal) in renewals {
            let Some(o) = owned.get_mut(&p) else { continue };
            match renewal {
                Renewal::Renewed(revision) => {
                    o.revision = revision;
                    o.renewed = Instant::now();
                }
                Renewal::Lost => {
                    tracing::warn!(partition = p, "lease taken by another replica; stopping");
                    o.task.abort();
                    ended.push((p, false));
                }
                Renewal::Failed(e) => {
                    // Past this point another replica may already own it: stop before then.
                    if o.renewed.elapsed() + period >= leases.ttl() {
                        tracing::warn!(partition = p, error = %e, "lease cannot be renewed; stopping");
                        o.task.abort();
                        ended.push((p, false));
                    }
                }
            }
        }
        for (p, still_ours) in ended {
            let Some(o) = owned.remove(&p) else { continue };
            let what = partition_key(&ctx.name, p);
            if still_ours {
                match o.task.await {
                    Ok(Err(e)) => {
                        tracing::warn!(partition = p, error = %e, "partition consumer stopped; restarting it");
                        ctx.bus.report(&what, Some(format!("{e:#}")));
                    }
                    Err(e) if e.is_panic() => {
                        tracing::error!(
                            partition = p,
                            "partition consumer panicked; restarting it"
                        );
                        ctx.bus.report(&what, Some("its consumer panicked".into()));
                    }
                    _ => ctx.bus.report(&what, None),
                }
                leases.release(p, o.revision).await;
            } else {
                ctx.bus.report(&what, None);
            }
        }
        for p in 0..partitions {
            if !desired[usize::from(p)] || owned.contains_key(&p) {
                continue;
            }
            if let Some(revision) = leases.acquire(p).await {
                let stop = CancellationToken::new();
                let task = tokio::spawn(run_partition(ctx.clone(), p, revision, stop.clone()));
                tracing::info!(partition = p, "partition taken");
                owned.insert(
                    p,
                    Owned {
                        revision,
                        renewed: Instant::now(),
                        stop,
                        task,
                        releasing: false,
                    },
                );
            }
        }
    }
    // Finish what is in hand, then let the successors start at once.
    for o in owned.values() {
        o.stop.cancel();
    }
    for (p, o) in owned {
        let _ = o.task.await;
        leases.release(p, o.revision).await;
    }
    leases.leave().await;
    Ok(())
}

async fn run_partition<H: Handler>(
    ctx: Arc<Ctx<H>>,
    partition: u16,
    epoch: u64,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let settings = ctx.bus.settings().clone();
    let filter = format!("{}.{}.p{partition}.>", settings.prefix, ctx.area);
    let mut previous = Vec::new();
    let mut infos = ctx.stream.consumers();
    while let Some(info) = infos.try_next().await? {
        if info.config.filter_subject == filter {
            previous.push(info.name);
        }
    }
    for name in previous {
        ctx.stream.delete_consumer(&name).await?;
    }
    // A new name per lease: a stalled former owner pulling by the old name gets nothing,
    // instead of this owner's messages. `reads` counts the partition's fresh reads under
    // this lease (see `lost_deliveries`).
    let mut reads = 0;
    let consumer_name = |reads: u32| format!("{}-p{partition}-{epoch}-{reads}", ctx.name);
    let mut consumer = open_consumer(&ctx, &filter, consumer_name(reads)).await?;
    ctx.handler.partition_started(partition).await;
    let mut lanes = Lanes::new(ctx.clone(), partition);
    // Members held by the previous owner stay held: their messages replayed from the
    // partition go behind the ones waiting in the hold stream.
    if ctx.hold_after.is_some() {
        let filter = hold_subject(&ctx, partition, "*");
        let mut subjects = ctx.hold.info_with_subjects(&filter).await?;
        while let Some((subject, count)) = subjects.try_next().await? {
            if count > 0
                && let Some(member) = subject.rsplit('.').next()
            {
                lanes.hold(member.to_string(), None);
            }
        }
    }
    ctx.bus.report(&partition_key(&ctx.name, partition), None);
    let mut progress = tokio::time::interval(settings.ack_wait / 3);
    progress.tick().await;
    let pull_bytes = (settings.max_held_bytes / 4)
        .min(PULL_BYTES)
        .max(ctx.bus.max_payload());
    // The consumer sequence of the last delivery that reached this process: a jump means
    // a delivery was lost on its way (see `lost_deliveries`).
    let mut last_delivery = 0;
    let result = 'pull: loop {
        let mut messages = tokio::select! {
            () = stop.cancelled() => break 'pull Ok(()),
            // The consumer is gone or the server refuses: end here, and the controller
            // takes the partition again with a new consumer.
            m = consumer
                .stream()
                .max_messages_per_batch(PULL_BATCH)
                .max_bytes_per_batch(pull_bytes)
                .heartbeat(PULL_HEARTBEAT)
                .messages() => match m {
                Ok(m) => m,
                Err(e) => break 'pull Err(anyhow::anyhow!("cannot pull from partition {partition}: {e}")),
            },
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => break 'pull Ok(()),
                Some(done) = lanes.running.join_next(), if !lanes.running.is_empty() => {
                    lanes.finished(done);
                }
                Some(drained) = lanes.workers.join_next(), if !lanes.workers.is_empty() => {
                    lanes.drained(drained);
                }
                // Past the process's byte budget, lanes finish before more is read; the
                // pull itself holds at most one batch of bytes meanwhile. Should a message
                // wait there past its ack wait, it comes again, after itself: the lanes
                // skip a sequence they have just finished.
                next = messages.next(), if ctx.held_bytes.load(Ordering::Relaxed) < settings.max_held_bytes => match next {
                    Some(Ok(message)) => {
                        let Ok((delivery, sequence)) = message.info().map(|i| (i.consumer_sequence, i.stream_sequence)) else {
                            tracing::error!(subject = %message.subject, "a message without JetStream metadata");
                            continue;
                        };
                        if let Some(lost) = lost_deliveries(last_delivery, delivery) {
                            tracing::warn!(partition, lost, "deliveries never arrived: reading the partition again, so no member's later message goes before them");
                            let _ = ctx.stream.delete_consumer(&consumer_name(reads)).await;
                            reads += 1;
                            consumer = match open_consumer(&ctx, &filter, consumer_name(reads)).await {
                                Ok(consumer) => consumer,
                                Err(e) => break 'pull Err(e),
                            };
                            last_delivery = 0;
                            continue 'pull;
                        }
                        last_delivery = delivery;
                        lanes.push(message, sequence).await;
                    }
                    Some(Err(e)) if e.kind() == MessagesErrorKind::ConsumerDeleted => {
                        break 'pull Err(anyhow::anyhow!("consumer deleted: another replica took partition {partition}"));
                    }
                    // No heartbeat: the pull may be dead; a new one finds out.
                    Some(Err(e)) if e.kind() == MessagesErrorKind::MissingHeartbeat => {
                        tracing::warn!(partition, "pull heartbeat missed; pulling again");
                        continue 'pull;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, partition, "pull error"),
                    // The pull stream ended (e.g. a reconnect): open a new one.
                    None => continue 'pull,
                },
                _ = progress.tick() => {
                    lanes.progress().await;
                    // The server's notice that the consumer (or its stream) was deleted
                    // can be lost under load, and a missed heartbeat takes longer to show:
                    // asking on this tick turns either into a restart, and a not-ready
                    // report, within a third of the ack wait.
                    if let Err(e) = consumer.get_info().await
                        && matches!(
                            e.kind(),
                            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
                        )
                    {
                        break 'pull Err(anyhow::anyhow!("partition {partition}'s consumer is gone: {e}"));
                    }
                }
            }
        }
    };
    // Finish the messages being handled; the ones still queued stay unacknowledged and the
    // next owner reads them again, in order.
    let drained = tokio::time::timeout(DRAIN, async {
        while lanes.running.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        lanes.running.abort_all();
    }
    // Held messages stay in the hold stream for the next owner.
    lanes.workers.abort_all();
    result
}

/// How many deliveries were lost between the last one that arrived and `delivery` (their
/// consumer sequences), if any.
///
/// JetStream delivers a partition in stream order, but a delivery lost on its way (a pull
/// abandoned with messages in flight, a connection cut by a dying server) comes again only
/// after the ack wait — behind the member's later messages, which the lanes would have
/// handled by then. Reading the partition again from its oldest unacknowledged message
/// puts it back in its place: the lanes keep what they hold (a copy of a held message only
/// takes over its acknowledgement) and the lost message queues before its member's later
/// ones. A sequence that goes back (a new consumer leader replaying) is no loss.
fn lost_deliveries(last: u64, delivery: u64) -> Option<u64> {
    (delivery > last + 1).then(|| delivery - last - 1)
}

/// A pull consumer named `name` over the partition `filter`, from its oldest message.
async fn open_consumer<H>(
    ctx: &Ctx<H>,
    filter: &str,
    name: String,
) -> anyhow::Result<consumer::PullConsumer> {
    let consumer = ctx
        .stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(name),
            filter_subject: filter.to_string(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ctx.bus.settings().ack_wait,
            max_ack_pending: ctx.bus.settings().max_ack_pending,
            max_deliver: -1,
            deliver_policy: DeliverPolicy::All,
            // The stream is a work queue: it alone holds what is unfinished, and a new
            // owner always starts a new consumer from its oldest message. So the consumer's
            // own state need not survive a server restart, and keeping it in memory spares
            // the server a state file rewrite per acknowledgement (the largest part of its
            // CPU time under load, measured with perf).
            memory_storage: true,
            ..Default::default()
        })
        .await?;
    Ok(consumer)
}

struct Item {
    message: async_nats::jetstream::Message,
    /// A later delivery of the same message while its lane handles it: the one the
    /// consumer now waits on, acknowledged when the lane finishes.
    again: Option<async_nats::jetstream::Message>,
    envelope: Envelope,
    sequence: u64,
}

/// One partition's member lanes. Only the partition's task touches it.
struct Lanes<H> {
    ctx: Arc<Ctx<H>>,
    partition: u16,
    /// Each member's messages in stream order; the head is being handled.
    queues: HashMap<String, VecDeque<Item>>,
    /// Stream sequences held here, so a redelivery of one of them is not handled twice.
    held: HashSet<u64>,
    /// Sequences finished lately (oldest first): a redelivery of one is acknowledged and
    /// skipped (it came again while it waited unread in a pull paused by the budget).
    done: (HashSet<u64>, VecDeque<u64>),
    /// Lane tasks: the member, and whether it is now to be held.
    running: JoinSet<(String, bool)>,
    /// Members whose messages go to the hold stream, and those being delivered from it.
    holding: HashSet<String>,
    workers: JoinSet<(String, Option<u64>)>,
}

impl<H: Handler> Lanes<H> {
    fn new(ctx: Arc<Ctx<H>>, partition: u16) -> Self {
        Self {
            ctx,
            partition,
            queues: HashMap::new(),
            held: HashSet::new(),
            done: Default::default(),
            running: JoinSet::new(),
            holding: HashSet::new(),
            workers: JoinSet::new(),
        }
    }

    /// From now on `member`'s messages go to the hold stream, delivered from there from
    /// sequence `from` on.
    fn hold(&mut self, member: String, from: Option<u64>) {
        if self.holding.insert(member.clone()) {
            self.deliver_held(member, from, Duration::ZERO);
        }
    }

    fn deliver_held(&mut self, member: String, from: Option<u64>, after: Duration) {
        let ctx = self.ctx.clone();
        let partition = self.partition;
        self.workers.spawn(async move {
            tokio::time::sleep(after).await;
            let next = deliver_held(&ctx, partition, &member, from).await;
            (member, next)
        });
    }

    /// A held member's worker found nothing more to deliver: the member is released,
    /// unless messages are still on their way to the hold stream (then it goes on).
    fn drained(&mut self, done: Result<(String, Option<u64>), tokio::task::JoinError>) {
        let Ok((member, next)) = done else { return };
        if self.queues.get(&member).is_none_or(VecDeque::is_empty) {
            self.holding.remove(&member);
            tracing::info!(member = %member, partition = self.partition, "member released from hold");
        } else {
            self.deliver_held(member, next, Duration::from_millis(100));
        }
    }

    async fn push(&mut self, message: async_nats::jetstream::Message, sequence: u64) {
        if self.done.0.contains(&sequence) {
            ack(&message).await;
            return;
        }
        if !self.held.insert(sequence) {
            self.redelivered(sequence, message);
            return;
        }
        let envelope = match Envelope::decode(message.payload.as_ref()) {
            Ok(e) => e,
            Err(e) => {
                // Not ours or corrupt: retrying cannot help, and it would hold its lane.
                let ctx = self.ctx.clone();
                self.held.remove(&sequence);
                self.running.spawn(async move {
                    let stored = Stored::read(&ctx, &message, sequence);
                    park(&ctx, &stored, None, format!("undecodable message: {e}")).await;
                    ack(&message).await;
                    (UNDECODABLE.to_string(), false)
                });
                return;
            }
        };
        let member = self.ctx.lane_of(&envelope);
        self.ctx
            .held_bytes
            .fetch_add(message.payload.len(), Ordering::Relaxed);
        let queue = self.queues.entry(member.clone()).or_default();
        queue.push_back(Item {
            message,
            again: None,
            envelope,
            sequence,
        });
        if queue.len() == 1 {
            self.start(member);
        }
    }

    /// A message a lane holds came again (the partition read afresh, or a redelivery):
    /// acknowledgements and progress go to the newest delivery, the one its consumer waits
    /// on.
    fn redelivered(&mut self, sequence: u64, message: async_nats::jetstream::Message) {
        let Ok(envelope) = Envelope::decode(message.payload.as_ref()) else {
            return;
        };
        let Some(queue) = self.queues.get_mut(&self.ctx.lane_of(&envelope)) else {
            return;
        };
        match queue.iter().position(|item| item.sequence == sequence) {
            // The head is being handled with the first delivery in hand.
            Some(0) => queue[0].again = Some(message),
            Some(i) => queue[i].message = message,
            None => {}
        }
    }

    fn start(&mut self, member: String) {
        let Some(item) = self.queues.get_mut(&member).and_then(|q| q.front_mut()) else {
            return;
        };
        let message = item.message.clone();
        // A head is started once, and only its lane reads the envelope from then on.
        let envelope = std::mem::take(&mut item.envelope);
        let sequence = item.sequence;
        let ctx = self.ctx.clone();
        let partition = self.partition;
        let holding = self.holding.contains(&member);
        self.running.spawn(async move {
            let stored = Stored::read(&ctx, &message, sequence);
            let held = holding
                || matches!(
                    handle_until_done(&ctx, &stored, &envelope, partition, ctx.hold_after).await,
                    Settled::Held
                );
            if held {
                move_to_hold(&ctx, &stored, &envelope, partition).await;
            }
            ack(&message).await;
            (member, held && !holding)
        });
    }

    fn finished(&mut self, done: Result<(String, bool), tokio::task::JoinError>) {
        let Ok((member, now_held)) = done else {
            // Only an abort ends a lane task early, and aborts happen on the way out.
            return;
        };
        if now_held {
            tracing::warn!(member = %member, partition = self.partition, "deliveries keep failing: the member's messages wait in the hold stream");
            self.hold(member.clone(), None);
        }
        let Some(queue) = self.queues.get_mut(&member) else {
            return;
        };
        if let Some(item) = queue.pop_front() {
            self.held.remove(&item.sequence);
            if let Some(again) = item.again {
                tokio::spawn(async move { ack(&again).await });
            }
            if self.done.0.insert(item.sequence) {
                self.done.1.push_back(item.sequence);
                if self.done.1.len() > RECENTLY_DONE
                    && let Some(oldest) = self.done.1.pop_front()
                {
                    self.done.0.remove(&oldest);
                }
            }
            self.ctx
                .held_bytes
                .fetch_sub(item.message.payload.len(), Ordering::Relaxed);
        }
        if queue.is_empty() {
            self.queues.remove(&member);
        } else {
            self.start(member);
        }
    }

    /// Tells JetStream every held message is still being worked on, so none is redelivered
    /// while its member waits behind a slow one.
    async fn progress(&self) {
        for item in self.queues.values().flatten() {
            let _ = item
                .again
                .as_ref()
                .unwrap_or(&item.message)
                .ack_with(async_nats::jetstream::AckKind::Progress)
                .await;
        }
    }
}

impl<H> Drop for Lanes<H> {
    /// A partition given up leaves its queued messages to the next owner: they no longer
    /// count against this process's budget.
    fn drop(&mut self) {
        let queued: usize = self
            .queues
            .values()
            .flatten()
            .map(|item| item.message.payload.len())
            .sum();
        self.ctx.held_bytes.fetch_sub(queued, Ordering::Relaxed);
    }
}

/// The lane key of a parking task for an undecodable message (no member lane waits on it).
const UNDECODABLE: &str = "\0undecodable";

/// Plain ack: a lost one only means a redelivery, which handlers absorb.
async fn ack(message: &async_nats::jetstream::Message) {
    if let Err(e) = message.ack().await {
        tracing::warn!(error = %e, "ack not sent; the message may be redelivered");
    }
}

impl<'a> Stored<'a> {
    fn read<H>(
        ctx: &'a Ctx<H>,
        message: &'a async_nats::jetstream::Message,
        sequence: u64,
    ) -> Self {
        Self {
            subject: message.subject.as_str(),
            payload: &message.payload,
            headers: message.headers.as_ref(),
            stream: &ctx.stream.cached_info().config.name,
            sequence,
        }
    }
}

/// The hold subject of `member` (`*`: all) in `partition`.
fn hold_subject<H>(ctx: &Ctx<H>, partition: u16, member: &str) -> String {
    format!(
        "{}.hold.{}.p{partition}.{member}",
        ctx.bus.settings().prefix,
        ctx.area
    )
}

/// Whether `member` can name a subject token (member ids are UUIDs; anything else stays
/// in its lane).
fn holdable(member: &str) -> bool {
    !member.is_empty()
        && member
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Copies a message to its member's hold subject (its trace and original subject kept),
/// retrying until the hold stream has it: the original is acknowledged only then.
async fn move_to_hold<H: Handler>(
    ctx: &Ctx<H>,
    stored: &Stored<'_>,
    envelope: &Envelope,
    partition: u16,
) {
    let subject = hold_subject(ctx, partition, &ctx.lane_of(envelope));
    let mut headers = stored.headers.cloned().unwrap_or_default();
    // The same id for a move redone after a crash: JetStream keeps one copy.
    headers.insert(
        "Nats-Msg-Id",
        format!("hold-{}-{}", stored.stream, stored.sequence).as_str(),
    );
    headers.insert(HELD_SUBJECT, stored.subject);
    receipt(
        ctx,
        envelope,
        0,
        "held",
        "moved out of the partition while its deliveries fail",
    );
    let mut delay = Duration::from_millis(250);
    loop {
        match ctx
            .bus
            .publish_all([(subject.clone(), headers.clone(), stored.payload.clone())])
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "a message could not be moved to the hold stream yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Delivers `member`'s held messages in order, from sequence `from`, each retried in
/// place until done or parked and then deleted; returns where to look next once none is
/// left.
async fn deliver_held<H: Handler>(
    ctx: &Ctx<H>,
    partition: u16,
    member: &str,
    mut from: Option<u64>,
) -> Option<u64> {
    let subject = hold_subject(ctx, partition, member);
    let hold_name = ctx.hold.cached_info().config.name.clone();
    loop {
        let held = match ctx.hold.direct_get_next_for_subject(&subject, from).await {
            Ok(held) => held,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return from,
            Err(e) => {
                tracing::warn!(error = %e, member, "held messages cannot be read now; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let original = held
            .headers
            .get(HELD_SUBJECT)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| held.subject.to_string());
        let stored = Stored {
            subject: &original,
            payload: &held.payload,
            headers: Some(&held.headers),
            stream: &hold_name,
            sequence: held.sequence,
        };
        match Envelope::decode(held.payload.as_ref()) {
            Ok(envelope) => {
                handle_until_done(ctx, &stored, &envelope, partition, None).await;
            }
            Err(e) => park(ctx, &stored, None, format!("undecodable message: {e}")).await,
        }
        // Gone once delivered; if the delete is lost the message comes again under the
        // same `webhook-id`, which receivers drop.
        let mut delay = Duration::from_millis(250);
        while let Err(e) = ctx.hold.delete_message(held.sequence).await {
            tracing::warn!(error = %e, "a delivered held message is not deleted yet; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        from = Some(held.sequence + 1);
    }
}

async fn handle_until_done<H: Handler>(
    ctx: &Ctx<H>,
    stored: &Stored<'_>,
    envelope: &Envelope,
    partition: u16,
    hold_after: Option<Duration>,
) -> Settled {
    let hold_after = hold_after.filter(|_| holdable(&ctx.lane_of(envelope)));
    let started = Instant::now();
    let span = tracing::info_span!(
        "handle",
        kind = envelope.kind(),
        event_id = %envelope.event_id,
        member_id = %envelope.member_id,
        partition,
    );
    propagation::extract_into(&span, stored.headers);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // The in-flight slot is held while handling, never while waiting to retry: a
        // thousand members behind a dead endpoint do not crowd out the others.
        let permit = ctx.permits.acquire().await;
        let outcome = match ctx.bus.publish_kept(&envelope.event_id).await {
            Some(settled) => Ok(settled),
            None => {
                AssertUnwindSafe(ctx.handler.handle(envelope.clone(), partition))
                    .catch_unwind()
                    .instrument(span.clone())
                    .await
            }
        };
        drop(permit);
        let (after, reason) = match outcome {
            Ok(Handled::Done) => {
                receipt(ctx, envelope, attempt, "done", "");
                return Settled::Finished;
            }
            Ok(Handled::Park { reason }) => {
                receipt(ctx, envelope, attempt, "parked", &reason);
                park(ctx, stored, Some(envelope), reason)
                    .instrument(span.clone())
                    .await;
                return Settled::Finished;
            }
            Ok(Handled::Retry { after, reason }) => (after, reason),
            Err(_) => (Duration::from_secs(5), "handler panicked".to_string()),
        };
        receipt(ctx, envelope, attempt, "retry", &reason);
        if hold_after.is_some_and(|h| started.elapsed() + after >= h) {
            return Settled::Held;
        }
        span.in_scope(|| {
            tracing::warn!(%reason, attempt, delay_ms = after.as_millis() as u64, "will retry");
        });
        tokio::time::sleep(after).await;
    }
}

/// Tells the router what became of one attempt at `envelope` (see `Receipt`): batched on
/// core NATS, not JetStream, so it costs the lane nothing, and losing one loses no message.
fn receipt<H: Handler>(
    ctx: &Ctx<H>,
    envelope: &Envelope,
    attempt: u32,
    outcome: &str,
    detail: &str,
) {
    let receipt = handoff_proto::Receipt {
        event_id: envelope.event_id.clone(),
        causation_id: envelope.causation_id.clone(),
        member_id: envelope.member_id.clone(),
        kind: envelope.kind().to_string(),
        service: ctx.name.clone(),
        channel: envelope.channel.clone(),
        outcome: outcome.to_string(),
        detail: storable(detail).chars().take(500).collect(),
        attempt,
        accepted_at_ms: envelope.accepted_at_ms,
        at_ms: now_ms(),
    };
    ctx.bus.receipt(receipt);
}

/// Keeps `message` as a dead letter, retrying until it is stored: parking is how a lane
/// moves on, so it must not lose the message either.
async fn park<H: Handler>(
    ctx: &Ctx<H>,
    stored: &Stored<'_>,
    envelope: Option<&Envelope>,
    reason: String,
) {
    let sequence = stored.sequence;
    let event_id = envelope.map(|e| e.event_id.clone()).unwrap_or_default();
    let room = ctx.bus.max_payload().saturating_sub(PARKING_OVERHEAD);
    let truncated = stored.payload.len() > room;
    let mut reason = storable(&reason);
    if reason.len() > 2_000 {
        let cut = (0..=2_000)
            .rev()
            .find(|&i| reason.is_char_boundary(i))
            .unwrap_or(0);
        reason.truncate(cut);
    }
    let parking = Parking {
        parked_id: derived_id(
            &format!("{}/{sequence}/{event_id}", stored.stream),
            "parked",
            0,
        ),
        service: ctx.name.clone(),
        subject: stored.subject.to_string(),
        member_id: envelope.map(|e| e.member_id.clone()).unwrap_or_default(),
        original_event_id: event_id,
        original_kind: envelope.map(|e| e.kind().to_string()).unwrap_or_default(),
        reason,
        payload: stored.payload.slice(..stored.payload.len().min(room)),
        truncated,
    };
    tracing::error!(
        subject = %parking.subject,
        sequence,
        reason = %parking.reason,
        parked_id = %parking.parked_id,
        "message parked; replay or drop it with `handoffctl dead-letters`"
    );
    let mut delay = Duration::from_millis(250);
    loop {
        let stored = match ctx.handler.park(&parking).await {
            Some(stored) => stored,
            None => ctx
                .bus
                .publish_parked(&parking)
                .await
                .map_err(anyhow::Error::from),
        };
        match stored {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "parked message not stored yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lost_deliveries;

    #[test]
    fn a_jump_in_consumer_sequences_counts_the_deliveries_lost_between() {
        assert_eq!(lost_deliveries(0, 1), None);
        assert_eq!(lost_deliveries(41, 42), None);
        assert_eq!(lost_deliveries(41, 44), Some(2));
        // The first deliveries of a new consumer can be lost too.
        assert_eq!(lost_deliveries(0, 3), Some(2));
    }

    #[test]
    fn a_consumer_sequence_going_back_is_a_replay_not_a_loss() {
        assert_eq!(lost_deliveries(41, 41), None);
        assert_eq!(lost_deliveries(41, 7), None);
    }
}

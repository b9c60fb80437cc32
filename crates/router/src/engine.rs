//! Applies events, batched across members, each in the batch's transaction: loads what
//! the state machine (`machine`) needs to know of the member, lets it decide, applies its
//! steps, and writes the commands it queued to the outbox, published after the commit.
//! Every transition is a compare-and-set on the conversation's state, so a duplicated or
//! late event cannot apply twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use handoff_bus::{
    Bus, Handled, Handler, Parking, PublishError, Service, derived_id, now_ms, storable,
};
use handoff_config::Channel;
use handoff_platforms::Catalog;
use handoff_platforms::content::{content_from_response, content_to_response};
use handoff_proto::{
    Body, Content, DeliverToMember, DeliverToOutlet, Envelope, HandoffDetails, RelayToOutlet,
    RequestLivechat, SendToBot,
};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Row as _, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::machine::{self, Command, Event, Facts, Release, Step, event_content};
use crate::store::{self, MemberRow};

/// Advisory-lock class for "one transaction per member at a time", across replicas.
const MEMBER_LOCK_CLASS: i32 = 0x4846_4f4d; // "HFOM"

/// Events applied in one transaction at most.
const MAX_BATCH: usize = 16;

/// Transactions the router runs at once (each a batch).
const BATCH_WORKERS: usize = 8;

/// How often published outbox rows are deleted, all in one statement. A row published but
/// not yet deleted is harmless: republished after a crash, JetStream drops it as a
/// duplicate (its `Nats-Msg-Id` is the command id, and this is far inside the window).
const OUTBOX_CLEANUP: Duration = Duration::from_millis(50);

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

enum Scope<'a> {
    Partition(u16),
    Member(&'a str),
}

/// An event waiting for a batch, and where its outcome goes.
struct Job {
    envelope: Envelope,
    span: tracing::Span,
    reply: oneshot::Sender<Handled>,
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

struct OutboxRow {
    seq: i64,
    id: String,
    subject: String,
    payload: Bytes,
}

enum Applied {
    New(Vec<OutboxRow>),
    Duplicate,
}

/// One event's unit of work: the batch's open transaction and the commands it derives.
struct Work<'a> {
    tx: &'a mut Transaction<'static, Postgres>,
    cause: &'a Envelope,
    commands: Vec<(Service, Envelope)>,
    messages: usize,
    /// Handoffs this event settled: outcome and seconds since the request, recorded once
    /// the transaction commits.
    settled: Vec<(&'static str, f64)>,
}

impl Work<'_> {
    /// Queues a command; its id derives from the cause, so re-processing re-emits it as-is.
    fn command(&mut self, service: Service, channel: &str, conversation: Option<Uuid>, body: Body) {
        let index = self.commands.len();
        let envelope = Envelope {
            event_id: derived_id(&self.cause.event_id, "command", index),
            org: self.cause.org.clone(),
            channel: channel.to_string(),
            member_id: self.cause.member_id.clone(),
            conversation_id: conversation.map(|c| c.to_string()).unwrap_or_default(),
            causation_id: self.cause.event_id.clone(),
            occurred_at_ms: self.cause.occurred_at_ms,
            accepted_at_ms: now_ms(),
            origin_accepted_at_ms: handoff_bus::origin_of(self.cause),
            body: Some(body),
            ..Default::default()
        };
        self.commands.push((service, envelope));
    }

    /// Appends a transcript line. The first line of a customer or agent message carries the
    /// platform's message id; `false` means that id was already recorded (a duplicate).
    async fn record(
        &mut self,
        member: Uuid,
        conversation: Option<Uuid>,
        channel: &str,
        author: &str,
        content: &Value,
        held: bool,
    ) -> sqlx::Result<bool> {
        let index = self.messages;
        self.messages += 1;
        let event_id: Uuid = if index == 0 && author == "customer" {
            self.cause
                .event_id
                .parse()
                .unwrap_or_else(|_| Uuid::now_v7())
        } else {
            derived_id(&self.cause.event_id, "message", index)
                .parse()
                .expect("derived ids are UUIDs")
        };
        let source = (author != "bot" && author != "system" && index == 0)
            .then(|| self.cause.source_message_id.clone())
            .filter(|s| !s.is_empty());
        let inserted = sqlx::query(
            "INSERT INTO messages (event_id, member_id, conversation_id, channel_id,
               source_message_id, author, content, held)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(member)
        .bind(conversation)
        .bind(channel)
        .bind(source)
        .bind(author)
        .bind(content)
        .bind(held)
        .execute(&mut **self.tx)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }
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

    /// Applies queued events in batches until `shutdown`. Several workers run at once so a
    /// batch waiting for its commit does not hold the next one.
    pub async fn run_batches(self: Arc<Self>, shutdown: CancellationToken) {
        let mut workers = JoinSet::new();
        for _ in 0..BATCH_WORKERS {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            workers.spawn(async move {
                loop {
                    let batch = {
                        let mut queue = engine.queue.lock().await;
                        let first = tokio::select! {
                            () = shutdown.cancelled() => return,
                            job = queue.recv() => match job { Some(j) => j, None => return },
                        };
                        let mut batch = vec![first];
                        while batch.len() < MAX_BATCH {
                            match queue.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                        batch
                    };
                    engine.run_batch(batch).await;
                }
            });
        }
        let mut cleanup = tokio::time::interval(OUTBOX_CLEANUP);
        cleanup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                done = workers.join_next() => if done.is_none() { break },
                _ = cleanup.tick() => self.clean_outbox().await,
            }
        }
        self.clean_outbox().await;
    }

    /// Deletes the outbox rows published since the last clean-up. One statement for all
    /// batches: a delete per batch would cost each batch a second commit.
    async fn clean_outbox(&self) {
        let seqs = std::mem::take(&mut *self.published.lock().expect("not poisoned"));
        if seqs.is_empty() {
            return;
        }
        let deleted = sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
            .bind(&seqs)
            .execute(&self.pool)
            .await;
        if let Err(e) = deleted {
            tracing::warn!(error = %e, rows = seqs.len(), "published outbox rows not deleted yet");
            self.published.lock().expect("not poisoned").extend(seqs);
        }
    }

    async fn run_batch(&self, batch: Vec<Job>) {
        let envelopes: Vec<&Envelope> = batch.iter().map(|j| &j.envelope).collect();
        match self.apply_batch(&envelopes).await {
            Ok(outcomes) => {
                let mut rows = Vec::new();
                let mut duplicate = Vec::with_capacity(outcomes.len());
                for (job, outcome) in batch.iter().zip(outcomes) {
                    match outcome {
                        Applied::New(new) => {
                            // Each command carries the trace of the event it derives from.
                            let _entered = job.span.enter();
                            rows.extend(new.into_iter().map(|r| {
                                let headers = handoff_bus::headers(&r.id);
                                (r, headers)
                            }));
                            duplicate.push(false);
                        }
                        Applied::Duplicate => duplicate.push(true),
                    }
                }
                let published = self.publish(rows).await;
                for (job, duplicate) in batch.into_iter().zip(duplicate) {
                    let handled = match &published {
                        Err(e) => retry(e),
                        Ok(()) if !duplicate => Handled::Done,
                        // A redelivery: publish what its first run may have left behind.
                        Ok(()) => match self
                            .flush_outbox(Scope::Member(&job.envelope.member_id))
                            .await
                        {
                            Ok(()) => Handled::Done,
                            Err(e) => retry(&e),
                        },
                    };
                    let _ = job.reply.send(handled);
                }
            }
            Err(e) if batch.len() == 1 => {
                let job = batch.into_iter().next().expect("one job");
                let handled = if is_permanent(&e) {
                    Handled::Park {
                        reason: format!("{e:#}"),
                    }
                } else {
                    retry(&e)
                };
                let _ = job.reply.send(handled);
            }
            Err(_) => {
                // One event spoiled the batch: apply each alone, so only its member waits.
                // All at once (they are different members): one by one, a batch of fifty
                // would make the last wait fifty transactions.
                futures::future::join_all(
                    batch
                        .into_iter()
                        .map(|job| Box::pin(self.run_batch(vec![job]))),
                )
                .await;
            }
        }
    }

    /// Applies a batch of events (each of a different member) in one transaction: the
    /// member locks, the inbox and the outbox are one statement each for the whole batch,
    /// and the batch pays for one commit. Returns, per event, the commands to publish.
    async fn apply_batch(&self, batch: &[&Envelope]) -> anyhow::Result<Vec<Applied>> {
        let mut tx = self.pool.begin().await?;
        let mut members: Vec<&str> = batch.iter().map(|e| e.member_id.as_str()).collect();
        members.sort_unstable();
        members.dedup();
        let ids = batch
            .iter()
            .map(|e| {
                e.event_id
                    .parse::<Uuid>()
                    .map_err(|_| permanent(format!("event id `{}` is not a UUID", e.event_id)))
            })
            .collect::<anyhow::Result<Vec<Uuid>>>()?;
        // A member's events are applied one at a time across replicas (a takeover replays
        // what the previous owner may still be finishing): the member locks are taken
        // before any state is read (the statements after this one), and sorted, so batches
        // never deadlock. The inbox insert shares their round trip; a concurrent insert of
        // the same event waits on its key anyway.
        let fresh: HashSet<Uuid> = sqlx::query_scalar(
            "WITH locked AS MATERIALIZED (
               SELECT pg_advisory_xact_lock($1, hashtext(m))
               FROM (SELECT m FROM unnest($2::text[]) AS m ORDER BY hashtext(m)) AS ordered
             ), inserted AS (
               INSERT INTO processed_events (event_id) SELECT unnest($3::uuid[])
               ON CONFLICT DO NOTHING RETURNING event_id
             )
             SELECT event_id FROM inserted WHERE (SELECT count(*) FROM locked) >= 0",
        )
        .bind(MEMBER_LOCK_CLASS)
        .bind(&members)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let mut commands: Vec<(usize, Service, Envelope)> = Vec::new();
        let mut settled = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for (i, envelope) in batch.iter().enumerate() {
            if !fresh.contains(&ids[i]) {
                outcomes.push(Applied::Duplicate);
                continue;
            }
            let mut work = Work {
                tx: &mut tx,
                cause: envelope,
                commands: Vec::new(),
                messages: 0,
                settled: Vec::new(),
            };
            // `false`: a duplicate by another key (the same platform message id under a new
            // event id); it was detected before any effect, so nothing is published.
            if self.dispatch(&mut work).await? {
                commands.extend(work.commands.into_iter().map(|(t, e)| (i, t, e)));
            }
            settled.append(&mut work.settled);
            outcomes.push(Applied::New(Vec::new()));
        }
        for (i, row) in self.write_outbox(&mut tx, commands).await? {
            if let Applied::New(rows) = &mut outcomes[i] {
                rows.push(row);
            }
        }
        tx.commit().await?;
        for (envelope, outcome) in batch.iter().zip(&outcomes) {
            if matches!(outcome, Applied::New(_)) {
                handoff_bus::metrics::routed(envelope);
            }
        }
        for (outcome, seconds) in settled {
            handoff_bus::metrics::handoff_settled(outcome, seconds);
        }
        Ok(outcomes)
    }

    /// Applies one event's effects inside the batch's transaction: loads what the machine
    /// needs, lets it decide, applies its steps. `false`: a duplicate by another key.
    async fn dispatch(&self, work: &mut Work<'_>) -> anyhow::Result<bool> {
        let envelope = work.cause;
        let body = match &envelope.body {
            Some(Body::Parked(p)) => {
                insert_dead_letter(work.tx, &Parking::from_event(envelope, p)).await?;
                return Ok(true);
            }
            Some(body) => body,
            None => {
                tracing::error!(kind = envelope.kind(), "not an event; ignored");
                return Ok(true);
            }
        };
        let member = match body {
            Body::InboundMessage(m) => {
                let member_id: Uuid = envelope.member_id.parse()?;
                let profile: Value = serde_json::from_str(&m.profile_json).unwrap_or(json!({}));
                store::upsert_member(
                    &mut **work.tx,
                    member_id,
                    &envelope.channel,
                    &m.external_id,
                    &profile,
                )
                .await?
            }
            Body::BotReply(r) if !r.profile_json.is_empty() || !r.meta_json.is_empty() => {
                let member = self.member(work).await?;
                let object = |text: &str| match serde_json::from_str::<Value>(text) {
                    Ok(v @ Value::Object(_)) => Ok(v),
                    _ if text.is_empty() => Ok(json!({})),
                    _ => Err(permanent(format!("`{text}` is not a JSON object"))),
                };
                store::merge_member(
                    &mut **work.tx,
                    member.id,
                    &object(&r.profile_json)?,
                    &object(&r.meta_json)?,
                )
                .await?
            }
            _ => self.member(work).await?,
        };
        let conversation = store::open_conversation(&mut **work.tx, member.id).await?;
        let catalog = self.catalog.load();
        let inlet = catalog
            .channels
            .get(&member.channel_id)
            .cloned()
            .ok_or_else(|| {
                permanent(format!("channel `{}` is not configured", member.channel_id))
            })?;
        let outlet = conversation
            .as_ref()
            .and_then(|c| catalog.channels.get(&c.outlet_channel_id))
            .cloned();
        let handoff_to = catalog.platforms.handoff_target(&inlet);
        let facts = Facts {
            inlet: &inlet,
            conversation: conversation.as_ref(),
            outlet: outlet.as_deref(),
            handoff_to,
            source: &envelope.channel,
            named_conversation: &envelope.conversation_id,
        };
        let default_content = Content::default();
        let event = match body {
            Body::InboundMessage(m) => {
                Event::Inbound(m.content.as_ref().unwrap_or(&default_content))
            }
            Body::BotReply(r) => Event::BotReply(r),
            Body::AgentMessage(m) => {
                Event::AgentMessage(m.content.as_ref().unwrap_or(&default_content))
            }
            Body::AgentCommand(c) => Event::AgentCommand {
                content: c.content.as_ref().unwrap_or(&default_content),
                reference: &c.conversation_ref,
            },
            Body::HandoffRequested(r) => {
                Event::HandoffRequested(r.details.clone().unwrap_or_default())
            }
            Body::HandoffAccepted(a) => Event::HandoffAccepted {
                external_id: &a.external_conversation_id,
            },
            Body::HandoffFailed(f) => Event::HandoffFailed {
                error: json!({
                    "reason": if f.code.is_empty() { "livechat_failed" } else { f.code.as_str() },
                    "status": f.status,
                    "message": storable(&f.reason),
                }),
            },
            Body::ConversationTimeout(t) => Event::Timeout {
                state: &t.state,
                reason: &t.reason,
            },
            Body::OperatorClose(c) => Event::OperatorClose { reason: &c.reason },
            Body::RelayFailed(f) => Event::RelayFailed {
                content: f.content.as_ref().unwrap_or(&default_content),
                error: json!({"reason": storable(&f.reason), "status": f.status}),
            },
            Body::DeliveryFailed(f) => Event::DeliveryFailed {
                content: f.content.as_ref(),
                detail: json!({"reason": storable(&f.reason), "status": f.status}),
            },
            Body::BotFailed(f) => Event::BotFailed { reason: &f.reason },
            Body::CustomerLeft(_) => Event::CustomerLeft,
            _ => {
                tracing::error!(kind = envelope.kind(), "not an event; ignored");
                return Ok(true);
            }
        };
        let steps = machine::decide(&facts, event);
        self.apply(work, &member, &inlet, steps).await
    }

    /// Applies the machine's steps in order. A transition whose compare-and-set finds the
    /// state moved ends the steps; a duplicate platform message id ends the event with no
    /// effect at all (`false`).
    async fn apply(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        inlet: &Channel,
        steps: Vec<Step>,
    ) -> anyhow::Result<bool> {
        for step in steps {
            match step {
                Step::Record { line, first } => {
                    let content = content_to_response(&line.content);
                    let recorded = work
                        .record(
                            member.id,
                            line.conversation,
                            &line.channel,
                            line.author,
                            &content,
                            line.held,
                        )
                        .await?;
                    if first && !recorded {
                        return Ok(false);
                    }
                }
                Step::Touch(conversation) => {
                    sqlx::query("UPDATE conversations SET last_activity_at = now() WHERE id = $1")
                        .bind(conversation)
                        .execute(&mut **work.tx)
                        .await?;
                }
                Step::OpenHandoff { outlet, details } => {
                    if !self
                        .open_handoff(work, member, inlet, &outlet, details)
                        .await?
                    {
                        tracing::info!(member = %member.id, "handoff asked while one is open; ignored");
                        return Ok(true);
                    }
                }
                Step::BecomeLive {
                    conversation,
                    external_id,
                } => {
                    let waited: Option<f64> = sqlx::query_scalar(
                        "UPDATE conversations SET state = 'live',
                           external_id = COALESCE(NULLIF($2, ''), external_id),
                           state_changed_at = now(), last_activity_at = now()
                         WHERE id = $1 AND state = 'pending'
                         RETURNING EXTRACT(EPOCH FROM now() - opened_at)::float8",
                    )
                    .bind(conversation)
                    .bind(&external_id)
                    .fetch_optional(&mut **work.tx)
                    .await?;
                    let Some(waited) = waited else {
                        return Ok(true);
                    };
                    work.settled.push(("accepted", waited));
                }
                Step::Close {
                    conversation,
                    from,
                    reason,
                } => {
                    let lasted: Option<f64> = sqlx::query_scalar(
                        "UPDATE conversations SET state = 'closed', closed_at = now(),
                           state_changed_at = now(), close_reason = $3
                         WHERE id = $1 AND state = $2
                         RETURNING EXTRACT(EPOCH FROM now() - opened_at)::float8",
                    )
                    .bind(conversation)
                    .bind(from.as_str())
                    .bind(&reason)
                    .fetch_optional(&mut **work.tx)
                    .await?;
                    let Some(lasted) = lasted else {
                        return Ok(true);
                    };
                    // A handoff closed before anyone took it went back to the bot.
                    let outcome = match from.as_str() {
                        "pending" => "returned_to_bot",
                        _ => "closed",
                    };
                    work.settled.push((outcome, lasted));
                }
                Step::IfOverdue {
                    conversation,
                    state,
                    limit_secs,
                } => {
                    let overdue: bool = sqlx::query_scalar(
                        "SELECT CASE WHEN $2 = 'pending' THEN state_changed_at ELSE last_activity_at END
                                <= now() - make_interval(secs => $3)
                         FROM conversations WHERE id = $1",
                    )
                    .bind(conversation)
                    .bind(state.as_str())
                    .bind(limit_secs as f64)
                    .fetch_one(&mut **work.tx)
                    .await?;
                    if !overdue {
                        return Ok(true);
                    }
                }
                Step::ReleaseHeld { conversation, to } => {
                    for content in release_held(work, conversation).await? {
                        let command = match &to {
                            Release::Outlet(outlet) => Command::Relay {
                                outlet: outlet.clone(),
                                conversation,
                                live: true,
                                content,
                            },
                            Release::Bot(None) => continue,
                            Release::Bot(Some(bot)) => Command::ToBot {
                                bot: bot.clone(),
                                live: false,
                                send: SendToBot {
                                    content: Some(content),
                                    ..Default::default()
                                },
                            },
                        };
                        self.send(work, member, command)?;
                    }
                }
                Step::Send(command) => self.send(work, member, command)?,
                Step::Ignore(why) => {
                    tracing::info!(member = %member.id, kind = work.cause.kind(), "{why}; ignored");
                }
            }
        }
        Ok(true)
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

    /// Queues a command for the service that serves its channel's platform.
    fn send(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        command: Command,
    ) -> anyhow::Result<()> {
        let (channel, conversation, body) = match command {
            Command::ToBot {
                bot,
                live,
                mut send,
            } => {
                send.member = Some(member.to_proto(live));
                (bot, None, Body::SendToBot(send))
            }
            Command::ToMember { live, content } => (
                member.channel_id.clone(),
                None,
                Body::DeliverToMember(DeliverToMember {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                }),
            ),
            Command::Relay {
                outlet,
                conversation,
                live,
                content,
            } => (
                outlet,
                Some(conversation),
                Body::RelayToOutlet(RelayToOutlet {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                }),
            ),
            Command::ToOutlet {
                outlet,
                conversation,
                live,
                content,
                reference,
            } => (
                outlet,
                Some(conversation),
                Body::DeliverToOutlet(DeliverToOutlet {
                    member: Some(member.to_proto(live)),
                    content: Some(content),
                    conversation_ref: reference,
                }),
            ),
        };
        work.command(self.service_of(&channel)?, &channel, conversation, body);
        Ok(())
    }

    /// BOT → PENDING: the conversation, its HANDOFF_REQUESTED line and the Livechat request.
    /// `false` when the member already has an open conversation.
    async fn open_handoff(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        inlet: &Channel,
        outlet: &str,
        mut details: HandoffDetails,
    ) -> anyhow::Result<bool> {
        if details.summary.is_empty() {
            details.summary = store::dialog_summary(&mut **work.tx, member.id).await?;
        }
        let conv_id: Uuid = derived_id(&work.cause.event_id, "conversation", 0).parse()?;
        let token = history_token();
        let ttl = inlet.handoff.history_link_ttl_secs as f64;
        let meta: Value = serde_json::from_str(&details.meta_json).unwrap_or(json!({}));
        let opened = sqlx::query(
            "INSERT INTO conversations (id, member_id, state, outlet_channel_id, summary,
               group_name, label, meta, trigger, history_token, history_expires_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9,
                     now() + make_interval(secs => $10))
             ON CONFLICT DO NOTHING",
        )
        .bind(conv_id)
        .bind(member.id)
        .bind(outlet)
        .bind(&details.summary)
        .bind(&details.group_name)
        .bind(&details.label)
        .bind(&meta)
        .bind(&details.trigger)
        .bind(&token)
        .bind(ttl)
        .execute(&mut **work.tx)
        .await?
        .rows_affected()
            == 1;
        if !opened {
            return Ok(false);
        }
        let content = event_content(
            "HANDOFF_REQUESTED",
            json!({"trigger": details.trigger, "summary": details.summary, "groupName": details.group_name}),
        );
        work.record(
            member.id,
            Some(conv_id),
            &member.channel_id,
            "system",
            &content_to_response(&content),
            false,
        )
        .await?;
        work.command(
            self.service_of(outlet)?,
            outlet,
            Some(conv_id),
            Body::RequestLivechat(RequestLivechat {
                member: Some(member.to_proto(false)),
                details: Some(details),
                chat_history_url: format!("{}/history/{token}", self.public_url),
            }),
        );
        Ok(true)
    }

    /// Writes the batch's commands to the outbox in one statement, in order.
    async fn write_outbox(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commands: Vec<(usize, Service, Envelope)>,
    ) -> anyhow::Result<Vec<(usize, OutboxRow)>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(commands.len());
        let mut members = Vec::with_capacity(commands.len());
        let mut partitions = Vec::with_capacity(commands.len());
        let mut subjects = Vec::with_capacity(commands.len());
        let mut payloads = Vec::with_capacity(commands.len());
        for (_, service, envelope) in &commands {
            ids.push(envelope.event_id.parse::<Uuid>()?);
            members.push(envelope.member_id.parse::<Uuid>()?);
            partitions.push(i32::from(self.bus.partition_of(&envelope.member_id)));
            subjects.push(self.bus.command_subject(*service, envelope)?);
            // One that could never be published parks the event (its member moves on)
            // rather than being retried for ever.
            let payload = self.bus.encode_fitting(envelope).map_err(|e| match e {
                PublishError::TooLarge { size, limit } => permanent(format!(
                    "its `{}` command ({size} bytes) is larger than a bus message ({limit} bytes)",
                    envelope.kind()
                )),
                other => anyhow::Error::from(other),
            })?;
            payloads.push(payload);
        }
        let seqs: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO outbox (partition, member_id, command_id, subject, payload)
             SELECT t.pa, t.m, t.i, t.s, t.p
             FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::text[], $5::bytea[])
                  WITH ORDINALITY AS t(pa, m, i, s, p, o)
             ORDER BY o
             RETURNING seq",
        )
        .bind(&partitions)
        .bind(&members)
        .bind(&ids)
        .bind(&subjects)
        .bind(&payloads)
        .fetch_all(&mut **tx)
        .await?;
        let mut seqs = seqs;
        // RETURNING does not promise the insertion order; the sequence does.
        seqs.sort_unstable();
        Ok(commands
            .into_iter()
            .zip(seqs)
            .zip(ids.into_iter().zip(subjects).zip(payloads))
            .map(|(((i, _, _), seq), ((id, subject), payload))| {
                (
                    i,
                    OutboxRow {
                        seq,
                        id: id.to_string(),
                        subject,
                        payload: Bytes::from(payload),
                    },
                )
            })
            .collect())
    }

    /// Publishes outbox rows (pipelined, in order); the next clean-up deletes them.
    async fn publish(&self, rows: Vec<(OutboxRow, HeaderMap)>) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = rows.iter().map(|(r, _)| r.seq).collect();
        self.bus
            .publish_all(
                rows.into_iter()
                    .map(|(r, headers)| (r.subject, headers, r.payload)),
            )
            .await?;
        self.published.lock().expect("not poisoned").extend(seqs);
        Ok(())
    }

    /// Publishes whatever an earlier attempt (or a crashed replica) left in the outbox for
    /// a partition or one member, oldest first.
    async fn flush_outbox(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        let query = match scope {
            Scope::Partition(p) => sqlx::query(
                "SELECT seq, command_id, subject, payload FROM outbox
                 WHERE partition = $1 ORDER BY seq",
            )
            .bind(i32::from(p)),
            Scope::Member(m) => sqlx::query(
                "SELECT seq, command_id, subject, payload FROM outbox
                 WHERE member_id = $1 ORDER BY seq",
            )
            .bind(m.parse::<Uuid>().unwrap_or_default()),
        };
        let rows = query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|r| {
                let row = OutboxRow {
                    seq: r.get("seq"),
                    id: r.get::<Uuid, _>("command_id").to_string(),
                    subject: r.get("subject"),
                    payload: Bytes::from(r.get::<Vec<u8>, _>("payload")),
                };
                let headers = handoff_bus::headers(&row.id);
                (row, headers)
            })
            .collect();
        self.publish(rows).await
    }

    async fn member(&self, work: &mut Work<'_>) -> anyhow::Result<MemberRow> {
        let id: Uuid = work.cause.member_id.parse().map_err(|_| {
            permanent(format!(
                "member id `{}` is not a UUID",
                work.cause.member_id
            ))
        })?;
        store::find_member(&mut **work.tx, id)
            .await?
            .ok_or_else(|| permanent(format!("member {id} is unknown")))
    }
}

/// Customer messages held while PENDING, oldest first, no longer held.
async fn release_held(work: &mut Work<'_>, conv: Uuid) -> anyhow::Result<Vec<Content>> {
    let rows = sqlx::query(
        "WITH released AS (
            UPDATE messages SET held = false WHERE conversation_id = $1 AND held
            RETURNING id, content)
         SELECT content FROM released ORDER BY id",
    )
    .bind(conv)
    .fetch_all(&mut **work.tx)
    .await?;
    // A line is stored as the platform sent it when the model has no form for it (a
    // `type` the model does not know, even one that is not a string): it is released in
    // that same raw form, as it would have been relayed had the chat been live already.
    // Refusing it would park the desk's acceptance and strand the member in PENDING.
    Ok(rows
        .iter()
        .map(|r| {
            let stored = r.get::<Value, _>("content");
            content_from_response(&stored).unwrap_or_else(|_| Content {
                kind: None,
                raw_json: stored.to_string(),
            })
        })
        .collect())
}

fn history_token() -> String {
    use rand::Rng as _;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn retry(e: &anyhow::Error) -> Handled {
    Handled::Retry {
        after: Duration::from_millis(500),
        reason: format!("{e:#}"),
    }
}

/// Keeps a parked message in the dead-letter table (once per parking id).
async fn insert_dead_letter(conn: &mut sqlx::PgConnection, p: &Parking) -> sqlx::Result<()> {
    let parked_id: Uuid = p.parked_id.parse().unwrap_or_else(|_| Uuid::now_v7());
    sqlx::query(
        "INSERT INTO dead_letters (parked_id, service, subject, member_id, event_id, kind,
           reason, payload, truncated)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (parked_id) DO NOTHING",
    )
    .bind(parked_id)
    .bind(storable(&p.service))
    .bind(storable(&p.subject))
    .bind(storable(&p.member_id))
    .bind(storable(&p.original_event_id))
    .bind(storable(&p.original_kind))
    .bind(storable(&p.reason))
    .bind(p.payload.as_ref())
    .bind(p.truncated)
    .execute(conn)
    .await?;
    Ok(())
}

impl Handler for Engine {
    async fn park(&self, parking: &Parking) -> Option<anyhow::Result<()>> {
        let stored = async {
            let mut conn = self.pool.acquire().await?;
            insert_dead_letter(&mut conn, parking).await?;
            Ok(())
        };
        Some(stored.await)
    }

    async fn partition_started(&self, partition: u16) {
        if let Err(e) = self.flush_outbox(Scope::Partition(partition)).await {
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

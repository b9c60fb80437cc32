//! The conversation state machine, applied one event at a time per partition.
//!
//! ```text
//!   BOT ──handoff──▶ PENDING ──livechat 2xx──▶ LIVE ──done / idle timeout──▶ BOT
//!    ▲                  │                        │
//!    └─livechat fails / pending timeout          └─relay fails → bot (relayMessageError)
//! ```
//! BOT is "no open conversation". Every transition is a compare-and-set on the
//! conversation's state, so a duplicated or late event cannot apply twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use handoff_bus::{Bus, Handled, Handler, Parking, Target, derived_id, now_ms, storable};
use handoff_config::{Channel, Channels};
use handoff_platforms::custom::{content_from_response, content_to_response};
use handoff_proto::v1::content;
use handoff_proto::{
    AgentCommand, AgentMessage, Body, BotReply, Content, ConversationTimeout, DeliverToMember,
    DeliverToOutlet, Envelope, HandoffDetails, InboundMessage, Message as _, RelayToOutlet,
    RequestLivechat, SendToBot, Text,
};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Row as _, Transaction};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::{self, ConvState, ConversationRow, MemberRow};

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
    pub channels: Arc<Channels>,
    public_url: String,
    jobs: mpsc::UnboundedSender<Job>,
    queue: Mutex<mpsc::UnboundedReceiver<Job>>,
    /// Outbox rows JetStream has, waiting for the next clean-up.
    published: std::sync::Mutex<Vec<i64>>,
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
    commands: Vec<(Target, Envelope)>,
    messages: usize,
}

impl Work<'_> {
    /// Queues a command; its id derives from the cause, so re-processing re-emits it as-is.
    fn command(&mut self, target: Target, channel: &str, conversation: Option<Uuid>, body: Body) {
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
            body: Some(body),
            ..Default::default()
        };
        self.commands.push((target, envelope));
    }

    /// Queues a relay of `content` to the outlet serving conversation `conversation`.
    fn relay(
        &mut self,
        outlet: &str,
        conversation: Uuid,
        member: &MemberRow,
        live: bool,
        content: Content,
    ) {
        self.command(
            Target::Outlet,
            outlet,
            Some(conversation),
            Body::RelayToOutlet(RelayToOutlet {
                member: Some(member.to_proto(live)),
                content: Some(content),
            }),
        );
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

fn text_content(text: &str) -> Content {
    Content {
        kind: Some(content::Kind::Text(Text { text: text.into() })),
        raw_json: String::new(),
    }
}

fn event_content(event: &str, detail: Value) -> Content {
    let mut v = json!({"type": "EVENT", "event": event});
    if let (Value::Object(m), Value::Object(d)) = (&mut v, detail) {
        m.extend(d);
    }
    content_from_response(&v).expect("an object with a type")
}

impl Engine {
    pub fn new(pool: PgPool, bus: Bus, channels: Arc<Channels>, public_url: String) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        Self {
            pool,
            bus,
            channels,
            public_url,
            jobs,
            queue: Mutex::new(queue),
            published: std::sync::Mutex::new(Vec::new()),
        }
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
                for job in batch {
                    Box::pin(self.run_batch(vec![job])).await;
                }
            }
        }
    }

    fn channel(&self, id: &str) -> anyhow::Result<&Arc<Channel>> {
        self.channels
            .get(id)
            .ok_or_else(|| permanent(format!("channel `{id}` is not configured")))
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
        let mut commands: Vec<(usize, Target, Envelope)> = Vec::new();
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
            };
            // `false`: a duplicate by another key (the same platform message id under a new
            // event id); it was detected before any effect, so nothing is published.
            if self.dispatch(&mut work).await? {
                commands.extend(work.commands.into_iter().map(|(t, e)| (i, t, e)));
            }
            outcomes.push(Applied::New(Vec::new()));
        }
        for (i, row) in self.write_outbox(&mut tx, commands).await? {
            if let Applied::New(rows) = &mut outcomes[i] {
                rows.push(row);
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Applies one event's effects inside the batch's transaction.
    async fn dispatch(&self, work: &mut Work<'_>) -> anyhow::Result<bool> {
        let envelope = work.cause;
        Ok(match &envelope.body {
            Some(Body::InboundMessage(m)) => self.on_inbound(work, m).await?,
            Some(Body::BotReply(r)) => self.on_bot_reply(work, r).await?,
            Some(Body::AgentMessage(m)) => self.on_agent_message(work, m).await?,
            Some(Body::AgentCommand(c)) => self.on_agent_command(work, c).await?,
            Some(Body::HandoffRequested(r)) => {
                let member = self.member(work).await?;
                let details = r.details.clone().unwrap_or_default();
                self.open_handoff(work, &member, details).await?;
                true
            }
            Some(Body::HandoffAccepted(a)) => {
                self.on_handoff_accepted(work, &a.external_conversation_id)
                    .await?
            }
            Some(Body::HandoffFailed(f)) => {
                let error = json!({"reason": "livechat_failed", "status": f.status, "message": storable(&f.reason)});
                self.on_handoff_ended_before_live(work, "livechat_failed", error)
                    .await?
            }
            Some(Body::ConversationTimeout(t)) => self.on_timeout(work, t).await?,
            Some(Body::Parked(p)) => {
                insert_dead_letter(work.tx, &Parking::from_event(envelope, p)).await?;
                true
            }
            Some(Body::RelayFailed(f)) => {
                let member = self.member(work).await?;
                let error = json!({"reason": storable(&f.reason), "status": f.status});
                let content = f.content.clone().unwrap_or_default();
                self.record_system(work, &member, "RELAY_FAILED", error.clone())
                    .await?;
                self.to_bot(
                    work,
                    &member,
                    false,
                    SendToBot {
                        content: Some(content),
                        relay_message_error_json: error.to_string(),
                        ..Default::default()
                    },
                )?;
                true
            }
            Some(Body::DeliveryFailed(f)) => {
                let member = self.member(work).await?;
                let detail = json!({"reason": storable(&f.reason), "status": f.status});
                self.record_system(work, &member, "DELIVERY_FAILED", detail.clone())
                    .await?;
                // An agent's message that never reached the customer: the agent is told.
                // (Not when the failed delivery was to the outlet itself.)
                if work.cause.channel == member.channel_id
                    && let Some(c) = store::open_conversation(&mut **work.tx, member.id)
                        .await?
                        .filter(|c| c.state == ConvState::Live)
                {
                    let mut notice = detail;
                    if let Some(content) = &f.content {
                        notice["message"] = content_to_response(content);
                    }
                    let notice = event_content("DELIVERY_FAILED", notice);
                    work.relay(&c.outlet_channel_id, c.id, &member, true, notice);
                }
                true
            }
            Some(Body::BotFailed(f)) => {
                let member = self.member(work).await?;
                self.record_system(
                    work,
                    &member,
                    "BOT_FAILED",
                    json!({"reason": storable(&f.reason)}),
                )
                .await?;
                true
            }
            _ => {
                tracing::error!(kind = envelope.kind(), "not an event; ignored");
                true
            }
        })
    }

    /// Writes the batch's commands to the outbox in one statement, in order.
    async fn write_outbox(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commands: Vec<(usize, Target, Envelope)>,
    ) -> anyhow::Result<Vec<(usize, OutboxRow)>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(commands.len());
        let mut members = Vec::with_capacity(commands.len());
        let mut partitions = Vec::with_capacity(commands.len());
        let mut subjects = Vec::with_capacity(commands.len());
        let mut payloads = Vec::with_capacity(commands.len());
        for (_, target, envelope) in &commands {
            ids.push(envelope.event_id.parse::<Uuid>()?);
            members.push(envelope.member_id.parse::<Uuid>()?);
            partitions.push(i32::from(self.bus.partition_of(&envelope.member_id)));
            subjects.push(self.bus.command_subject(*target, envelope)?);
            payloads.push(envelope.encode_to_vec());
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

    fn to_bot(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        live: bool,
        mut cmd: SendToBot,
    ) -> anyhow::Result<()> {
        let inlet = self.channel(&member.channel_id)?;
        let Some(bot) = inlet.bot.clone() else {
            return Ok(());
        };
        cmd.member = Some(member.to_proto(live));
        work.command(Target::Bot, &bot, None, Body::SendToBot(cmd));
        Ok(())
    }

    fn to_member(&self, work: &mut Work<'_>, member: &MemberRow, live: bool, content: Content) {
        work.command(
            Target::Inlet,
            &member.channel_id,
            None,
            Body::DeliverToMember(DeliverToMember {
                member: Some(member.to_proto(live)),
                content: Some(content),
            }),
        );
    }

    async fn record_system(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        event: &str,
        detail: Value,
    ) -> anyhow::Result<()> {
        let conv = store::open_conversation(&mut **work.tx, member.id).await?;
        let content = content_to_response(&event_content(event, detail));
        work.record(
            member.id,
            conv.map(|c| c.id),
            &member.channel_id,
            "system",
            &content,
            false,
        )
        .await?;
        Ok(())
    }

    async fn on_inbound(&self, work: &mut Work<'_>, m: &InboundMessage) -> anyhow::Result<bool> {
        let inlet = self.channel(&work.cause.channel)?.clone();
        let member_id: Uuid = work.cause.member_id.parse()?;
        let profile: Value = serde_json::from_str(&m.profile_json).unwrap_or(json!({}));
        let member = store::upsert_member(
            &mut **work.tx,
            member_id,
            &inlet.id,
            &m.external_id,
            &profile,
        )
        .await?;
        let conv = store::open_conversation(&mut **work.tx, member.id).await?;
        let content = m.content.clone().unwrap_or_default();
        let held = matches!(&conv, Some(c) if c.state == ConvState::Pending);
        let stored = content_to_response(&content);
        if !work
            .record(
                member.id,
                conv.as_ref().map(|c| c.id),
                &inlet.id,
                "customer",
                &stored,
                held,
            )
            .await?
        {
            return Ok(false);
        }
        match conv {
            Some(c) if c.state == ConvState::Live => {
                touch(work, c.id).await?;
                work.relay(&c.outlet_channel_id, c.id, &member, true, content);
            }
            // Held until the outlet accepts (then relayed) or fails (then given to the bot).
            Some(_) => {}
            None => {
                if let Some(trigger) = handoff_trigger(&inlet, &content) {
                    let details = HandoffDetails {
                        summary: format!("Customer asked for a human ({trigger})"),
                        trigger: trigger.into(),
                        meta_json: "{}".into(),
                        ..Default::default()
                    };
                    self.open_handoff(work, &member, details).await?;
                } else {
                    self.to_bot(
                        work,
                        &member,
                        false,
                        SendToBot {
                            content: Some(content),
                            ..Default::default()
                        },
                    )?;
                }
            }
        }
        Ok(true)
    }

    /// BOT -> PENDING, and a Livechat API request to the inlet's outlet. A member who is
    /// already handed off stays as they are.
    async fn open_handoff(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        details: HandoffDetails,
    ) -> anyhow::Result<()> {
        let inlet = self.channel(&member.channel_id)?.clone();
        let Some(outlet_id) = inlet.outlet.clone() else {
            let error =
                json!({"reason": "no_outlet", "message": "this inlet has no outlet configured"});
            self.record_system(work, member, "HANDOFF_FAILED", error.clone())
                .await?;
            self.to_bot(
                work,
                member,
                false,
                SendToBot {
                    content: Some(event_content("HANDOFF_FAILED", error.clone())),
                    handoff_error_json: error.to_string(),
                    ..Default::default()
                },
            )?;
            return Ok(());
        };
        let mut details = details;
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
        .bind(&outlet_id)
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
            tracing::info!(member = %member.id, "handoff asked while one is open; ignored");
            return Ok(());
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
            Target::Outlet,
            &outlet_id,
            Some(conv_id),
            Body::RequestLivechat(RequestLivechat {
                member: Some(member.to_proto(false)),
                details: Some(details),
                chat_history_url: format!("{}/history/{token}", self.public_url),
            }),
        );
        Ok(())
    }

    async fn on_bot_reply(&self, work: &mut Work<'_>, r: &BotReply) -> anyhow::Result<bool> {
        let mut member = self.member(work).await?;
        if !r.profile_json.is_empty() || !r.meta_json.is_empty() {
            let object = |text: &str| match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ if text.is_empty() => Ok(json!({})),
                _ => Err(permanent(format!("`{text}` is not a JSON object"))),
            };
            member = store::merge_member(
                &mut **work.tx,
                member.id,
                &object(&r.profile_json)?,
                &object(&r.meta_json)?,
            )
            .await?;
        }
        // A human answering inside the bot's own platform (Selarti's panel) is an agent.
        let author = if r.author == "agent" { "agent" } else { "bot" };
        let conv = store::open_conversation(&mut **work.tx, member.id).await?;
        let live = matches!(&conv, Some(c) if c.state == ConvState::Live);
        let bot_channel = work.cause.channel.clone();
        for response in &r.responses {
            work.record(
                member.id,
                conv.as_ref().map(|c| c.id),
                &bot_channel,
                author,
                &content_to_response(response),
                false,
            )
            .await?;
            if r.agent_conversation_id.is_empty() {
                self.to_member(work, &member, live, response.clone());
            } else if let Some(c) = &conv {
                // The answer to an agent command goes back to the live chat.
                work.command(
                    Target::Outlet,
                    &c.outlet_channel_id,
                    Some(c.id),
                    Body::DeliverToOutlet(DeliverToOutlet {
                        member: Some(member.to_proto(live)),
                        content: Some(response.clone()),
                        conversation_ref: r.agent_conversation_id.clone(),
                    }),
                );
            }
        }
        if let Some(details) = r.handoff.clone() {
            if conv.is_none() {
                self.open_handoff(work, &member, details).await?;
            }
        } else if r.close
            && let Some(c) = conv
        {
            self.close(work, &member, &c, "bot_closed").await?;
        }
        Ok(true)
    }

    async fn on_handoff_accepted(
        &self,
        work: &mut Work<'_>,
        external_id: &str,
    ) -> anyhow::Result<bool> {
        let member = self.member(work).await?;
        let conv_id: Uuid = work.cause.conversation_id.parse()?;
        let became_live = sqlx::query(
            "UPDATE conversations SET state = 'live', external_id = COALESCE(NULLIF($2, ''), external_id),
               state_changed_at = now(), last_activity_at = now()
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(conv_id)
        .bind(external_id)
        .execute(&mut **work.tx)
        .await?
        .rows_affected()
            == 1;
        if !became_live {
            tracing::info!(conversation = %conv_id, "late livechat acceptance ignored");
            return Ok(true);
        }
        self.record_system(
            work,
            &member,
            "LIVE_CHAT_STARTED",
            json!({"ticket": external_id}),
        )
        .await?;
        let outlet = sqlx::query_scalar::<_, String>(
            "SELECT outlet_channel_id FROM conversations WHERE id = $1",
        )
        .bind(conv_id)
        .fetch_one(&mut **work.tx)
        .await?;
        for content in release_held(work, conv_id).await? {
            work.relay(&outlet, conv_id, &member, true, content);
        }
        Ok(true)
    }

    /// PENDING -> BOT (Livechat API failed, or nobody answered in time): the bot is told
    /// why and gets the messages the customer sent meanwhile.
    async fn on_handoff_ended_before_live(
        &self,
        work: &mut Work<'_>,
        reason: &str,
        error: Value,
    ) -> anyhow::Result<bool> {
        let member = self.member(work).await?;
        let conv_id: Uuid = work.cause.conversation_id.parse()?;
        let closed = cas_close(work, conv_id, "pending", reason).await?;
        if !closed {
            return Ok(true);
        }
        work.record(
            member.id,
            Some(conv_id),
            &member.channel_id,
            "system",
            &content_to_response(&event_content("HANDOFF_FAILED", error.clone())),
            false,
        )
        .await?;
        self.to_bot(
            work,
            &member,
            false,
            SendToBot {
                content: Some(event_content("HANDOFF_FAILED", error.clone())),
                handoff_error_json: error.to_string(),
                ..Default::default()
            },
        )?;
        for content in release_held(work, conv_id).await? {
            self.to_bot(
                work,
                &member,
                false,
                SendToBot {
                    content: Some(content),
                    ..Default::default()
                },
            )?;
        }
        Ok(true)
    }

    async fn on_agent_message(
        &self,
        work: &mut Work<'_>,
        m: &AgentMessage,
    ) -> anyhow::Result<bool> {
        let member = self.member(work).await?;
        let Some(conv) = store::open_conversation(&mut **work.tx, member.id)
            .await?
            .filter(|c| c.state == ConvState::Live)
        else {
            tracing::warn!(member = %member.id, "agent message for a member not in a live chat dropped");
            return Ok(true);
        };
        let content = m.content.clone().unwrap_or_default();
        if !work
            .record(
                member.id,
                Some(conv.id),
                &work.cause.channel.clone(),
                "agent",
                &content_to_response(&content),
                false,
            )
            .await?
        {
            return Ok(false);
        }
        touch(work, conv.id).await?;
        self.to_member(work, &member, true, content);
        Ok(true)
    }

    async fn on_agent_command(
        &self,
        work: &mut Work<'_>,
        c: &AgentCommand,
    ) -> anyhow::Result<bool> {
        let member = self.member(work).await?;
        let Some(conv) = store::open_conversation(&mut **work.tx, member.id).await? else {
            tracing::warn!(member = %member.id, "agent command without an open conversation dropped");
            return Ok(true);
        };
        let outlet = self.channel(&conv.outlet_channel_id)?.clone();
        let content = c.content.clone().unwrap_or_default();
        if !work
            .record(
                member.id,
                Some(conv.id),
                &outlet.id,
                "agent",
                &content_to_response(&content),
                false,
            )
            .await?
        {
            return Ok(false);
        }
        let text = match &content.kind {
            Some(content::Kind::Text(t)) => t.text.trim().to_string(),
            Some(content::Kind::Postback(p)) => p.payload.trim().to_string(),
            _ => String::new(),
        };
        if text.eq_ignore_ascii_case(outlet.live_chat.end_command.trim()) {
            self.close(work, &member, &conv, "agent_ended").await?;
        } else {
            touch(work, conv.id).await?;
            let reference = if c.conversation_ref.is_empty() {
                conv.id.to_string()
            } else {
                c.conversation_ref.clone()
            };
            self.to_bot(
                work,
                &member,
                conv.state == ConvState::Live,
                SendToBot {
                    content: Some(content),
                    agent_conversation_id: reference,
                    ..Default::default()
                },
            )?;
        }
        Ok(true)
    }

    /// LIVE (or PENDING) -> BOT: the customer is told (the outlet's end text), the bot is told.
    async fn close(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        conv: &ConversationRow,
        reason: &str,
    ) -> anyhow::Result<()> {
        if !cas_close(work, conv.id, conv.state.as_str(), reason).await? {
            return Ok(());
        }
        let ended = json!({"reason": reason});
        work.record(
            member.id,
            Some(conv.id),
            &member.channel_id,
            "system",
            &content_to_response(&event_content("LIVE_CHAT_ENDED", ended.clone())),
            false,
        )
        .await?;
        let outlet = self.channel(&conv.outlet_channel_id)?.clone();
        if conv.state == ConvState::Live && !outlet.live_chat.end_text.is_empty() {
            self.to_member(
                work,
                member,
                false,
                text_content(&outlet.live_chat.end_text),
            );
        }
        // Anything still held goes to the bot, in order.
        for content in release_held(work, conv.id).await? {
            self.to_bot(
                work,
                member,
                false,
                SendToBot {
                    content: Some(content),
                    ..Default::default()
                },
            )?;
        }
        self.to_bot(
            work,
            member,
            false,
            SendToBot {
                content: Some(event_content("LIVE_CHAT_ENDED", ended.clone())),
                live_chat_ended_json: ended.to_string(),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    async fn on_timeout(
        &self,
        work: &mut Work<'_>,
        t: &ConversationTimeout,
    ) -> anyhow::Result<bool> {
        let member = self.member(work).await?;
        let Some(conv) = store::open_conversation(&mut **work.tx, member.id).await? else {
            return Ok(true);
        };
        if conv.id.to_string() != work.cause.conversation_id || conv.state.as_str() != t.state {
            return Ok(true);
        }
        // Still overdue now? A message may have arrived since the sweeper looked.
        let inlet = self.channel(&member.channel_id)?.clone();
        let limit = match conv.state {
            ConvState::Pending => inlet.handoff.pending_timeout_secs,
            ConvState::Live => inlet.handoff.live_idle_timeout_secs,
        } as f64;
        let overdue: bool = sqlx::query_scalar(
            "SELECT CASE WHEN state = 'pending' THEN state_changed_at ELSE last_activity_at END
                    <= now() - make_interval(secs => $2)
             FROM conversations WHERE id = $1",
        )
        .bind(conv.id)
        .bind(limit)
        .fetch_one(&mut **work.tx)
        .await?;
        if !overdue {
            return Ok(true);
        }
        match conv.state {
            ConvState::Pending => {
                let error = json!({"reason": t.reason, "message": "no agent accepted in time"});
                self.on_handoff_ended_before_live(work, &t.reason, error)
                    .await
            }
            ConvState::Live => {
                // The agent's side learns the chat is over too.
                let ended = event_content("LIVE_CHAT_ENDED", json!({"reason": t.reason}));
                work.relay(&conv.outlet_channel_id, conv.id, &member, false, ended);
                self.close(work, &member, &conv, &t.reason).await?;
                Ok(true)
            }
        }
    }
}

fn handoff_trigger(inlet: &Channel, content: &Content) -> Option<&'static str> {
    match &content.kind {
        Some(content::Kind::Text(t))
            if inlet
                .handoff
                .keywords
                .iter()
                .any(|k| k.trim().eq_ignore_ascii_case(t.text.trim())) =>
        {
            Some("keyword")
        }
        Some(content::Kind::Postback(p))
            if inlet.handoff.postbacks.iter().any(|k| k == &p.payload) =>
        {
            Some("postback")
        }
        _ => None,
    }
}

async fn touch(work: &mut Work<'_>, conv: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE conversations SET last_activity_at = now() WHERE id = $1")
        .bind(conv)
        .execute(&mut **work.tx)
        .await?;
    Ok(())
}

async fn cas_close(
    work: &mut Work<'_>,
    conv: Uuid,
    from: &str,
    reason: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE conversations SET state = 'closed', closed_at = now(), state_changed_at = now(),
           close_reason = $3
         WHERE id = $1 AND state = $2",
    )
    .bind(conv)
    .bind(from)
    .bind(reason)
    .execute(&mut **work.tx)
    .await?
    .rows_affected()
        == 1)
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
    rows.iter()
        .map(|r| content_from_response(&r.get::<Value, _>("content")).map_err(permanent))
        .collect()
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
        if self.jobs.send(job).is_err() {
            return retry(&anyhow::anyhow!("the router is shutting down"));
        }
        outcome
            .await
            .unwrap_or_else(|_| retry(&anyhow::anyhow!("the batch was abandoned")))
    }
}

//! The batch runtime: events queue up as jobs, workers take up to `MAX_BATCH` of them
//! (each of a different member) into one transaction, and each job learns its outcome.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context as _;
use handoff_bus::{Handled, Service};
use handoff_proto::Envelope;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outbox::{OUTBOX_CLEANUP, OutboxRow, Scope};
use super::work::{Pending, Work, push_line};
use super::{Engine, is_permanent, permanent, retry};
use crate::machine::Step;
use crate::store;

/// Events applied in one transaction at most.
const MAX_BATCH: usize = 16;

/// Transactions the router runs at once (each a batch).
const BATCH_WORKERS: usize = 8;

/// An event waiting for a batch, and where its outcome goes.
pub(super) struct Job {
    pub envelope: Envelope,
    pub span: tracing::Span,
    pub reply: oneshot::Sender<Handled>,
}

pub(super) enum Applied {
    New(Vec<OutboxRow>),
    Duplicate,
}

impl Engine {
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

    pub(super) async fn run_batch(&self, batch: Vec<Job>) {
        // A batch loads its members' state once, before any of its events applies, so it
        // holds one event per member. Lanes hand over one event per member at a time; should
        // two of a member meet anyway, they are applied one after the other, in order.
        let mut members = HashSet::new();
        if !batch
            .iter()
            .all(|j| members.insert(j.envelope.member_id.as_str()))
        {
            for job in batch {
                Box::pin(self.run_batch(vec![job])).await;
            }
            return;
        }
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

    /// Applies a batch of events (each of a different member) in one transaction, with a
    /// statement per step of the batch rather than per event: the member locks and the
    /// inbox, the members, their open conversations, the lines that decide duplicates,
    /// the other lines, the outbox; then one commit. Only what an event alone calls for
    /// (a handoff, a transition, a merge) is a statement of its own. Returns, per event,
    /// the commands to publish.
    async fn apply_batch(&self, batch: &[&Envelope]) -> anyhow::Result<Vec<Applied>> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("opening the batch's transaction")?;
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
        // what the previous owner may still be finishing).
        let fresh = store::inbox::lock_and_record(&mut *tx, &members, &ids)
            .await
            .with_context(|| {
                format!(
                    "locking {} members and recording their events",
                    members.len()
                )
            })?;
        let mut outcomes: Vec<Applied> = ids
            .iter()
            .map(|id| {
                if fresh.contains(id) {
                    Applied::New(Vec::new())
                } else {
                    Applied::Duplicate
                }
            })
            .collect();
        let new: Vec<(usize, &Envelope)> = batch
            .iter()
            .enumerate()
            .filter(|(i, _)| fresh.contains(&ids[*i]))
            .map(|(i, e)| (i, *e))
            .collect();
        let mut loaded = self
            .load(&mut tx, &new.iter().map(|(_, e)| *e).collect::<Vec<_>>())
            .await
            .with_context(|| format!("loading the members of {} events", new.len()))?;
        let mut plans = Vec::with_capacity(new.len());
        for (i, envelope) in new {
            let plan = self
                .plan(&mut tx, envelope, &mut loaded)
                .await
                .with_context(|| {
                    format!(
                        "deciding {} for member {}",
                        envelope.kind(),
                        envelope.member_id
                    )
                })?;
            if let Some(plan) = plan {
                plans.push((i, envelope, plan));
            }
        }
        // An event whose first line repeats a platform message id seen before is a
        // duplicate under a new event id: those lines go first, together, so such an event
        // is known before any of it applies.
        let mut firsts = store::messages::NewLines::default();
        let mut first_ids = Vec::with_capacity(plans.len());
        for (_, envelope, plan) in &plans {
            first_ids.push(match plan.steps.first() {
                Some(Step::Record { line, first: true }) => {
                    Some(push_line(&mut firsts, envelope, 0, plan.member.id, line))
                }
                _ => None,
            });
        }
        let recorded: HashSet<Uuid> = if firsts.is_empty() {
            HashSet::new()
        } else {
            store::messages::insert(&mut *tx, &firsts)
                .await
                .context("recording the first lines of the batch's messages")?
                .into_iter()
                .collect()
        };
        let mut pending = Pending::default();
        let mut commands: Vec<(usize, Service, Envelope)> = Vec::new();
        let mut settled = Vec::new();
        let mut csat = Vec::new();
        let mut timers = Vec::new();
        let mut lifecycle = Vec::new();
        for ((i, envelope, mut plan), first) in plans.into_iter().zip(first_ids) {
            let mut work = Work {
                tx: &mut tx,
                cause: envelope,
                commands: Vec::new(),
                messages: 0,
                settled: Vec::new(),
                csat: Vec::new(),
                timers: Vec::new(),
                lifecycle: Vec::new(),
                pending: &mut pending,
                epoch: plan.member.epoch,
            };
            if let Some(first) = first {
                if !recorded.contains(&first) {
                    // Detected before any effect: nothing of it is applied or published.
                    continue;
                }
                plan.steps.remove(0);
                work.messages = 1;
            }
            let applied = self
                .apply(&mut work, &plan.member, &plan.inlet, plan.steps)
                .await
                .with_context(|| {
                    format!(
                        "applying {} for member {}",
                        envelope.kind(),
                        envelope.member_id
                    )
                })?;
            if applied {
                commands.extend(work.commands.into_iter().map(|(t, e)| (i, t, e)));
            }
            settled.append(&mut work.settled);
            csat.append(&mut work.csat);
            timers.append(&mut work.timers);
            lifecycle.append(&mut work.lifecycle);
        }
        pending
            .write(&mut tx)
            .await
            .context("writing the batch's transcript lines")?;
        let rows = self
            .write_outbox(&mut tx, commands)
            .await
            .context("writing the batch's commands to the outbox")?;
        for (i, row) in rows {
            if let Applied::New(rows) = &mut outcomes[i] {
                rows.push(row);
            }
        }
        tx.commit().await.context("committing the batch")?;
        for (envelope, outcome) in batch.iter().zip(&outcomes) {
            if matches!(outcome, Applied::New(_)) {
                handoff_platforms::metrics::routed(envelope);
            }
        }
        for (outcome, seconds) in settled {
            handoff_platforms::metrics::handoff_settled(outcome, seconds);
        }
        for (inlet, answer) in csat {
            handoff_platforms::metrics::csat_answered(&inlet, &answer);
        }
        for (event, outlet, reason, seconds) in lifecycle {
            handoff_platforms::metrics::lifecycle(event, &outlet, &reason, seconds);
        }
        // A timer lost with this process is made up by the sweeper (`timeouts.rs`).
        for (after, due) in timers {
            let bus = self.bus.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if let Err(e) = bus.publish_event(&due).await {
                    tracing::warn!(error = %e, member = %due.member_id, "a coalesced turn is left to the sweeper");
                }
            });
        }
        Ok(outcomes)
    }
}

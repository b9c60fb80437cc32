//! The outbox's runtime side: a batch's commands are written in its transaction, published
//! (pipelined, in order) after the commit, and deleted in one statement every
//! `OUTBOX_CLEANUP`. What a crash leaves behind is published when the partition or the
//! member comes round again.

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use handoff_bus::{PublishError, Service};
use handoff_proto::Envelope;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Engine, permanent};
use crate::store;

/// How often published outbox rows are deleted, all in one statement. A row published but
/// not yet deleted is harmless: republished after a crash, JetStream drops it as a
/// duplicate (its `Nats-Msg-Id` is the command id, and this is far inside the window).
pub(super) const OUTBOX_CLEANUP: Duration = Duration::from_millis(50);

/// Whose leftovers to publish: a partition's when it is taken over, a member's when one of
/// its events comes round again.
pub(super) enum Scope<'a> {
    Partition(u16),
    Member(&'a str),
}

/// A command ready to publish.
pub(super) struct OutboxRow {
    seq: i64,
    pub id: String,
    subject: String,
    payload: Bytes,
}

impl From<store::outbox::OutboxRow> for OutboxRow {
    fn from(r: store::outbox::OutboxRow) -> Self {
        Self {
            seq: r.seq,
            id: r.command_id.to_string(),
            subject: r.subject,
            payload: Bytes::from(r.payload),
        }
    }
}

impl Engine {
    /// Deletes the outbox rows published since the last clean-up. One statement for all
    /// batches: a delete per batch would cost each batch a second commit.
    pub(super) async fn clean_outbox(&self) {
        let seqs = std::mem::take(&mut *self.published.lock().expect("not poisoned"));
        if seqs.is_empty() {
            return;
        }
        if let Err(e) = store::outbox::delete(&self.pool, &seqs).await {
            tracing::warn!(error = %e, rows = seqs.len(), "published outbox rows not deleted yet");
            self.published.lock().expect("not poisoned").extend(seqs);
        }
    }

    /// Writes the batch's commands to the outbox in one statement, in order.
    pub(super) async fn write_outbox(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        commands: Vec<(usize, Service, Envelope)>,
    ) -> anyhow::Result<Vec<(usize, OutboxRow)>> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut new = store::outbox::NewCommands::default();
        for (_, service, envelope) in &commands {
            new.ids.push(envelope.event_id.parse::<Uuid>()?);
            new.members.push(envelope.member_id.parse::<Uuid>()?);
            new.partitions
                .push(i32::from(self.bus.partition_of(&envelope.member_id)));
            new.subjects
                .push(self.bus.command_subject(*service, envelope)?);
            // One that could never be published parks the event (its member moves on)
            // rather than being retried for ever.
            let payload = self.bus.encode_fitting(envelope).map_err(|e| match e {
                PublishError::TooLarge { size, limit } => permanent(format!(
                    "its `{}` command ({size} bytes) is larger than a bus message ({limit} bytes)",
                    envelope.kind()
                )),
                other => anyhow::Error::from(other),
            })?;
            new.payloads.push(payload);
        }
        let seqs = store::outbox::insert(&mut **tx, &new).await?;
        let store::outbox::NewCommands {
            ids,
            subjects,
            payloads,
            ..
        } = new;
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
    pub(super) async fn publish(&self, rows: Vec<(OutboxRow, HeaderMap)>) -> anyhow::Result<()> {
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
    pub(super) async fn flush_outbox(&self, scope: Scope<'_>) -> anyhow::Result<()> {
        let rows = match scope {
            Scope::Partition(p) => store::outbox::of_partition(&self.pool, i32::from(p)).await?,
            Scope::Member(m) => {
                store::outbox::of_member(&self.pool, m.parse::<Uuid>().unwrap_or_default()).await?
            }
        };
        let rows = rows
            .into_iter()
            .map(|r| {
                let row = OutboxRow::from(r);
                let headers = handoff_bus::headers(&row.id);
                (row, headers)
            })
            .collect();
        self.publish(rows).await
    }
}

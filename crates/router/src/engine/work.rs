//! One event's unit of work inside the batch's transaction, and what the batch's events
//! write together at its end.

use handoff_bus::{Service, derived_id, now_ms};
use handoff_platforms::content::content_to_response;
use handoff_proto::{Body, Envelope};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::machine::Line;
use crate::model::Author;
use crate::store;

/// One event's unit of work: the batch's open transaction and the commands it derives.
pub(super) struct Work<'a> {
    pub tx: &'a mut Transaction<'static, Postgres>,
    pub cause: &'a Envelope,
    pub commands: Vec<(Service, Envelope)>,
    /// Transcript lines this event has recorded so far (their ids derive from the index).
    pub messages: usize,
    /// Handoffs this event settled: outcome and seconds since the request, recorded once
    /// the transaction commits.
    pub settled: Vec<(&'static str, f64)>,
    /// Satisfaction answers this event recorded (inlet, answer), counted once committed.
    pub csat: Vec<(String, String)>,
    /// Lifecycle events (event, outlet, reason), counted once committed.
    pub lifecycle: Vec<(&'static str, String, String, Option<f64>)>,
    /// `TurnDue` events to publish once committed, each after its delay.
    pub timers: Vec<(std::time::Duration, Envelope)>,
    /// What the batch writes together, once, instead of a statement per event.
    pub pending: &'a mut Pending,
    /// The member's epoch as this event leaves it (a live chat starting or ending bumps
    /// it): what the bot is told, to carry back with its answer.
    pub epoch: i32,
}

/// Writes the batch's events share: transcript lines (appended in one statement before
/// anything reads the transcript, and at the end) and conversations that saw activity.
#[derive(Default)]
pub(super) struct Pending {
    pub lines: store::messages::NewLines,
    pub touched: Vec<Uuid>,
    pub by_agent: Vec<Uuid>,
    pub by_customer: Vec<Uuid>,
}

impl Pending {
    /// Appends the lines recorded so far.
    pub async fn write_lines(
        &mut self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> sqlx::Result<()> {
        if !self.lines.is_empty() {
            store::messages::insert(&mut **tx, &std::mem::take(&mut self.lines)).await?;
        }
        Ok(())
    }

    /// Everything still pending, at the end of the batch.
    pub async fn write(&mut self, tx: &mut Transaction<'static, Postgres>) -> sqlx::Result<()> {
        self.write_lines(tx).await?;
        if !self.touched.is_empty() {
            store::conversations::touch_many(
                &mut **tx,
                &std::mem::take(&mut self.touched),
                &std::mem::take(&mut self.by_agent),
                &std::mem::take(&mut self.by_customer),
            )
            .await?;
        }
        Ok(())
    }
}

/// Adds the `index`-th line of event `cause` to `lines`; its id. The first line of a
/// customer's message takes the event's own id; the first of a customer's or agent's
/// message carries the platform's message id, so a repeat under a new event id is found.
pub(super) fn push_line(
    lines: &mut store::messages::NewLines,
    cause: &Envelope,
    index: usize,
    member: Uuid,
    line: &Line,
) -> Uuid {
    let event_id: Uuid = if index == 0 && line.author == Author::Customer {
        cause.event_id.parse().unwrap_or_else(|_| Uuid::now_v7())
    } else {
        derived_id(&cause.event_id, "message", index)
            .parse()
            .expect("derived ids are UUIDs")
    };
    let source = (matches!(line.author, Author::Customer | Author::Agent) && index == 0)
        .then(|| cause.source_message_id.clone())
        .filter(|s| !s.is_empty());
    lines.event_ids.push(event_id);
    lines.member_ids.push(member);
    lines.conversation_ids.push(line.conversation);
    lines.channel_ids.push(line.channel.clone());
    lines.source_message_ids.push(source);
    lines.authors.push(line.author.as_str().to_string());
    lines.contents.push(content_to_response(&line.content));
    lines.held.push(line.held);
    lines.withheld.push(line.withheld);
    event_id
}

impl Work<'_> {
    /// Queues a command; its id derives from the cause, so re-processing re-emits it as-is.
    pub(super) fn command(
        &mut self,
        service: Service,
        channel: &str,
        conversation: Option<Uuid>,
        body: Body,
    ) {
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

    /// Records a transcript line with the batch's others.
    pub(super) fn record(&mut self, member: Uuid, line: &Line) {
        push_line(
            &mut self.pending.lines,
            self.cause,
            self.messages,
            member,
            line,
        );
        self.messages += 1;
    }

    /// Records the line that makes an event a duplicate when its platform message id was
    /// seen before, at once (after the lines before it); `false`: a duplicate.
    pub(super) async fn record_first(&mut self, member: Uuid, line: &Line) -> sqlx::Result<bool> {
        self.pending.write_lines(self.tx).await?;
        let mut one = store::messages::NewLines::default();
        let id = push_line(&mut one, self.cause, self.messages, member, line);
        self.messages += 1;
        Ok(store::messages::insert(&mut **self.tx, &one)
            .await?
            .contains(&id))
    }
}

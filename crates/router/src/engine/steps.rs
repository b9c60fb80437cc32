//! The step interpreter: applies the machine's steps inside the batch's transaction, in
//! order. A transition whose compare-and-set finds the state moved ends the steps.

use handoff_bus::{Service, derived_id, now_ms};
use handoff_config::Channel;
use handoff_platforms::content::{content_from_response, content_to_response};
use handoff_proto::{Body, Content, Envelope, HandoffDetails, RequestLivechat, SendToBot, TurnDue};
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::Engine;
use crate::machine::{Command, Line, Release, Step};
use crate::model::{Author, OpenState};
use crate::store::{self, members::MemberRow};

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
    lines: store::messages::NewLines,
    touched: Vec<Uuid>,
    by_agent: Vec<Uuid>,
    by_customer: Vec<Uuid>,
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
    async fn record_first(&mut self, member: Uuid, line: &Line) -> sqlx::Result<bool> {
        self.pending.write_lines(self.tx).await?;
        let mut one = store::messages::NewLines::default();
        let id = push_line(&mut one, self.cause, self.messages, member, line);
        self.messages += 1;
        Ok(store::messages::insert(&mut **self.tx, &one)
            .await?
            .contains(&id))
    }
}

impl Engine {
    /// Applies the machine's steps in order. A transition whose compare-and-set finds the
    /// state moved ends the steps; a duplicate platform message id ends the event with no
    /// effect at all (`false`).
    pub(super) async fn apply(
        &self,
        work: &mut Work<'_>,
        member: &MemberRow,
        inlet: &Channel,
        steps: Vec<Step>,
    ) -> anyhow::Result<bool> {
        for step in steps {
            match step {
                Step::Record { line, first: false } => work.record(member.id, &line),
                Step::Record { line, first: true } => {
                    if !work.record_first(member.id, &line).await? {
                        return Ok(false);
                    }
                }
                Step::Touch(conversation, by) => {
                    work.pending.touched.push(conversation);
                    match by {
                        Author::Agent => work.pending.by_agent.push(conversation),
                        Author::Customer => work.pending.by_customer.push(conversation),
                        Author::Bot | Author::System => {}
                    }
                }
                Step::OfflineTicket { outlet, details } => {
                    self.open_handoff(work, member, inlet, &outlet, details, true)
                        .await?;
                }
                Step::OpenHandoff { outlet, details } => {
                    if !self
                        .open_handoff(work, member, inlet, &outlet, details, false)
                        .await?
                    {
                        tracing::info!(member = %member.id, "handoff asked while one is open; ignored");
                        return Ok(true);
                    }
                }
                Step::CsatAsked {
                    conversation,
                    window_secs,
                } => {
                    store::members::set_csat(
                        &mut **work.tx,
                        member.id,
                        Some(conversation),
                        window_secs as f64,
                    )
                    .await?;
                }
                Step::CsatAnswered {
                    conversation,
                    answer,
                } => {
                    store::conversations::csat_answered(&mut **work.tx, conversation, &answer)
                        .await?;
                    store::members::set_csat(&mut **work.tx, member.id, None, 0.0).await?;
                    work.csat.push((inlet.id.clone(), answer));
                }
                Step::ScheduleTurn { after_ms } => {
                    let due = Envelope {
                        // The burst's first message names the turn: the sweeper's backstop
                        // for a lost timer derives the same id.
                        event_id: derived_id(&work.cause.event_id, TURN_DUE, 0),
                        org: work.cause.org.clone(),
                        channel: member.channel_id.clone(),
                        member_id: work.cause.member_id.clone(),
                        causation_id: work.cause.event_id.clone(),
                        accepted_at_ms: now_ms(),
                        origin_accepted_at_ms: handoff_bus::origin_of(work.cause),
                        body: Some(Body::TurnDue(TurnDue {})),
                        ..Default::default()
                    };
                    work.timers
                        .push((std::time::Duration::from_millis(after_ms), due));
                }
                Step::IfTimer {
                    conversation,
                    timer,
                    limit_secs,
                } => {
                    let due = store::conversations::timer_due(
                        &mut **work.tx,
                        conversation,
                        timer,
                        limit_secs as f64,
                    )
                    .await?;
                    if !due {
                        return Ok(true);
                    }
                }
                Step::TimerTold { conversation, idle } => {
                    store::conversations::timer_told(&mut **work.tx, conversation, idle).await?;
                }
                Step::Reopen { conversation } => {
                    if !store::conversations::reopen(&mut **work.tx, conversation).await? {
                        return Ok(true);
                    }
                    work.epoch += 1;
                }
                Step::Requeue {
                    conversation,
                    outlet,
                } => {
                    let Some(asked) =
                        store::conversations::requeue(&mut **work.tx, conversation).await?
                    else {
                        return Ok(true);
                    };
                    let mut meta = asked.meta;
                    if let Value::Object(m) = &mut meta {
                        m.insert("requeued".into(), json!(asked.requeues));
                    }
                    work.command(
                        self.service_of(&outlet)?,
                        &outlet,
                        Some(conversation),
                        Body::RequestLivechat(RequestLivechat {
                            member: Some(member.to_proto(false)),
                            details: Some(HandoffDetails {
                                summary: asked.summary,
                                group_name: asked.group_name,
                                label: asked.label,
                                meta_json: meta.to_string(),
                                trigger: asked.trigger,
                            }),
                            chat_history_url: format!(
                                "{}/history/{}",
                                self.public_url, asked.history_token
                            ),
                        }),
                    );
                }
                Step::ReleaseTurn => {
                    work.pending.write_lines(work.tx).await?;
                    let waiting = store::messages::release_turn(&mut **work.tx, member.id).await?;
                    if let Some(bot) = inlet.bot.clone() {
                        for send in one_turn(waiting) {
                            self.send(
                                work,
                                member,
                                Command::ToBot {
                                    bot: bot.clone(),
                                    live: false,
                                    send,
                                },
                            )?;
                        }
                    }
                }
                Step::TroubleTold(conversation) => {
                    store::conversations::trouble_told(&mut **work.tx, conversation).await?;
                }
                Step::BotDown(down) => {
                    store::members::set_bot_down(&mut **work.tx, member.id, down).await?;
                }
                Step::AgentJoined { conversation, name } => {
                    store::conversations::agent_joined(&mut **work.tx, conversation, &name).await?;
                }
                Step::BecomeLive {
                    conversation,
                    external_id,
                } => {
                    let waited = store::conversations::become_live(
                        &mut **work.tx,
                        conversation,
                        &external_id,
                    )
                    .await?;
                    let Some((waited, outlet)) = waited else {
                        return Ok(true);
                    };
                    work.epoch += 1;
                    work.settled.push(("accepted", waited));
                    self.lifecycle(
                        work,
                        member,
                        inlet,
                        "accepted",
                        Some(conversation),
                        json!({"outlet": outlet, "ticket": external_id, "seconds": waited}),
                    );
                }
                Step::Close {
                    conversation,
                    from,
                    reason,
                } => {
                    let lasted =
                        store::conversations::close(&mut **work.tx, conversation, from, &reason)
                            .await?;
                    let Some((lasted, outlet)) = lasted else {
                        return Ok(true);
                    };
                    if from == OpenState::Live {
                        work.epoch += 1;
                    }
                    // A handoff closed before anyone took it went back to the bot.
                    let (outcome, event) = match from {
                        OpenState::Pending => ("returned_to_bot", "returned_to_bot"),
                        OpenState::Live => ("closed", "ended"),
                    };
                    work.settled.push((outcome, lasted));
                    self.lifecycle(
                        work,
                        member,
                        inlet,
                        event,
                        Some(conversation),
                        json!({"outlet": outlet, "reason": reason, "seconds": lasted}),
                    );
                }
                Step::Lifecycle {
                    event,
                    conversation,
                    detail,
                } => self.lifecycle(work, member, inlet, event, conversation, detail),
                Step::IfOverdue {
                    conversation,
                    state,
                    limit_secs,
                } => {
                    let overdue = store::conversations::is_overdue(
                        &mut **work.tx,
                        conversation,
                        state,
                        limit_secs as f64,
                    )
                    .await?;
                    if !overdue {
                        return Ok(true);
                    }
                }
                Step::ReleaseHeld { conversation, to } => {
                    let into = match &to {
                        Release::Outlet(outlet) => Some((outlet, conversation)),
                        Release::Chat {
                            outlet,
                            conversation,
                        } => Some((outlet, *conversation)),
                        Release::Bot(_) => None,
                    };
                    for (author, content) in release_held(work, conversation).await? {
                        let command = match (into, &to) {
                            (Some((outlet, conversation)), _) if author == Author::Bot => {
                                Command::Context {
                                    outlet: outlet.clone(),
                                    conversation,
                                    content,
                                }
                            }
                            (Some((outlet, conversation)), _) => Command::Relay {
                                outlet: outlet.clone(),
                                conversation,
                                live: true,
                                content,
                            },
                            // The bot's own withheld answers do not go back to it.
                            (None, _) if author == Author::Bot => continue,
                            (None, Release::Bot(Some(bot))) => Command::ToBot {
                                bot: bot.clone(),
                                live: false,
                                send: SendToBot {
                                    content: Some(content),
                                    ..Default::default()
                                },
                            },
                            (None, _) => continue,
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
}

/// Lines held while PENDING (the customer's, and bot answers withheld from them), oldest
/// first, with who wrote them; no longer held.
async fn release_held(work: &mut Work<'_>, conv: Uuid) -> anyhow::Result<Vec<(Author, Content)>> {
    work.pending.write_lines(work.tx).await?;
    let rows = store::messages::release_held(&mut **work.tx, conv).await?;
    // A line is stored as the platform sent it when the model has no form for it (a
    // `type` the model does not know, even one that is not a string): it is released in
    // that same raw form, as it would have been relayed had the chat been live already.
    // Refusing it would park the desk's acceptance and strand the member in PENDING.
    Ok(rows
        .into_iter()
        .map(|(author, stored)| {
            let content = content_from_response(&stored).unwrap_or_else(|_| Content {
                kind: None,
                raw_json: stored.to_string(),
            });
            (author, content)
        })
        .collect())
}

/// The purpose of a `TurnDue` event: its id is `derived_id(first message's event, TURN_DUE, 0)`.
pub(crate) const TURN_DUE: &str = "turn_due";

/// What waited for a coalescing bot, as what it is told: texts joined into one message
/// carrying every platform message id, oldest first; a burst with anything but text
/// (a button, a picture) goes message by message, in order.
fn one_turn(waiting: Vec<(Value, Option<String>)>) -> Vec<SendToBot> {
    let contents: Vec<(Content, Option<String>)> = waiting
        .into_iter()
        .map(|(stored, id)| {
            let content = content_from_response(&stored).unwrap_or_else(|_| Content {
                kind: None,
                raw_json: stored.to_string(),
            });
            (content, id)
        })
        .collect();
    let texts: Option<Vec<&str>> = contents
        .iter()
        .map(|(c, _)| match &c.kind {
            Some(handoff_proto::v1::content::Kind::Text(t)) => Some(t.text.as_str()),
            _ => None,
        })
        .collect();
    match texts {
        Some(texts) if texts.len() > 1 => vec![SendToBot {
            content: Some(crate::machine::text_content(&texts.join("\n"))),
            message_ids: contents.iter().filter_map(|(_, id)| id.clone()).collect(),
            ..Default::default()
        }],
        _ => contents
            .into_iter()
            .map(|(content, _)| SendToBot {
                content: Some(content),
                ..Default::default()
            })
            .collect(),
    }
}

//! The step interpreter: applies the machine's steps inside the batch's transaction, in
//! order. A transition whose compare-and-set finds the state moved ends the steps.

use handoff_bus::{derived_id, now_ms};
use handoff_config::Channel;
use handoff_proto::{Body, Envelope, HandoffDetails, RequestLivechat, SendToBot, TurnDue};
use serde_json::{Value, json};

use super::Engine;
use super::held::{TURN_DUE, one_turn, release_held};
use super::work::Work;
use crate::machine::{Command, Release, Step};
use crate::model::{Author, OpenState};
use crate::store::{self, members::MemberRow};

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

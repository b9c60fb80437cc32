//! From a batch's events to the machine's decisions: their members (created, merged or
//! found) and open conversations, loaded with one statement each for the whole batch, what
//! is known of each member ([`Facts`]), and each event in the machine's terms.

use std::collections::HashMap;
use std::sync::Arc;

use handoff_bus::{Parking, storable};
use handoff_config::{Availability, Channel, Offline, opening_stamp, opening_text};
use handoff_proto::{Body, Content, Envelope};
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::{Engine, permanent};
use crate::machine::{self, DeskClosed, Event, Facts, Step};
use crate::model::OpenConversation;
use crate::store::{self, members::MemberRow};

/// What the batch's members are, before any event of the batch applies.
#[derive(Default)]
pub(super) struct Loaded {
    members: HashMap<Uuid, MemberRow>,
    conversations: HashMap<Uuid, OpenConversation>,
}

/// One event's decision: whom it is about and the steps to take.
pub(super) struct Plan {
    pub member: MemberRow,
    pub inlet: Arc<Channel>,
    pub steps: Vec<Step>,
}

/// Whether an event is about a member (everything but a parked message and an empty one).
fn about_a_member(envelope: &Envelope) -> bool {
    !matches!(envelope.body, Some(Body::Parked(_)) | None)
}

impl Engine {
    /// Creates or refreshes the members whose customer wrote, reads the others, and reads
    /// (and locks) their open conversations: two statements for the whole batch.
    pub(super) async fn load(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        batch: &[&Envelope],
    ) -> anyhow::Result<Loaded> {
        let mut arriving = store::members::Arriving::default();
        let mut existing = Vec::new();
        for envelope in batch.iter().filter(|e| about_a_member(e)) {
            match &envelope.body {
                Some(Body::InboundMessage(m)) => {
                    arriving.ids.push(envelope.member_id.parse()?);
                    arriving.channels.push(envelope.channel.clone());
                    arriving.external_ids.push(m.external_id.clone());
                    arriving
                        .profiles
                        .push(serde_json::from_str(&m.profile_json).unwrap_or(json!({})));
                }
                _ => existing.push(envelope.member_id.parse::<Uuid>().map_err(|_| {
                    permanent(format!("member id `{}` is not a UUID", envelope.member_id))
                })?),
            }
        }
        if arriving.ids.is_empty() && existing.is_empty() {
            return Ok(Loaded::default());
        }
        let members: HashMap<Uuid, MemberRow> =
            store::members::load_batch(&mut **tx, &arriving, &existing)
                .await?
                .into_iter()
                .map(|m| (m.id, m))
                .collect();
        if let Some(missing) = existing.iter().find(|id| !members.contains_key(id)) {
            return Err(permanent(format!("member {missing} is unknown")));
        }
        let ids: Vec<Uuid> = members.keys().copied().collect();
        let conversations = store::conversations::open_for_update_many(&mut **tx, &ids)
            .await?
            .into_iter()
            .collect();
        Ok(Loaded {
            members,
            conversations,
        })
    }

    /// What one event calls for. `None`: nothing about a member (a parked message is kept
    /// as a dead letter here; an unknown kind is ignored).
    pub(super) async fn plan(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        envelope: &Envelope,
        loaded: &mut Loaded,
    ) -> anyhow::Result<Option<Plan>> {
        let body = match &envelope.body {
            Some(Body::Parked(p)) => {
                store::dead_letters::insert(&mut **tx, &Parking::from_event(envelope, p)).await?;
                return Ok(None);
            }
            Some(body) => body,
            None => {
                tracing::error!(kind = envelope.kind(), "not an event; ignored");
                return Ok(None);
            }
        };
        let id: Uuid = envelope.member_id.parse()?;
        let mut member = loaded
            .members
            .remove(&id)
            .ok_or_else(|| permanent(format!("member {id} is unknown")))?;
        if let Body::BotReply(r) = body
            && (!r.profile_json.is_empty() || !r.meta_json.is_empty())
        {
            let object = |text: &str| match serde_json::from_str::<Value>(text) {
                Ok(v @ Value::Object(_)) => Ok(v),
                _ if text.is_empty() => Ok(json!({})),
                _ => Err(permanent(format!("`{text}` is not a JSON object"))),
            };
            member = store::members::merge(
                &mut **tx,
                member.id,
                &object(&r.profile_json)?,
                &object(&r.meta_json)?,
            )
            .await?;
        }
        let conversation = loaded.conversations.remove(&member.id);
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
        let watcher = handoff_to
            .and_then(|desk| catalog.channels.get(desk))
            .filter(|desk| desk.role == handoff_config::Role::Outlet && desk.live_chat.monitor)
            .map(|desk| desk.id.as_str());
        let facts = Facts {
            inlet: &inlet,
            conversation: conversation.as_ref(),
            outlet: outlet.as_deref(),
            handoff_to,
            source: &envelope.channel,
            named_conversation: &envelope.conversation_id,
            profile: &member.profile,
            epoch: member.epoch,
            bot_down: member.bot_down,
            csat_pending: member.csat_pending,
            coalesce_ms: inlet
                .bot
                .as_deref()
                .and_then(|bot| catalog.channels.get(bot))
                .map_or(0, |bot| bot.coalesce_ms),
            desk_closed: handoff_to
                .and_then(|desk| catalog.channels.get(desk))
                .and_then(|desk| desk_closed(desk, catalog.channels.is_available(&desk.id))),
            reopen: member
                .last_live
                .zip(member.last_live_outlet.clone())
                .filter(|(_, outlet)| {
                    catalog.channels.get(outlet).is_some_and(|o| {
                        o.live_chat.reopen
                            && member
                                .last_live_age
                                .is_some_and(|age| age <= o.live_chat.return_window_secs as f64)
                    })
                }),
            watcher,
        };
        let default_content = Content::default();
        let event = match body {
            Body::InboundMessage(m) => {
                Event::Inbound(m.content.as_ref().unwrap_or(&default_content))
            }
            Body::BotReply(r) => Event::BotReply(r),
            Body::AgentMessage(m) => Event::AgentMessage {
                content: m.content.as_ref().unwrap_or(&default_content),
                agent: &m.agent_name,
            },
            Body::AgentCommand(c) => {
                let content = c.content.as_ref().unwrap_or(&default_content);
                match transfer_request(outlet.as_deref(), content) {
                    Some((to, group, rest)) => match catalog.channels.get(to) {
                        Some(target) => Event::Transfer {
                            content,
                            to,
                            target: Some(&**target),
                            group,
                        },
                        // Not a channel: for a Zendesk visitor, a department of their
                        // Zendesk (its whole name, spaces and all).
                        None => Event::Transfer {
                            content,
                            to: rest,
                            target: Some(&*inlet)
                                .filter(|i| i.platform == handoff_config::Platform::Zendesk),
                            group: rest,
                        },
                    },
                    None => Event::AgentCommand {
                        content,
                        reference: &c.conversation_ref,
                    },
                }
            }
            Body::HandoffRequested(r) => {
                Event::HandoffRequested(r.details.clone().unwrap_or_default())
            }
            Body::HandoffAccepted(a) => Event::HandoffAccepted {
                external_id: &a.external_conversation_id,
                agent: &a.agent_name,
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
                told: told_when_stalled(tx, envelope).await?,
            },
            Body::DeliveryStalled(f) => Event::DeliveryStalled {
                content: f.content.as_ref().unwrap_or(&default_content),
                error: json!({"reason": storable(&f.reason), "status": f.status}),
            },
            Body::DeliveryFailed(f) => Event::DeliveryFailed {
                content: f.content.as_ref(),
                detail: json!({"reason": storable(&f.reason), "status": f.status}),
            },
            Body::BotFailed(f) => Event::BotFailed { reason: &f.reason },
            Body::CustomerLeft(_) => Event::CustomerLeft,
            Body::TurnDue(_) => Event::TurnDue,
            _ => {
                tracing::error!(kind = envelope.kind(), "not an event; ignored");
                return Ok(None);
            }
        };
        let steps = machine::decide(&facts, event);
        Ok(Some(Plan {
            member,
            inlet,
            steps,
        }))
    }
}

/// Whether the command a failure is about stalled first (`DeliveryStalled`, applied): its
/// consequences were drawn then. A read on the failure path only.
async fn told_when_stalled(
    tx: &mut Transaction<'static, Postgres>,
    failure: &Envelope,
) -> anyhow::Result<bool> {
    let stalled =
        handoff_bus::derived_id(&failure.causation_id, handoff_platforms::settle::STALLED, 0);
    Ok(store::inbox::seen(&mut **tx, stalled.parse()?).await?)
}

/// Whether `desk` takes no handoffs now: switched unavailable by an operator (`available`
/// false), or outside its business hours (and when it opens).
fn desk_closed(desk: &Channel, available: bool) -> Option<DeskClosed> {
    let offline_ticket = desk
        .hours
        .as_ref()
        .is_some_and(|h| h.offline == Offline::Ticket);
    if !available {
        return Some(DeskClosed {
            switched_off: true,
            offline_ticket,
            ..Default::default()
        });
    }
    match desk.hours.as_ref()?.now() {
        Availability::Open => None,
        Availability::Closed { next_open } => Some(DeskClosed {
            next_open_at: next_open.as_ref().map(opening_stamp).unwrap_or_default(),
            next_open_text: next_open.as_ref().map(opening_text).unwrap_or_default(),
            offline_ticket,
            switched_off: false,
        }),
    }
}

/// `transfer <outlet> [group]` (the holding outlet's `transferCommand`): the outlet and the
/// group named, and everything after the command (a Zendesk department's name).
fn transfer_request<'c>(
    outlet: Option<&Channel>,
    content: &'c Content,
) -> Option<(&'c str, &'c str, &'c str)> {
    let command = outlet?.live_chat.transfer_command.trim();
    let Some(handoff_proto::v1::content::Kind::Text(t)) = &content.kind else {
        return None;
    };
    let text = t.text.trim();
    let (said, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    if !said.eq_ignore_ascii_case(command) {
        return None;
    }
    let rest = rest.trim();
    let (to, group) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    (!to.is_empty()).then_some((to, group.trim(), rest))
}

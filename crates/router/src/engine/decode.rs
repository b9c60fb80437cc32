//! From an event to the machine's decision: the member (created, merged or found), what
//! is known of them ([`Facts`]), and the event in the machine's terms.

use handoff_bus::{Parking, storable};
use handoff_proto::{Body, Content};
use serde_json::{Value, json};
use uuid::Uuid;

use super::steps::Work;
use super::{Engine, permanent};
use crate::machine::{self, Event, Facts};
use crate::store;

impl Engine {
    /// Applies one event's effects inside the batch's transaction: loads what the machine
    /// needs, lets it decide, applies its steps. `false`: a duplicate by another key.
    pub(super) async fn dispatch(&self, work: &mut Work<'_>) -> anyhow::Result<bool> {
        let envelope = work.cause;
        let body = match &envelope.body {
            Some(Body::Parked(p)) => {
                store::dead_letters::insert(&mut **work.tx, &Parking::from_event(envelope, p))
                    .await?;
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
                store::members::upsert(
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
                store::members::merge(
                    &mut **work.tx,
                    member.id,
                    &object(&r.profile_json)?,
                    &object(&r.meta_json)?,
                )
                .await?
            }
            _ => self.member(work).await?,
        };
        let conversation = store::conversations::open_for_update(&mut **work.tx, member.id).await?;
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
}

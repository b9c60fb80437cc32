//! Live-chat commands: Livechat API (hand a member to humans), Relay API (a customer message
//! while LIVE) and Send API with `conversationId` (a bot answer to an agent command).

use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::custom::{livechat_body, relay_body, send_body, watched_body};
use handoff_platforms::settle::{Failure, Stall, settle, settle_best_effort, settle_watched};
use handoff_platforms::{Catalog, ChannelSettings, DeliveryError, Horizon, OutboundClient, Signer};
use handoff_proto::{Body, Envelope, HandoffAccepted, HandoffFailed, Sender};
use serde_json::Value;

pub(crate) struct LiveChatDeliverer {
    pub bus: Bus,
    pub catalog: Catalog,
    pub client: OutboundClient,
}

/// The outlet's own id for the chat, if its Livechat API answer names one.
fn ticket_id(body: &[u8]) -> String {
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    ["ticketId", "groupId", "conversationId", "id"]
        .iter()
        .find_map(|k| match v.get(*k) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A desk's 2xx Livechat answer: accepted (with its ticket and agent, when named), or,
/// with `"available": false`, refused because nobody is there (`unavailable`).
fn livechat_result(body: &[u8]) -> Body {
    let unavailable =
        serde_json::from_slice::<Value>(body).is_ok_and(|v| v["available"] == Value::Bool(false));
    if unavailable {
        return Body::HandoffFailed(HandoffFailed {
            reason: "the desk says no agent is available".into(),
            status: 0,
            code: "unavailable".into(),
        });
    }
    Body::HandoffAccepted(HandoffAccepted {
        external_conversation_id: ticket_id(body),
        agent_name: agent_name(body),
    })
}

/// The agent a desk's Livechat answer names (`agentName`, or `agent.name`), if any.
fn agent_name(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    [&v["agentName"], &v["agent"]["name"]]
        .into_iter()
        .find_map(|n| n.as_str().map(str::trim).filter(|n| !n.is_empty()))
        .map(|n| n.chars().take(100).collect())
        .unwrap_or_default()
}

impl Handler for LiveChatDeliverer {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let catalog = self.catalog.load();
        let Some(outlet) = catalog.channels.get(&envelope.channel) else {
            return Handled::Park {
                reason: format!("outlet `{}` is not configured", envelope.channel),
            };
        };
        let Some(ChannelSettings::CustomOutlet(settings)) =
            catalog.platforms.get(&outlet.id).map(|s| &**s)
        else {
            return Handled::Park {
                reason: format!("channel `{}` is not a custom outlet", outlet.id),
            };
        };
        let signer = Signer::for_channel(outlet);
        let id = envelope.event_id.as_str();
        let conversation = envelope.conversation_id.as_str();
        let settle =
            async |horizon, attempt, failure: &(dyn Fn(&DeliveryError) -> Failure + Sync)| {
                settle(
                    &self.client,
                    &self.bus,
                    &envelope,
                    outlet,
                    horizon,
                    attempt,
                    failure,
                )
                .await
            };
        match &envelope.body {
            Some(Body::RequestLivechat(cmd)) => {
                let url = settings.livechat_api.as_str();
                let member = cmd.member.clone().unwrap_or_default();
                let details = cmd.details.clone().unwrap_or_default();
                let body = livechat_body(&member, &details, &cmd.chat_history_url, conversation);
                let attempt = self
                    .client
                    .post_json(url, id, &body, signer.as_ref())
                    .await
                    .map(|ok| Some(("livechat_result", livechat_result(&ok.body))));
                // No park: the bot takes the customer back, which is the answer.
                settle(Horizon::Handoff, attempt, &|e: &DeliveryError| Failure {
                    purpose: "livechat_result",
                    event: Body::HandoffFailed(HandoffFailed {
                        reason: e.to_string(),
                        status: e.status().unwrap_or_default().into(),
                        code: String::new(),
                    }),
                    park: false,
                })
                .await
            }
            // A copy of a bot conversation for watching agents: for the handoff's short
            // horizon, since a copy of an old turn helps nobody, and nobody is told of a
            // failure (the customer and the bot are not waiting for it).
            Some(Body::RelayToOutlet(cmd)) if cmd.mode == "bot" => {
                let member = cmd.member.clone().unwrap_or_default();
                let content = cmd.content.clone().unwrap_or_default();
                let author = match cmd.author() {
                    Sender::Customer => "customer",
                    Sender::Agent => "agent",
                    _ => "bot",
                };
                let body = watched_body(&content, &member, &outlet.info, author);
                let attempt = self
                    .client
                    .post_json(&settings.relay_response_api, id, &body, signer.as_ref())
                    .await
                    .map(|_| ());
                settle_best_effort(&self.client, &envelope, outlet, Horizon::Handoff, attempt)
            }
            Some(Body::RelayToOutlet(cmd)) => {
                let url = settings.relay_response_api.as_str();
                let member = cmd.member.clone().unwrap_or_default();
                let content = cmd.content.clone().unwrap_or_default();
                let body = relay_body(&content, &member, &outlet.info, conversation);
                let attempt = self
                    .client
                    .post_json(url, id, &body, signer.as_ref())
                    .await
                    .map(|_| None);
                // Said early (the inlet's `relayNoticeSecs`), so the customer and the bot
                // need not wait for the horizon to hear of a desk that is down.
                let after = catalog
                    .channels
                    .get(&member.inlet_channel)
                    .map_or(0, |inlet| inlet.handoff.relay_notice_secs);
                let stall = Stall {
                    after: Duration::from_secs(after),
                    content: &content,
                };
                settle_watched(
                    &self.client,
                    &self.bus,
                    &envelope,
                    outlet,
                    Horizon::Delivery,
                    attempt,
                    |e: &DeliveryError| Failure::relay_failed(&content, e),
                    Some(stall),
                )
                .await
            }
            Some(Body::DeliverToOutlet(cmd)) => {
                let Some(url) = settings.send_response_api.as_deref() else {
                    return Handled::Park {
                        reason: format!(
                            "outlet `{}` has no sendResponseApi for a bot answer to an agent command",
                            outlet.id
                        ),
                    };
                };
                let member = cmd.member.clone().unwrap_or_default();
                let content = cmd.content.clone().unwrap_or_default();
                let body = send_body(&content, &member, &outlet.info, Some(&cmd.conversation_ref));
                let attempt = self
                    .client
                    .post_json(url, id, &body, signer.as_ref())
                    .await
                    .map(|_| None);
                settle(Horizon::Delivery, attempt, &|e: &DeliveryError| {
                    Failure::delivery_failed(&content, e)
                })
                .await
            }
            _ => Handled::Park {
                reason: format!("`{}` is not a command for a live chat", envelope.kind()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_livechat_answer_accepts_with_its_ticket_and_agent_or_says_nobody_is_available() {
        let accepted = livechat_result(br#"{"ticketId": 42, "agent": {"name": " Bo "}}"#);
        assert_eq!(
            accepted,
            Body::HandoffAccepted(HandoffAccepted {
                external_conversation_id: "42".into(),
                agent_name: "Bo".into(),
            })
        );
        let refused = livechat_result(br#"{"ok": true, "available": false}"#);
        assert!(
            matches!(&refused, Body::HandoffFailed(f) if f.code == "unavailable"),
            "{refused:?}"
        );
        assert!(matches!(
            livechat_result(b"not json"),
            Body::HandoffAccepted(_)
        ));
    }
}

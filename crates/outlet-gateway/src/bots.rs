//! `deliver.bot`: a message for a bot. The webhook bot answers synchronously; its answer
//! becomes a `BotReply` event (or `BotFailed` when it cannot be reached).

use std::sync::Arc;

use handoff_bus::{Bus, Handled, Handler};
use handoff_config::{Channels, Platform};
use handoff_platforms::webhook_bot::{BotEvent, BotRequest, parse_answer, request_body};
use handoff_platforms::{Horizon, OutboundClient, Signer};
use handoff_proto::{Body, BotFailed, BotReply, Envelope};

use handoff_proto::Message as _;

use crate::publish_then;

/// Room for the envelope around a bot answer in a bus message.
const ENVELOPE_ROOM: usize = 4 * 1024;

pub(crate) struct BotCaller {
    pub bus: Bus,
    pub channels: Arc<Channels>,
    pub client: OutboundClient,
}

impl Handler for BotCaller {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::SendToBot(cmd)) = &envelope.body else {
            return Handled::Park {
                reason: format!("`{}` is not a command for deliver.bot", envelope.kind()),
            };
        };
        let Some(bot) = self.channels.get(&envelope.channel) else {
            return Handled::Park {
                reason: format!("bot channel `{}` is not configured", envelope.channel),
            };
        };
        if bot.platform != Platform::WebhookBot {
            return Handled::Park {
                reason: format!("bot channel `{}`: platform not supported as a bot", bot.id),
            };
        }
        let (Some(member), Some(content)) = (&cmd.member, &cmd.content) else {
            return Handled::Park {
                reason: "send_to_bot without member or content".into(),
            };
        };
        let (event, error) = if !cmd.relay_message_error_json.is_empty() {
            (
                BotEvent::RelayFailed,
                Some(cmd.relay_message_error_json.as_str()),
            )
        } else if !cmd.handoff_error_json.is_empty() {
            (
                BotEvent::HandoffFailed,
                Some(cmd.handoff_error_json.as_str()),
            )
        } else if !cmd.live_chat_ended_json.is_empty() {
            (
                BotEvent::LiveChatEnded,
                Some(cmd.live_chat_ended_json.as_str()),
            )
        } else if !cmd.agent_conversation_id.is_empty() {
            (BotEvent::AgentCommand, None)
        } else {
            (BotEvent::Message, None)
        };
        let body = request_body(&BotRequest {
            event,
            id: &envelope.event_id,
            org: &envelope.org,
            bot_channel: &bot.id,
            member,
            content,
            conversation_id: (!cmd.agent_conversation_id.is_empty())
                .then_some(cmd.agent_conversation_id.as_str()),
            error_json: error,
        });
        let url = bot.info_str("url").unwrap_or_default();
        let signer = Signer::for_channel(bot);
        let result = match self
            .client
            .post_json(url, &envelope.event_id, &body, signer.as_ref())
            .await
        {
            Ok(delivered) => parse_answer(&delivered.body)
                .map_err(|why| format!("the bot's answer is not valid: {why}")),
            Err(e) => {
                if let Some(retry) = self.client.later(&e, &envelope, Horizon::Delivery) {
                    return retry;
                }
                Err(e.to_string())
            }
        };
        let reply = result.and_then(|answer| {
            let reply = BotReply {
                responses: answer.responses,
                handoff: answer.handoff,
                close: answer.close,
                agent_conversation_id: cmd.agent_conversation_id.clone(),
            };
            // The answer travels as one bus message: past the server's limit it never could.
            let size = reply.encoded_len();
            if size + ENVELOPE_ROOM > self.bus.max_payload() {
                return Err(format!(
                    "the bot's answer ({size} bytes) is larger than a bus message ({} bytes)",
                    self.bus.max_payload()
                ));
            }
            Ok(reply)
        });
        let (body, then) = match reply {
            Ok(reply) => (Body::BotReply(reply), Handled::Done),
            Err(reason) => {
                tracing::warn!(%reason, bot = %bot.id, "bot call failed for good");
                let park = Handled::Park {
                    reason: format!("bot `{}`: {reason}", bot.id),
                };
                (Body::BotFailed(BotFailed { reason }), park)
            }
        };
        publish_then(&self.bus, &envelope, "bot_result", &bot.id, body, then).await
    }
}

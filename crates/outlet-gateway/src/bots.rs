//! `deliver.bot`: a message for a bot. The webhook bot answers synchronously; its answer
//! becomes a `BotReply` event (or `BotFailed` when it cannot be reached).

use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_config::{Channels, Platform};
use handoff_platforms::webhook_bot::{BotEvent, BotRequest, parse_answer, request_body};
use handoff_platforms::{OutboundClient, Signer};
use handoff_proto::{Body, BotFailed, BotReply, Envelope};

use crate::publish_result;

pub(crate) struct BotCaller {
    pub bus: Bus,
    pub channels: Arc<Channels>,
    pub client: OutboundClient,
}

impl Handler for BotCaller {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::SendToBot(cmd)) = &envelope.body else {
            tracing::error!(kind = envelope.kind(), "unexpected command on deliver.bot");
            return Handled::Done;
        };
        let Some(bot) = self.channels.get(&envelope.channel) else {
            return Handled::Retry {
                after: Duration::from_secs(30),
                reason: format!("bot channel `{}` is not configured here", envelope.channel),
            };
        };
        if bot.platform != Platform::WebhookBot {
            tracing::error!(channel = %bot.id, "bot platform not supported; message dropped");
            return Handled::Done;
        }
        let (Some(member), Some(content)) = (&cmd.member, &cmd.content) else {
            tracing::error!("send_to_bot without member or content dropped");
            return Handled::Done;
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
            Ok(delivered) => parse_answer(&delivered.body),
            Err(e) => Err(e.to_string()),
        };
        let body = match result {
            Ok(answer) => Body::BotReply(BotReply {
                responses: answer.responses,
                handoff: answer.handoff,
                close: answer.close,
                agent_conversation_id: cmd.agent_conversation_id.clone(),
            }),
            Err(reason) => {
                tracing::warn!(%reason, bot = %bot.id, "bot call failed");
                Body::BotFailed(BotFailed { reason })
            }
        };
        publish_result(&self.bus, &envelope, "bot_result", &bot.id, body).await
    }
}

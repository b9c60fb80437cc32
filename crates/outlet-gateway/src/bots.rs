//! `SendToBot` commands: a message for a bot. The webhook bot answers synchronously; its
//! answer becomes a `BotReply` event (or `BotFailed` when it cannot be reached). Selarti
//! answers later, on its webhook (`crate::selarti`): once the message is sent, the member's
//! lane is free.

use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::selarti::{SelartiClient, SelartiSettings, send_body};
use handoff_platforms::settle::{Delivered, Failure, Stall, settle_watched};
use handoff_platforms::webhook_bot::{
    BotEvent, BotRequest, BotSettings, parse_answer, request_body,
};
use handoff_platforms::{Catalog, ChannelSettings, DeliveryError, Horizon, OutboundClient, Signer};
use handoff_proto::v1::send_to_bot::Reason;
use handoff_proto::{Body, BotFailed, BotReply, Content, Envelope, SendToBot};

use handoff_proto::Message as _;

/// Room for the envelope around a bot answer in a bus message.
const ENVELOPE_ROOM: usize = 4 * 1024;

pub(crate) struct BotCaller {
    pub bus: Bus,
    pub catalog: Catalog,
    pub client: OutboundClient,
    /// Selarti's token cache, shared by every Selarti channel.
    pub selarti: SelartiClient,
}

impl Handler for BotCaller {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::SendToBot(cmd)) = &envelope.body else {
            return Handled::Park {
                reason: format!("`{}` is not a command for a bot", envelope.kind()),
            };
        };
        let catalog = self.catalog.load();
        let Some((bot, settings)) = catalog.configured(&envelope.channel) else {
            return Handled::Park {
                reason: format!("bot channel `{}` is not configured", envelope.channel),
            };
        };
        let settings = match settings {
            ChannelSettings::WebhookBot(s) => s,
            ChannelSettings::Selarti(s) => {
                return self.send_to_selarti(&envelope, cmd, bot, s).await;
            }
            _ => {
                return Handled::Park {
                    reason: format!("channel `{}` is not a bot", bot.id),
                };
            }
        };
        self.call_webhook_bot(&envelope, cmd, bot, settings).await
    }
}

impl BotCaller {
    async fn call_webhook_bot(
        &self,
        envelope: &Envelope,
        cmd: &SendToBot,
        bot: &handoff_config::Channel,
        settings: &BotSettings,
    ) -> Handled {
        let (Some(member), Some(content)) = (&cmd.member, &cmd.content) else {
            return Handled::Park {
                reason: "send_to_bot without member or content".into(),
            };
        };
        let body = request_body(&BotRequest {
            id: &envelope.event_id,
            org: &envelope.org,
            bot_channel: &bot.id,
            member,
            content,
            reason: cmd.reason.as_ref(),
            message_ids: &cmd.message_ids,
        });
        let url = settings.url.as_str();
        let signer = Signer::for_channel(bot);
        let attempt = self
            .client
            .post_json(url, &envelope.event_id, &body, signer.as_ref())
            .await
            .and_then(|delivered| {
                let answer = parse_answer(&delivered.body).map_err(|why| {
                    DeliveryError::Declined(format!("the bot's answer is not valid: {why}"))
                })?;
                let reply = BotReply {
                    responses: answer.responses,
                    handoff: answer.handoff,
                    close: answer.close,
                    agent_conversation_id: match &cmd.reason {
                        Some(Reason::AgentConversationId(id)) => id.clone(),
                        _ => String::new(),
                    },
                    // Answered in the same call: the epoch it was asked in.
                    epoch: Some(cmd.epoch),
                    ..Default::default()
                };
                // The answer travels as one bus message: past the server's limit it never
                // could.
                let size = reply.encoded_len();
                if size + ENVELOPE_ROOM > self.bus.max_payload() {
                    return Err(DeliveryError::Declined(format!(
                        "the bot's answer ({size} bytes) is larger than a bus message ({} bytes)",
                        self.bus.max_payload()
                    )));
                }
                Ok(Some(("bot_result", Body::BotReply(reply))))
            });
        self.settle(envelope, cmd, bot, attempt).await
    }

    /// Sends a customer's message to Selarti; the answer comes later on its webhook. Only
    /// customer messages go: Selarti has no notion of Handoff's relay, handoff or live-chat
    /// events, and cannot answer an agent command in its reply.
    async fn send_to_selarti(
        &self,
        envelope: &Envelope,
        cmd: &SendToBot,
        bot: &handoff_config::Channel,
        settings: &SelartiSettings,
    ) -> Handled {
        let body = cmd
            .content
            .as_ref()
            .filter(|_| BotEvent::of(cmd.reason.as_ref()) == BotEvent::Message)
            .and_then(|content| send_body(settings, &envelope.member_id, content));
        let Some(body) = body else {
            return Handled::Done;
        };
        let attempt = self
            .selarti
            .send(&self.client, settings, &envelope.event_id, &body)
            .await
            .map(|()| None);
        self.settle(envelope, cmd, bot, attempt).await
    }

    /// Settles a bot call: a bot that cannot be reached (or answers what cannot be used)
    /// for good is reported to the router (`BotFailed`) and the command parked; replaying
    /// it calls the bot again, and that answer's id differs from the failure's.
    ///
    /// A bot failing for the inlet's `botDownSecs` is said to be down at once (the router
    /// tells the customer, or hands them over), while the call goes on being retried.
    async fn settle(
        &self,
        envelope: &Envelope,
        cmd: &SendToBot,
        bot: &handoff_config::Channel,
        attempt: Result<Delivered, DeliveryError>,
    ) -> Handled {
        let inlet = cmd.member.as_ref().map(|m| m.inlet_channel.as_str());
        let after = inlet
            .and_then(|inlet| {
                let catalog = self.catalog.load();
                catalog.channels.get(inlet).map(|c| c.handoff.bot_down_secs)
            })
            .unwrap_or(0);
        let no_content = Content::default();
        let stall = Stall {
            after: Duration::from_secs(after),
            content: cmd.content.as_ref().unwrap_or(&no_content),
        };
        settle_watched(
            &self.client,
            &self.bus,
            envelope,
            bot,
            Horizon::Delivery,
            attempt,
            |e| Failure {
                purpose: "bot_failed",
                event: Body::BotFailed(BotFailed {
                    reason: e.to_string(),
                }),
                park: true,
            },
            Some(stall),
        )
        .await
    }
}

//! `deliver.inlet-gateway` commands: responses for a customer, sent to the inlet's Send API
//! (custom platforms) or put in the visitor's mailbox (the web chat).

use handoff_bus::mailbox::Mailbox;
use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::custom::send_body;
use handoff_platforms::settle::{Failure, settle};
use handoff_platforms::webchat::frames::MailboxEntry;
use handoff_platforms::{Catalog, ChannelSettings, Horizon, OutboundClient, Signer};
use handoff_proto::{Body, Envelope};

pub(crate) struct Deliverer {
    pub bus: Bus,
    pub catalog: Catalog,
    pub client: OutboundClient,
    pub mailbox: Mailbox,
}

impl Handler for Deliverer {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::DeliverToMember(cmd)) = &envelope.body else {
            return Handled::Park {
                reason: format!(
                    "`{}` is not a command for deliver.inlet-gateway",
                    envelope.kind()
                ),
            };
        };
        let catalog = self.catalog.load();
        // A configuration fixed later (a rollout, a typo) makes these replayable.
        let Some(channel) = catalog.channels.get(&envelope.channel) else {
            return Handled::Park {
                reason: format!("channel `{}` is not configured", envelope.channel),
            };
        };
        let (Some(member), Some(content)) = (&cmd.member, &cmd.content) else {
            return Handled::Park {
                reason: "deliver_to_member without member or content".into(),
            };
        };
        let inlet = match catalog.platforms.get(&channel.id).map(|s| &**s) {
            Some(ChannelSettings::CustomInlet(inlet)) => inlet,
            Some(ChannelSettings::Webchat(_)) => {
                let sender = handoff_proto::Sender::try_from(cmd.sender).unwrap_or_default();
                let entry = MailboxEntry::delivered(content, sender, crate::webchat::rfc3339_now());
                let bytes = serde_json::to_vec(&entry).expect("an entry serializes");
                return match self
                    .mailbox
                    .post(
                        &channel.id,
                        &member.external_id,
                        &envelope.event_id,
                        bytes.into(),
                    )
                    .await
                {
                    Ok(()) => {
                        handoff_platforms::metrics::delivered(&envelope, channel.platform.as_str());
                        Handled::Done
                    }
                    // JetStream is the bus itself: retried like any bus outage.
                    Err(e) => Handled::Retry {
                        after: std::time::Duration::from_secs(1),
                        reason: format!("the visitor's mailbox: {e}"),
                    },
                };
            }
            _ => {
                return Handled::Park {
                    reason: format!("channel `{}` is not an inlet served here", channel.id),
                };
            }
        };
        let url = inlet.send_response_api.as_str();
        let body = send_body(content, member, &channel.info, None);
        let signer = Signer::for_channel(channel);
        let attempt = self
            .client
            .post_json(url, &envelope.event_id, &body, signer.as_ref())
            .await
            .map(|_| None);
        settle(
            &self.client,
            &self.bus,
            &envelope,
            channel,
            Horizon::Delivery,
            attempt,
            |e| Failure::delivery_failed(content, e),
        )
        .await
    }
}

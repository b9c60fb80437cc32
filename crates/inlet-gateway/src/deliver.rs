//! `deliver.inlet-gateway` commands: responses for a customer, sent to the inlet's Send API.

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::custom::send_body;
use handoff_platforms::settle::{Failure, settle};
use handoff_platforms::{Catalog, ChannelSettings, Horizon, OutboundClient, Signer};
use handoff_proto::{Body, Envelope};

pub(crate) struct Deliverer {
    pub bus: Bus,
    pub catalog: Catalog,
    pub client: OutboundClient,
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
        let Some(ChannelSettings::CustomInlet(inlet)) =
            catalog.platforms.get(&channel.id).map(|s| &**s)
        else {
            return Handled::Park {
                reason: format!("channel `{}` is not a custom inlet", channel.id),
            };
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

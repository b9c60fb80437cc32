//! `DeliverLifecycle` commands: an org's conversation events for its subscribers (a CRM, an
//! analytics job), POSTed as they are, signed with the channel's `secret` (Standard
//! Webhooks), retried to the horizon and parked after it, like every other call.

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::settle::{Failure, settle};
use handoff_platforms::{Catalog, ChannelSettings, DeliveryError, Horizon, OutboundClient, Signer};
use handoff_proto::{Body, Content, Envelope};
use serde_json::Value;

pub(crate) struct Notifier {
    pub bus: Bus,
    pub catalog: Catalog,
    pub client: OutboundClient,
}

impl Handler for Notifier {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::DeliverLifecycle(cmd)) = &envelope.body else {
            return Handled::Park {
                reason: format!("`{}` is not a lifecycle event", envelope.kind()),
            };
        };
        let catalog = self.catalog.load();
        let Some((subscriber, settings)) = catalog.configured(&envelope.channel) else {
            return Handled::Park {
                reason: format!("subscriber `{}` is not configured", envelope.channel),
            };
        };
        let ChannelSettings::Subscriber(settings) = settings else {
            return Handled::Park {
                reason: format!("channel `{}` is not a subscriber", subscriber.id),
            };
        };
        let Ok(body) = serde_json::from_str::<Value>(&cmd.event_json) else {
            return Handled::Park {
                reason: "a lifecycle event that is not JSON".into(),
            };
        };
        let signer = Signer::for_channel(subscriber);
        let attempt = self
            .client
            .post_json(&settings.url, &envelope.event_id, &body, signer.as_ref())
            .await
            .map(|_| None);
        settle(
            &self.client,
            &self.bus,
            &envelope,
            subscriber,
            Horizon::Delivery,
            attempt,
            |e: &DeliveryError| Failure::delivery_failed(&Content::default(), e),
        )
        .await
    }
}

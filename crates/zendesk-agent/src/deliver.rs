//! `deliver.zendesk-agent`: answers for visitors, sent into their chat one at a time (a
//! member's lane waits for each `sendMessage` result, which keeps their order: Zendesk does
//! not promise to run pipelined requests in order).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::zendesk::{ErrorKind, send_request};
use handoff_proto::{Body, DeliveryFailed, Envelope};

use crate::session::{Account, RequestError};

pub(crate) struct Deliverer {
    pub bus: Bus,
    pub accounts: HashMap<String, Arc<Account>>,
}

impl Handler for Deliverer {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(Body::DeliverToMember(cmd)) = &envelope.body else {
            return Handled::Park {
                reason: format!("`{}` is not a command for zendesk-agent", envelope.kind()),
            };
        };
        let Some(account) = self.accounts.get(&envelope.channel) else {
            return Handled::Park {
                reason: format!("`{}` is not a Zendesk inlet", envelope.channel),
            };
        };
        let (Some(member), Some(content)) = (&cmd.member, &cmd.content) else {
            return Handled::Park {
                reason: "deliver_to_member without member or content".into(),
            };
        };
        // The member's external id is the Zendesk chat (channel) id.
        let chat = member.external_id.as_str();
        let Some(request) = send_request(chat, content) else {
            tracing::info!(
                kind = envelope.kind(),
                "nothing a Zendesk visitor can see; skipped"
            );
            return Handled::Done;
        };
        // Rate limits are waited out here, with exponential backoff and jitter, so a burst
        // of members does not come back in step; past that the lane retries later.
        let mut delay = Duration::from_millis(250);
        let result = loop {
            match account.link.request(&request.query).await {
                Err(RequestError::Refused(e))
                    if e.kind == ErrorKind::RateLimited && delay <= Duration::from_secs(8) =>
                {
                    let jitter = rand::random_range(0.5..1.5);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay *= 2;
                }
                other => break other,
            }
        };
        match result {
            Ok(_) => {
                if !request.offered.is_empty() {
                    account.link.offer(chat, request.offered);
                }
                Handled::Done
            }
            // Retried by redelivery; a result that never came means the message may have
            // been shown, and is sent again: at least once, as with every platform.
            Err(
                e @ (RequestError::NotConnected
                | RequestError::NoAnswer(_)
                | RequestError::SessionEnded),
            ) => Handled::Retry {
                after: Duration::from_secs(1),
                reason: e.to_string(),
            },
            Err(RequestError::Refused(e)) if e.kind != ErrorKind::Fatal => Handled::Retry {
                after: Duration::from_secs(2),
                reason: e.to_string(),
            },
            Err(RequestError::Refused(e)) => {
                tracing::warn!(uuid = %e.uuid, name = %e.name, "Zendesk refused an answer for good");
                let failed = Body::DeliveryFailed(DeliveryFailed {
                    content: Some(content.clone()),
                    reason: e.to_string(),
                    status: 0,
                });
                let park = Handled::Park {
                    reason: format!("Zendesk refused it: {e}"),
                };
                self.bus
                    .publish_then(
                        &envelope,
                        "delivery_failed",
                        &envelope.channel,
                        failed,
                        park,
                    )
                    .await
            }
        }
    }
}

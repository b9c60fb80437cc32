//! `deliver.zendesk-agent`: answers for visitors, sent into their chat one at a time (a
//! member's lane waits for each `sendMessage` result, which keeps their order: Zendesk does
//! not promise to run pipelined requests in order), and handoffs to the inlet's Zendesk
//! department.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::zendesk::{
    DEPARTMENTS_QUERY, DepartmentError, ErrorKind, online_department, send_request,
    transfer_request,
};
use handoff_proto::{
    Body, DeliverToMember, DeliveryFailed, Envelope, HandoffAccepted, HandoffFailed,
    RequestLivechat,
};
use serde_json::Value;

use crate::account::{Account, Offer};
use crate::session::RequestError;

pub(crate) struct Deliverer {
    pub bus: Bus,
    pub accounts: HashMap<String, Arc<Account>>,
}

impl Handler for Deliverer {
    async fn handle(&self, envelope: Envelope, _partition: u16) -> Handled {
        let Some(account) = self.accounts.get(&envelope.channel) else {
            return Handled::Park {
                reason: format!("`{}` is not a Zendesk inlet", envelope.channel),
            };
        };
        match &envelope.body {
            Some(Body::DeliverToMember(cmd)) => self.deliver(account, &envelope, cmd).await,
            Some(Body::RequestLivechat(cmd)) => self.transfer(account, &envelope, cmd).await,
            // After a transfer the department's agents read the visitor in Zendesk itself,
            // and nothing from the bot is for them.
            Some(Body::RelayToOutlet(_) | Body::DeliverToOutlet(_)) => Handled::Done,
            _ => Handled::Park {
                reason: format!("`{}` is not a command for zendesk-agent", envelope.kind()),
            },
        }
    }
}

impl Deliverer {
    async fn deliver(
        &self,
        account: &Account,
        envelope: &Envelope,
        cmd: &DeliverToMember,
    ) -> Handled {
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
        let offer = Offer::new(chat, &request.offered);
        match self.request(account, &request.query, offer).await {
            Ok(_) => {
                handoff_bus::metrics::delivered(envelope, "zendesk");
                Handled::Done
            }
            Err(e) => {
                let later = later(&e);
                handoff_bus::metrics::delivery_failed(
                    &envelope.channel,
                    "zendesk",
                    "zendesk",
                    later.is_some(),
                );
                if let Some(later) = later {
                    return later;
                }
                tracing::warn!(error = %e, "Zendesk refused an answer for good");
                let failed = Body::DeliveryFailed(DeliveryFailed {
                    content: Some(content.clone()),
                    reason: e.to_string(),
                    status: 0,
                });
                let park = Handled::Park {
                    reason: e.to_string(),
                };
                self.bus
                    .publish_then(envelope, "delivery_failed", &envelope.channel, failed, park)
                    .await
            }
        }
    }

    /// A handoff inside Zendesk: the configured department, if ONLINE, gets the chat;
    /// otherwise the bot is told why and keeps the visitor.
    async fn transfer(
        &self,
        account: &Account,
        envelope: &Envelope,
        cmd: &RequestLivechat,
    ) -> Handled {
        let (Some(member), Some(department)) = (&cmd.member, &account.settings.department) else {
            return Handled::Park {
                reason: format!(
                    "`{}` has no Zendesk department to hand off to",
                    envelope.channel
                ),
            };
        };
        let refused = |code: &str, reason: String| {
            Body::HandoffFailed(HandoffFailed {
                reason,
                status: 0,
                code: code.into(),
            })
        };
        let result = match self
            .transfer_chat(account, &member.external_id, department)
            .await
        {
            Ok(id) => Body::HandoffAccepted(HandoffAccepted {
                external_conversation_id: id,
            }),
            Err(Transfer::NotNow(e)) => refused(e.code(), e.to_string()),
            Err(Transfer::Failed(e)) => match later(&e) {
                Some(later) => return later,
                None => refused("zendesk_refused", e.to_string()),
            },
        };
        self.bus
            .publish_then(
                envelope,
                "livechat_result",
                &envelope.channel,
                result,
                Handled::Done,
            )
            .await
    }

    /// Transfers `chat` to `department` if it is ONLINE; the department's id.
    async fn transfer_chat(
        &self,
        account: &Account,
        chat: &str,
        department: &str,
    ) -> Result<String, Transfer> {
        let departments = self.request(account, DEPARTMENTS_QUERY, None).await?;
        let id = online_department(&departments, department).map_err(Transfer::NotNow)?;
        self.request(account, &transfer_request(chat, &id), None)
            .await?;
        Ok(id)
    }

    /// Runs a request on the account's session; rate limits are waited out here, with
    /// exponential backoff and jitter so a burst of members does not come back in step.
    async fn request(
        &self,
        account: &Account,
        query: &str,
        offer: Option<Offer>,
    ) -> Result<Value, RequestError> {
        let mut delay = Duration::from_millis(250);
        loop {
            match account.request(&self.bus, query, offer.clone()).await {
                Err(RequestError::Refused(e))
                    if e.kind == ErrorKind::RateLimited && delay <= Duration::from_secs(8) =>
                {
                    let jitter = rand::random_range(0.5..1.5);
                    tokio::time::sleep(delay.mul_f64(jitter)).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }
}

/// Why a chat was not transferred.
enum Transfer {
    /// The department is not there to take it (the bot is told).
    NotNow(DepartmentError),
    /// Zendesk could not be asked, or refused.
    Failed(RequestError),
}

impl From<RequestError> for Transfer {
    fn from(e: RequestError) -> Self {
        Self::Failed(e)
    }
}

/// A failure worth another try, as a retry of the command; `None` for a refusal for good.
/// A result that never came means the message may have been shown, and is sent again: at
/// least once, as with every platform.
fn later(e: &RequestError) -> Option<Handled> {
    match e {
        RequestError::NotConnected | RequestError::NoAnswer(_) | RequestError::SessionEnded => {
            Some(Handled::Retry {
                after: Duration::from_secs(1),
                reason: e.to_string(),
            })
        }
        RequestError::Refused(r) if r.kind != ErrorKind::Fatal => Some(Handled::Retry {
            after: Duration::from_secs(2),
            reason: e.to_string(),
        }),
        RequestError::Refused(_) => None,
    }
}

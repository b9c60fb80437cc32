//! `deliver.zendesk-agent`: answers for visitors, sent into their chat one at a time (a
//! member's lane waits for each `sendMessage` result, which keeps their order: Zendesk does
//! not promise to run pipelined requests in order), and handoffs to the inlet's Zendesk
//! department.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use handoff_bus::{Bus, Handled, Handler};
use handoff_platforms::settle::{Failure, settle};
use handoff_platforms::zendesk::transform::answer_declined;
use handoff_platforms::zendesk::{
    DEPARTMENTS_QUERY, DepartmentError, ErrorKind, online_department, send_request,
    transfer_request,
};
use handoff_platforms::{DeliveryError, Horizon, OutboundClient};
use handoff_proto::{
    Body, DeliverToMember, Envelope, HandoffAccepted, HandoffFailed, RequestLivechat,
};
use serde_json::Value;

use crate::account::{Account, Offer};
use crate::session::RequestError;

pub(crate) struct Deliverer {
    pub bus: Bus,
    pub client: OutboundClient,
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
        let attempt = match self.request(account, &request.query, offer).await {
            Ok(data) if answer_declined(&data) => Err(DeliveryError::Declined(
                "Zendesk answered `success: false` (the chat is no longer the agent's)".into(),
            )),
            Ok(_) => Ok(None),
            Err(e) => Err(delivery_error(e)),
        };
        settle(
            &self.client,
            &self.bus,
            envelope,
            &account.channel,
            Horizon::Delivery,
            attempt,
            |e| Failure::delivery_failed(content, e),
        )
        .await
    }

    /// A handoff inside Zendesk: the department an agent transferred the chat to, or else
    /// the configured one, gets the chat if ONLINE; otherwise the bot is told why and keeps
    /// the visitor.
    async fn transfer(
        &self,
        account: &Account,
        envelope: &Envelope,
        cmd: &RequestLivechat,
    ) -> Handled {
        let details = cmd.details.as_ref();
        let transferred_to = details
            .filter(|d| d.trigger == "transfer" && !d.group_name.is_empty())
            .map(|d| &d.group_name);
        let department = transferred_to.or(account.settings.department.as_ref());
        let (Some(member), Some(department)) = (&cmd.member, department) else {
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
        let attempt = match self
            .transfer_chat(account, &member.external_id, department)
            .await
        {
            Ok(id) => Ok(Body::HandoffAccepted(HandoffAccepted {
                external_conversation_id: id,
                ..Default::default()
            })),
            Err(Transfer::NotNow(e)) => Ok(refused(e.code(), e.to_string())),
            Err(Transfer::Failed(e)) => Err(delivery_error(e)),
        }
        .map(|result| Some(("livechat_result", result)));
        // No park: the bot takes the customer back, which is the answer.
        settle(
            &self.client,
            &self.bus,
            envelope,
            &account.channel,
            Horizon::Handoff,
            attempt,
            |e| Failure {
                purpose: "livechat_result",
                event: refused("zendesk_refused", e.to_string()),
                park: false,
            },
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

/// A session's failure in the seam's terms. A result that never came means the message may
/// have been shown, and is sent again: at least once, as with every platform. Only what
/// seed 002 calls fatal is a refusal for good; the rest is retried to the horizon.
fn delivery_error(e: RequestError) -> DeliveryError {
    let status = match &e {
        RequestError::Refused(r) if r.kind == ErrorKind::RateLimited => Some(429),
        _ => None,
    };
    match e {
        RequestError::Refused(ref r) if r.kind == ErrorKind::Fatal => {
            DeliveryError::Declined(e.to_string())
        }
        e => DeliveryError::Unavailable {
            attempts: 1,
            status,
            last: e.to_string(),
            retry_after: None,
        },
    }
}

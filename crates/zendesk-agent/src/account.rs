//! One Zendesk account, whichever replica holds its session.
//!
//! Zendesk allows one live agent session per account (a second login ends the first), so
//! replicas take accounts by lease (`handoff_bus::NamedLease`) and only the holder keeps a
//! session. Commands for the account's visitors reach whichever replica owns their
//! partition, though: a replica without the session forwards its GraphQL request to the
//! holder over NATS request–reply (`<prefix>_rpc.zendesk.<channel>`), outside the stream,
//! and gets the same answer it would have had locally.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use handoff_bus::Bus;
use handoff_config::Channel;
use handoff_platforms::zendesk::ZendeskSettings;
use handoff_proto::Choice;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::session::{ANSWER_WITHIN, Link, RequestError};

/// One configured Zendesk inlet.
pub(crate) struct Account {
    pub channel: Arc<Channel>,
    pub settings: ZendeskSettings,
    pub link: Arc<Link>,
}

/// Quick replies a request offers in a chat, remembered by the session that sent it to map
/// the visitor's pick back to its payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Offer {
    pub chat: String,
    pub choices: Vec<(String, String)>,
}

impl Offer {
    pub fn new(chat: &str, choices: &[Choice]) -> Option<Self> {
        (!choices.is_empty()).then(|| Self {
            chat: chat.to_string(),
            choices: choices
                .iter()
                .map(|c| (c.title.clone(), c.payload.clone()))
                .collect(),
        })
    }

    fn choices(&self) -> Vec<Choice> {
        self.choices
            .iter()
            .map(|(title, payload)| Choice {
                title: title.clone(),
                payload: payload.clone(),
            })
            .collect()
    }
}

#[derive(Serialize, Deserialize)]
struct Forwarded {
    query: String,
    offer: Option<Offer>,
}

impl Account {
    /// The NATS subject the session's holder answers forwarded requests on.
    pub fn rpc_subject(&self, bus: &Bus) -> String {
        // Channel ids are tokens (`A-Z a-z 0-9 - _`), valid in a subject as they are.
        format!("{}_rpc.zendesk.{}", bus.settings().prefix, self.channel.id)
    }

    /// Runs `query` on the account's session, here if this replica holds it, else on the
    /// holder's.
    pub async fn request(
        &self,
        bus: &Bus,
        query: &str,
        offer: Option<Offer>,
    ) -> Result<Value, RequestError> {
        if self.link.is_attached() {
            return self.request_here(query, offer).await;
        }
        let forwarded = serde_json::to_vec(&Forwarded {
            query: query.to_string(),
            offer,
        })
        .expect("a forwarded request serializes");
        let request = async_nats::Request::new()
            .payload(forwarded.into())
            // Longer than the holder waits for Zendesk, so its own verdict comes back.
            .timeout(Some(ANSWER_WITHIN + Duration::from_secs(2)));
        let reply = bus
            .client()
            .send_request(self.rpc_subject(bus), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::TimedOut => RequestError::NoAnswer(ANSWER_WITHIN),
                // Nobody holds the account yet (a hand-over in progress).
                _ => RequestError::NotConnected,
            })?;
        serde_json::from_slice::<Result<Value, RequestError>>(&reply.payload)
            .unwrap_or(Err(RequestError::NotConnected))
    }

    async fn request_here(&self, query: &str, offer: Option<Offer>) -> Result<Value, RequestError> {
        let data = self.link.request(query).await?;
        if let Some(offer) = offer {
            self.link.offer(&offer.chat, offer.choices());
        }
        Ok(data)
    }

    /// Answers the other replicas' forwarded requests while `held`.
    pub async fn serve_forwarded(self: Arc<Self>, bus: Bus, held: CancellationToken) {
        let subject = self.rpc_subject(&bus);
        let mut requests = loop {
            match bus.client().subscribe(subject.clone()).await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serve forwarded Zendesk requests; retrying");
                    tokio::select! {
                        () = held.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loop {
            let message = tokio::select! {
                () = held.cancelled() => break,
                m = requests.next() => match m { Some(m) => m, None => break },
            };
            let (Some(reply), Ok(forwarded)) = (
                message.reply,
                serde_json::from_slice::<Forwarded>(&message.payload),
            ) else {
                continue;
            };
            // Anyone on the bus can publish here: the session runs only what the hub sends.
            if !handoff_platforms::zendesk::transform::is_hub_operation(&forwarded.query) {
                tracing::warn!(channel = %self.channel.id, "a forwarded Zendesk request that the hub never sends was refused");
                continue;
            }
            let account = self.clone();
            let client = bus.client().clone();
            // Each request on its own: the callers' member lanes already keep their order.
            tokio::spawn(async move {
                let answer = account
                    .request_here(&forwarded.query, forwarded.offer)
                    .await;
                let body = serde_json::to_vec(&answer).expect("an answer serializes");
                let _ = client.publish(reply, body.into()).await;
            });
        }
        let _ = requests.unsubscribe().await;
    }
}

//! What an edge asks of the hub, in one place: to take in a platform's message (the
//! accept recipe every edge shares), and to look a member up (the router's look-up
//! contract, declared once here for the router that answers it and the gateways that ask).
//!
//! An edge is written against [`Hub`]; the services give it their [`Bus`]. The edges' unit
//! tests give it a recorder instead, so they run without NATS; the system tests run every
//! edge against the real bus.

use std::future::Future;
use std::time::Duration;

use handoff_bus::{Bus, PublishError, message_keys, now_ms};
use handoff_config::Channel;
use handoff_proto::{Body, Envelope};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The router's look-up subject. Outside the stream's `<prefix>.>` on purpose: a request on
/// a stream subject would be stored and answered by JetStream's publish acknowledgement
/// instead of the router.
pub fn lookup_subject(prefix: &str) -> String {
    format!("{prefix}_rpc.lookup")
}

/// Who a member or an outlet's conversation is (`<prefix>_rpc.lookup`, JSON).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupRequest {
    /// The channel whose endpoint received the call (a bot or an outlet); a member is
    /// found only if that channel may act on it.
    #[serde(default)]
    pub caller: Option<String>,
    /// A member `_id` (agent replies: `sendToInlet.memberId`).
    #[serde(default)]
    pub member_id: Option<String>,
    /// An outlet and its reference to a conversation (agent commands: `messageEvent.to`).
    #[serde(default)]
    pub outlet_channel: Option<String>,
    #[serde(default)]
    pub conversation_ref: Option<String>,
    /// Take the member over for `caller` (an outlet) if the bot holds it: a live chat is
    /// opened by compare-and-set before the answer, so of two racing callers one wins.
    #[serde(default)]
    pub claim: bool,
    /// The agent taking over, when the desk says (`agentName`).
    #[serde(default)]
    pub agent_name: Option<String>,
}

/// Who serves a member now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Serving {
    /// No open conversation: the bot.
    #[default]
    Bot,
    /// Handed over; the outlet has not accepted yet.
    Pending,
    /// In a live chat.
    Live,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupReply {
    pub found: bool,
    /// Empty when not found.
    #[serde(default, with = "optional_uuid")]
    pub member_id: Option<Uuid>,
    #[serde(default)]
    pub state: Serving,
    #[serde(default, with = "optional_uuid")]
    pub conversation_id: Option<Uuid>,
    #[serde(default)]
    pub outlet_channel: String,
    /// This look-up's `claim` opened the live chat.
    #[serde(default)]
    pub claimed: bool,
    /// The router could not answer (its log says why).
    #[serde(default)]
    pub error: Option<String>,
}

/// Ids travel as strings, empty for none (the contract's form before it was typed).
mod optional_uuid {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Option<Uuid>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.collect_str(id),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// A look-up that got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupFailed {
    #[error("member look-up timed out")]
    TimedOut,
    #[error("member look-up failed: {0}")]
    Unreachable(String),
    #[error("the look-up reply is not valid: {0}")]
    BadReply(String),
    #[error("the router could not look the member up: {0}")]
    Router(String),
}

/// What an edge needs of the hub.
pub trait Hub: Clone + Send + Sync + 'static {
    /// Stores a new platform message once (see [`Bus::accept_inbound_once`]); `true` when
    /// it was a duplicate.
    fn accept_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> impl Future<Output = Result<bool, PublishError>> + Send;

    /// Stores a result the hub asked for once (a bot's answer): it may use the share of the
    /// events stream new messages may not (see [`Bus::publish_event_once`]).
    fn store_result_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> impl Future<Output = Result<bool, PublishError>> + Send;

    /// Asks the router who a member is.
    fn lookup(
        &self,
        request: &LookupRequest,
    ) -> impl Future<Output = Result<LookupReply, LookupFailed>> + Send;
}

impl Hub for Bus {
    fn accept_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> impl Future<Output = Result<bool, PublishError>> + Send {
        self.accept_inbound_once(envelope, dedup_id)
    }

    fn store_result_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> impl Future<Output = Result<bool, PublishError>> + Send {
        self.publish_event_once(envelope, dedup_id)
    }

    async fn lookup(&self, request: &LookupRequest) -> Result<LookupReply, LookupFailed> {
        let subject = lookup_subject(&self.settings().prefix);
        let payload = serde_json::to_vec(request).expect("serializable");
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.client().request(subject, payload.into()),
        )
        .await
        .map_err(|_| LookupFailed::TimedOut)?
        .map_err(|e| LookupFailed::Unreachable(e.to_string()))?;
        let reply: LookupReply = serde_json::from_slice(&reply.payload)
            .map_err(|e| LookupFailed::BadReply(e.to_string()))?;
        match reply.error {
            Some(error) => Err(LookupFailed::Router(error)),
            None => Ok(reply),
        }
    }
}

/// A message a platform sent, as an edge read it.
pub struct Incoming {
    pub member_id: String,
    /// The conversation it belongs to, when the edge knows (an agent's).
    pub conversation_id: String,
    /// What kind of message it is for its keys (`inbound`, `agent`, …): the same platform
    /// id under two purposes is two messages.
    pub purpose: &'static str,
    /// The platform's own id for it, if it sent one.
    pub source_id: Option<String>,
    pub occurred_at_ms: i64,
    pub body: Body,
}

impl Incoming {
    /// The event it becomes on `channel`, and the id JetStream recognises a repeat by.
    /// `canonical_body` identifies it when the platform sent no id.
    pub fn envelope(self, channel: &Channel, canonical_body: &[u8]) -> (Envelope, String) {
        let keys = message_keys(
            &channel.id,
            &self.member_id,
            self.purpose,
            self.source_id,
            canonical_body,
        );
        let envelope = Envelope {
            event_id: keys.event_id,
            org: channel.org.clone(),
            channel: channel.id.clone(),
            member_id: self.member_id,
            conversation_id: self.conversation_id,
            source_message_id: keys.source_message_id,
            occurred_at_ms: self.occurred_at_ms,
            accepted_at_ms: now_ms(),
            body: Some(self.body),
            ..Default::default()
        };
        (envelope, keys.dedup_id)
    }
}

/// How an accepted message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    /// A repeat of one accepted before: stored once, handled once.
    pub duplicate: bool,
}

/// The accept recipe: the message becomes one event, stored once (a repeat is recognised
/// and answered as accepted), and counted as a message in on its channel.
pub async fn accept(
    hub: &impl Hub,
    channel: &Channel,
    incoming: Incoming,
    canonical_body: &[u8],
) -> Result<Accepted, PublishError> {
    let (envelope, dedup_id) = incoming.envelope(channel, canonical_body);
    accept_envelope(hub, channel, &envelope, &dedup_id).await
}

/// [`accept`] for an event already built (an edge that retries the same event).
pub async fn accept_envelope(
    hub: &impl Hub,
    channel: &Channel,
    envelope: &Envelope,
    dedup_id: &str,
) -> Result<Accepted, PublishError> {
    let duplicate = hub.accept_once(envelope, dedup_id).await?;
    counted(channel, envelope, duplicate)
}

/// [`accept`] for a result the hub asked for (a bot's answer on its webhook).
pub async fn accept_result(
    hub: &impl Hub,
    channel: &Channel,
    incoming: Incoming,
    canonical_body: &[u8],
) -> Result<Accepted, PublishError> {
    let (envelope, dedup_id) = incoming.envelope(channel, canonical_body);
    let duplicate = hub.store_result_once(&envelope, &dedup_id).await?;
    counted(channel, &envelope, duplicate)
}

fn counted(
    channel: &Channel,
    envelope: &Envelope,
    duplicate: bool,
) -> Result<Accepted, PublishError> {
    if !duplicate {
        crate::metrics::message_in(&channel.id, channel.platform.as_str());
    }
    Ok(Accepted {
        event_id: envelope.event_id.clone(),
        duplicate,
    })
}

/// What an edge's handlers share: the hub, the channels in force, the body limit.
#[derive(Clone)]
pub struct Edge<H> {
    pub hub: H,
    pub catalog: crate::Catalog,
    pub body_limit: usize,
}

/// A [`Hub`] that keeps what an edge hands it, for the edges' unit tests (they run without
/// NATS; the system tests run the same edges on the real bus). It recognises a repeated
/// dedup id as the bus would, answers look-ups from the members it was told about, and can
/// be made to refuse as a full or unreachable bus does.
#[derive(Clone, Default)]
pub struct Recorder {
    inner: std::sync::Arc<std::sync::Mutex<Recorded>>,
}

#[derive(Default)]
struct Recorded {
    accepted: Vec<Envelope>,
    dedup_ids: std::collections::HashSet<String>,
    /// Look-up answers by member id or conversation reference.
    known: std::collections::HashMap<String, LookupReply>,
    lookups: Vec<LookupRequest>,
    refusal: Option<fn() -> PublishError>,
}

impl Recorder {
    /// Every event accepted (stored once), in order.
    pub fn accepted(&self) -> Vec<Envelope> {
        self.inner.lock().expect("not poisoned").accepted.clone()
    }

    /// Every look-up asked, in order.
    pub fn lookups(&self) -> Vec<LookupRequest> {
        self.inner.lock().expect("not poisoned").lookups.clone()
    }

    /// Answers look-ups naming `key` (a member id or a conversation reference) with `reply`.
    pub fn knows(&self, key: &str, reply: LookupReply) {
        self.inner
            .lock()
            .expect("not poisoned")
            .known
            .insert(key.to_string(), reply);
    }

    /// Refuses every message from now on with what `refusal` makes.
    pub fn refuse_with(&self, refusal: fn() -> PublishError) {
        self.inner.lock().expect("not poisoned").refusal = Some(refusal);
    }

    fn store(&self, envelope: &Envelope, dedup_id: &str) -> Result<bool, PublishError> {
        let mut recorded = self.inner.lock().expect("not poisoned");
        if let Some(refusal) = recorded.refusal {
            return Err(refusal());
        }
        if !recorded.dedup_ids.insert(dedup_id.to_string()) {
            return Ok(true);
        }
        recorded.accepted.push(envelope.clone());
        Ok(false)
    }
}

impl Hub for Recorder {
    async fn accept_once(&self, envelope: &Envelope, dedup_id: &str) -> Result<bool, PublishError> {
        self.store(envelope, dedup_id)
    }

    async fn store_result_once(
        &self,
        envelope: &Envelope,
        dedup_id: &str,
    ) -> Result<bool, PublishError> {
        self.store(envelope, dedup_id)
    }

    async fn lookup(&self, request: &LookupRequest) -> Result<LookupReply, LookupFailed> {
        let mut recorded = self.inner.lock().expect("not poisoned");
        recorded.lookups.push(request.clone());
        let key = request
            .member_id
            .as_deref()
            .or(request.conversation_ref.as_deref())
            .unwrap_or_default();
        Ok(recorded.known.get(key).cloned().unwrap_or_default())
    }
}

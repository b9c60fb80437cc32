//! One Zendesk account's agent session: `startAgentSession` over HTTP, then the WebSocket:
//! ONLINE, the `message` and `chatActivity` subscriptions, PINGs, visitors' messages and
//! departures published as events, and the deliverer's requests answered by id. A session that ends (EOS, a dropped
//! socket, a missing PONG) is replaced by a new one, after a backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use handoff_bus::{Bus, now_ms};
use handoff_platforms::hub::{Incoming, accept_envelope};
use handoff_platforms::zendesk::{
    ACTIVITY_SUBSCRIPTION, ErrorKind, Frame, FrameError, GO_ONLINE, MESSAGE_SUBSCRIPTION,
    parse_frame, ping_frame, request_frame, start_session_query, stop_subscription_frame,
    visitor_content, visitor_left, visitor_message,
};
use handoff_proto::{Body, Choice, CustomerLeft, InboundMessage};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::account::Account;

/// How often the socket is pinged; a PING unanswered by the next one means a dead socket.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a request's answer may take before it counts as lost.
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The subscription-start retries seed 002 allows: 3 to 5 within 30 s.
const SUBSCRIPTION_ATTEMPTS: u32 = 4;

/// Why a request got no result. Serializable: a replica without the session receives it
/// from the holder's.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub(crate) enum RequestError {
    #[error("no session is connected")]
    NotConnected,
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("the session ended before the answer")]
    SessionEnded,
    #[error("Zendesk refused it: {0}")]
    Refused(FrameError),
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, FrameError>>>;

/// The account's live connection, shared by the session loop and the deliverer.
#[derive(Default)]
pub(crate) struct Link {
    outgoing: std::sync::Mutex<Option<mpsc::UnboundedSender<Message>>>,
    pending: std::sync::Mutex<Pending>,
    next_id: AtomicU64,
    /// Quick replies last offered in each chat, to map a visitor's pick to its payload.
    offered: std::sync::Mutex<HashMap<String, Vec<Choice>>>,
}

impl Link {
    /// Sends a request and waits for its answer.
    pub async fn request(&self, query: &str) -> Result<Value, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        {
            let outgoing = self.outgoing.lock().expect("link lock");
            let sender = outgoing.as_ref().ok_or(RequestError::NotConnected)?;
            self.pending.lock().expect("link lock").insert(id, tx);
            if sender
                .send(Message::text(request_frame(id, query)))
                .is_err()
            {
                self.pending.lock().expect("link lock").remove(&id);
                return Err(RequestError::NotConnected);
            }
        }
        let answer = tokio::time::timeout(ANSWER_WITHIN, rx).await;
        self.pending.lock().expect("link lock").remove(&id);
        match answer {
            Err(_) => Err(RequestError::NoAnswer(ANSWER_WITHIN)),
            Ok(Err(_)) => Err(RequestError::SessionEnded),
            Ok(Ok(result)) => result.map_err(RequestError::Refused),
        }
    }

    pub fn offer(&self, chat: &str, choices: Vec<Choice>) {
        self.offered
            .lock()
            .expect("link lock")
            .insert(chat.to_string(), choices);
    }

    fn offered(&self, chat: &str) -> Vec<Choice> {
        self.offered
            .lock()
            .expect("link lock")
            .get(chat)
            .cloned()
            .unwrap_or_default()
    }

    fn answer(&self, id: u64, result: Result<Value, FrameError>) {
        if let Some(waiter) = self.pending.lock().expect("link lock").remove(&id) {
            let _ = waiter.send(result);
        }
    }

    /// Whether this replica's session is connected now.
    pub fn is_attached(&self) -> bool {
        self.outgoing.lock().expect("link lock").is_some()
    }

    fn attach(&self, sender: mpsc::UnboundedSender<Message>) {
        *self.outgoing.lock().expect("link lock") = Some(sender);
    }

    /// The socket is gone: requests in flight learn it now rather than at their timeout.
    fn detach(&self) {
        *self.outgoing.lock().expect("link lock") = None;
        self.pending.lock().expect("link lock").clear();
    }
}

/// Why a session ended.
enum Ended {
    /// Shutting down.
    Stopped,
    /// Worth a new session at once (EOS) or after a backoff (a dropped socket).
    Again(String),
    /// A refusal that a new session would meet again (UNAUTHORIZED, FORBIDDEN, …).
    Refused(FrameError),
}

/// Keeps the account's session up until `stop`.
pub(crate) async fn run(
    account: Arc<Account>,
    bus: Bus,
    http: reqwest::Client,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let what = format!("zendesk account `{}`", account.channel.id);
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = Instant::now();
        let ended = session(&account, &bus, &http, &stop).await;
        account.link.detach();
        let wait = match ended {
            Ended::Stopped => return Ok(()),
            Ended::Again(why) => {
                tracing::warn!(account = %account.channel.id, %why, "Zendesk session ended; starting another");
                bus.report(&what, Some(why));
                backoff
            }
            Ended::Refused(e) => {
                // A human must fix the token or the plan; until then the service says why
                // it is not ready, and tries again now and then.
                tracing::error!(account = %account.channel.id, name = %e.name, uuid = %e.uuid, message = %e.message, "Zendesk refused the session");
                bus.report(&what, Some(format!("Zendesk refused the session: {e}")));
                Duration::from_secs(30)
            }
        };
        // A session that lived a while starts the backoff over.
        backoff = if started.elapsed() > Duration::from_secs(30) {
            Duration::from_millis(200)
        } else {
            (backoff * 2).min(Duration::from_secs(15))
        };
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    account: &Account,
    bus: &Bus,
    http: &reqwest::Client,
    stop: &CancellationToken,
) -> Ended {
    let url = match start_session(account, http).await {
        Ok(url) => url,
        Err(Ok(refused)) => return Ended::Refused(refused),
        Err(Err(why)) => return Ended::Again(why),
    };
    let socket = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok((socket, _)) => socket,
        Err(e) => return Ended::Again(format!("cannot open the WebSocket: {e}")),
    };
    let (mut sink, mut frames) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    account.link.attach(tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let setup = setup(account);
    tokio::pin!(setup);
    // The `message` and `chatActivity` subscriptions, once both are started.
    let mut subscriptions: Option<(String, String)> = None;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ponged = true;
    // Events that arrive before both subscriptions are acknowledged (a visitor can write
    // the moment `message` starts), handled in order once they are.
    let mut early: Vec<(String, Result<Value, FrameError>)> = Vec::new();
    let what = format!("zendesk account `{}`", account.channel.id);
    let ended = loop {
        tokio::select! {
            () = stop.cancelled() => break Ended::Stopped,
            result = &mut setup, if subscriptions.is_none() => match result {
                Ok(ids) => {
                    tracing::info!(account = %account.channel.id, "Zendesk session online");
                    bus.report(&what, None);
                    let mut ended = None;
                    for (s, result) in early.drain(..) {
                        ended = on_event(account, bus, stop, &ids, &s, result).await;
                        if ended.is_some() {
                            break;
                        }
                    }
                    subscriptions = Some(ids);
                    if let Some(ended) = ended {
                        break ended;
                    }
                }
                Err(ended) => break ended,
            },
            _ = ping.tick() => {
                if !ponged {
                    break Ended::Again("no PONG to the last PING".into());
                }
                ponged = false;
                let _ = tx.send(Message::text(ping_frame(now_ms())));
            }
            frame = frames.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(close))) => {
                        break Ended::Again(format!("the socket was closed: {close:?}"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Ended::Again(format!("the socket failed: {e}")),
                    None => break Ended::Again("the socket ended".into()),
                };
                match parse_frame(text.as_str()) {
                    Ok(Frame::Answer { id, result }) => account.link.answer(id, result),
                    Ok(Frame::Pong) => ponged = true,
                    Ok(Frame::EndOfSession { reason }) => {
                        break Ended::Again(format!("end of session: {reason}"));
                    }
                    Ok(Frame::Event { subscription: s, result }) => {
                        let Some(ids) = &subscriptions else {
                            early.push((s, result));
                            continue;
                        };
                        if let Some(ended) = on_event(account, bus, stop, ids, &s, result).await {
                            break ended;
                        }
                    }
                    Err(why) => tracing::warn!(%why, "a frame was not understood; ignored"),
                }
            }
        }
    };
    if let Some((messages, activity)) = &subscriptions
        && matches!(ended, Ended::Stopped)
    {
        for id in [messages, activity] {
            let _ = tx.send(Message::text(stop_subscription_frame(id)));
        }
    }
    account.link.detach();
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    ended
}

/// `startAgentSession` → the WebSocket URL. `Err(Ok(_))`: Zendesk refused; `Err(Err(_))`:
/// it could not be asked.
async fn start_session(
    account: &Account,
    http: &reqwest::Client,
) -> Result<String, Result<FrameError, String>> {
    let query = start_session_query(account.settings.access_token.expose_secret());
    let answer: Value = http
        .post(&account.settings.endpoint)
        .json(&json!({ "query": query }))
        .timeout(ANSWER_WITHIN)
        .send()
        .await
        .map_err(|e| Err(format!("startAgentSession: {}", e.without_url())))?
        .json()
        .await
        .map_err(|e| Err(format!("startAgentSession answer: {e}")))?;
    // The HTTP answer has the shape of a frame's payload.
    let frame = json!({"id": 0, "payload": answer}).to_string();
    match parse_frame(&frame) {
        Ok(Frame::Answer {
            result: Ok(data), ..
        }) => data["startAgentSession"]["websocket_url"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Err("startAgentSession answered without a websocket_url".into())),
        Ok(Frame::Answer { result: Err(e), .. }) if e.kind == ErrorKind::Fatal => Err(Ok(e)),
        Ok(Frame::Answer { result: Err(e), .. }) => Err(Err(format!("startAgentSession: {e}"))),
        _ => Err(Err(
            "startAgentSession: an answer that is not GraphQL".into()
        )),
    }
}

/// An event of one of the session's subscriptions; `Some` when it ends the session.
async fn on_event(
    account: &Account,
    bus: &Bus,
    stop: &CancellationToken,
    (messages, activity): &(String, String),
    subscription: &str,
    result: Result<Value, FrameError>,
) -> Option<Ended> {
    let handled = match result {
        Ok(data) if subscription == messages => on_message(account, bus, &data, stop).await,
        Ok(data) if subscription == activity => on_activity(account, bus, &data, stop).await,
        // Another session's subscription, or one this service never started.
        Ok(_) => Ok(()),
        Err(e) if e.kind == ErrorKind::Fatal => return Some(Ended::Refused(e)),
        Err(e) => Err(format!("the subscription failed: {e}")),
    };
    handled.err().map(Ended::Again)
}

/// ONLINE, then the `message` and `chatActivity` subscriptions; their ids.
async fn setup(account: &Account) -> Result<(String, String), Ended> {
    account
        .link
        .request(GO_ONLINE)
        .await
        .map_err(|e| refused("going online", e))?;
    let messages = subscribe(account, MESSAGE_SUBSCRIPTION).await?;
    let activity = subscribe(account, ACTIVITY_SUBSCRIPTION).await?;
    Ok((messages, activity))
}

fn refused(doing: &str, e: RequestError) -> Ended {
    match e {
        RequestError::Refused(e) if e.kind == ErrorKind::Fatal => Ended::Refused(e),
        other => Ended::Again(format!("{doing}: {other}")),
    }
}

/// Starts a subscription, retrying a failed start as seed 002 allows (3–5 times in 30 s).
async fn subscribe(account: &Account, query: &str) -> Result<String, Ended> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=SUBSCRIPTION_ATTEMPTS {
        match account.link.request(query).await {
            Ok(data) => {
                return data["subscription_id"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Ended::Again("a subscription without an id".into()));
            }
            Err(RequestError::Refused(e))
                if matches!(
                    e.kind,
                    ErrorKind::SubscriptionStart | ErrorKind::RateLimited
                ) && attempt < SUBSCRIPTION_ATTEMPTS =>
            {
                tracing::warn!(uuid = %e.uuid, attempt, "a subscription did not start; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(refused("subscribing", e)),
        }
    }
    Err(Ended::Again("a subscription never started".into()))
}

/// A visitor who closed their chat: the conversation closes (`CustomerLeft`).
async fn on_activity(
    account: &Account,
    bus: &Bus,
    data: &Value,
    stop: &CancellationToken,
) -> Result<(), String> {
    let (chat, log_id) = match visitor_left(data) {
        Ok(Some(left)) => left,
        Ok(None) => return Ok(()),
        Err(why) => {
            tracing::warn!(%why, "a chatActivity event was not understood; ignored");
            return Ok(());
        }
    };
    let event = FromZendesk {
        chat: &chat,
        purpose: "left",
        zendesk_id: log_id,
        occurred_at_ms: now_ms(),
        body: Body::CustomerLeft(CustomerLeft {}),
    };
    store(account, bus, data, event, stop).await
}

/// A visitor's message, stored in JetStream before the next frame is read: a message is
/// published in the order it arrived, once (its Zendesk id is the key).
async fn on_message(
    account: &Account,
    bus: &Bus,
    data: &Value,
    stop: &CancellationToken,
) -> Result<(), String> {
    let message = match visitor_message(data) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(why) => {
            tracing::warn!(%why, "a message event was not understood; ignored");
            return Ok(());
        }
    };
    let content = visitor_content(&message.text, &account.link.offered(&message.channel_id));
    let event = FromZendesk {
        chat: &message.channel_id,
        purpose: "inbound",
        zendesk_id: message.message_id.clone(),
        occurred_at_ms: message.timestamp_ms.unwrap_or_else(now_ms),
        body: Body::InboundMessage(InboundMessage {
            external_id: message.channel_id.clone(),
            profile_json: json!({
                "firstName": message.visitor_name,
                "zendeskVisitorId": message.visitor_id,
            })
            .to_string(),
            content: Some(content),
        }),
    };
    store(account, bus, data, event, stop).await
}

/// Something that happened in a Zendesk chat, to be stored as an event of its member.
struct FromZendesk<'a> {
    /// The Zendesk chat (channel) id: the member's external id.
    chat: &'a str,
    purpose: &'static str,
    /// Zendesk's id of the message or chat log: repeats of it have one effect.
    zendesk_id: String,
    occurred_at_ms: i64,
    body: Body,
}

/// Stores an event before the session reads on: Zendesk will not send it again, so a bus
/// outage is waited out here rather than losing it.
async fn store(
    account: &Account,
    bus: &Bus,
    data: &Value,
    event: FromZendesk<'_>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let channel = &account.channel;
    let member_id = channel.member_id(event.chat).to_string();
    let (envelope, dedup_id) = Incoming {
        member_id,
        conversation_id: String::new(),
        purpose: event.purpose,
        source_id: Some(event.zendesk_id),
        occurred_at_ms: event.occurred_at_ms,
        body: event.body,
    }
    .envelope(channel, data.to_string().as_bytes());
    let mut delay = Duration::from_millis(100);
    loop {
        match accept_envelope(bus, channel, &envelope, &dedup_id).await {
            Ok(_) => return Ok(()),
            // Zendesk cannot be told no: what can never be stored is reported and skipped.
            Err(e @ handoff_bus::PublishError::TooLarge { .. }) => {
                tracing::error!(error = %e, channel = %channel.id, "an event from Zendesk is too large for the bus; skipped");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "an event from Zendesk is not stored yet; retrying")
            }
        }
        tokio::select! {
            () = stop.cancelled() => return Err("stopped before an event from Zendesk was stored".into()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

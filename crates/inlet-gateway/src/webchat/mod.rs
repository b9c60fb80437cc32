//! The web chat (`platform: webchat`): the widget and its page, visitor sessions, and one
//! WebSocket per connected visitor.
//!
//! A visitor's messages in go through the same accept recipe as every edge (stored once in
//! JetStream before they are confirmed); what the hub sends them is read from their mailbox
//! (`handoff_bus::mailbox`) from the last sequence the browser saw, so any replica serves
//! any visitor and a reconnect loses nothing and repeats nothing.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt as _, StreamExt as _};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use handoff_bus::mailbox::Mailbox;
use handoff_bus::{Bus, now_ms};
use handoff_config::Channel;
use handoff_platforms::hub::{Incoming, accept};
use handoff_platforms::webchat::frames::{ClientFrame, MailboxEntry, error_frame};
use handoff_platforms::webchat::{TokenError, VisitorToken, WebchatSettings};
use handoff_platforms::{Catalog, ChannelSettings, error_response};
use handoff_proto::{Body, InboundMessage};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WIDGET_JS: &str = include_str!("assets/widget.js");
const WIDGET_CSS: &str = include_str!("assets/widget.css");
const PAGE_HTML: &str = include_str!("assets/page.html");

/// A WebSocket close code the widget reads as "your token was refused: start again".
const CLOSE_TOKEN_REFUSED: u16 = 4401;
/// "Service restart": the widget reconnects (to another replica, or this one restarted).
const CLOSE_GOING_AWAY: u16 = 1012;
/// Keeps proxies and NATs from dropping a quiet visitor.
const PING_EVERY: Duration = Duration::from_secs(25);
/// A session request's body is a token and a small profile.
const SESSION_BODY_LIMIT: usize = 8 * 1024;

#[derive(Clone)]
pub(crate) struct Webchat {
    pub bus: Bus,
    pub catalog: Catalog,
    pub mailbox: Mailbox,
    /// Ends every visitor's socket when the service stops.
    pub stop: CancellationToken,
    limiters: Limiters,
}

/// Per-visitor rate limits, one limiter per channel and quota (a channel's quota can
/// change at runtime). Per replica: a visitor spread over replicas gets each one's share.
#[derive(Clone, Default)]
struct Limiters(Arc<Mutex<LimiterMap>>);

/// By (channel, messages per minute).
type LimiterMap = HashMap<(String, u32), Arc<DefaultKeyedRateLimiter<Uuid>>>;

impl Limiters {
    fn allows(&self, channel: &str, per_minute: u32, visitor: Uuid) -> bool {
        let limiter = {
            let mut all = self.0.lock().expect("limiter map");
            all.entry((channel.to_string(), per_minute))
                .or_insert_with(|| {
                    let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
                    let burst = NonZeroU32::new(per_minute.div_ceil(3)).unwrap_or(NonZeroU32::MIN);
                    Arc::new(RateLimiter::keyed(
                        Quota::per_minute(rate).allow_burst(burst),
                    ))
                })
                .clone()
        };
        limiter.check_key(&visitor).is_ok()
    }

    /// Forgets visitors whose budget is full again (run now and then).
    fn forget_idle(&self) {
        for limiter in self.0.lock().expect("limiter map").values() {
            limiter.retain_recent();
        }
    }
}

impl Webchat {
    pub async fn open(bus: Bus, catalog: Catalog, stop: CancellationToken) -> anyhow::Result<Self> {
        let mailbox = Mailbox::open(&bus).await?;
        let webchat = Self {
            bus,
            catalog,
            mailbox,
            stop,
            limiters: Limiters::default(),
        };
        let (limiters, stop) = (webchat.limiters.clone(), webchat.stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => limiters.forget_idle(),
                }
            }
        });
        Ok(webchat)
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/webchat/v1/widget.js", get(widget_js))
            .route("/webchat/v1/widget.css", get(widget_css))
            .route("/webchat/v1/{org}/{channel}", get(page))
            .route(
                "/webchat/v1/{org}/{channel}/session",
                axum::routing::post(session).options(preflight),
            )
            .route("/webchat/v1/{org}/{channel}/ws", get(socket))
            .with_state(self)
    }

    /// The web chat channel `org`/`channel` and its settings, if it is served here.
    fn channel(
        &self,
        org: &str,
        channel: &str,
    ) -> Result<(Arc<Channel>, WebchatSettings), Refusal> {
        let catalog = self.catalog.load();
        match catalog.configured(channel) {
            Some((c, ChannelSettings::Webchat(s))) if c.org == org => {
                if !catalog.channels.is_enabled(&c.id) {
                    return Err(Refusal::new(
                        StatusCode::CONFLICT,
                        "channel_disabled",
                        format!("chat `{channel}` is disabled and accepts no new messages"),
                    ));
                }
                Ok((c.clone(), s.clone()))
            }
            _ => Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "unknown_channel",
                format!("no web chat `{channel}` in org `{org}` is served here"),
            )),
        }
    }
}

/// A refused request: `{"error": {"code", "message"}}` with its status.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, self.message, None)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn widget_js() -> Response {
    asset("application/javascript; charset=utf-8", WIDGET_JS)
}

async fn widget_css() -> Response {
    asset("text/css; charset=utf-8", WIDGET_CSS)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The standalone page: the widget, full page.
async fn page(
    State(chat): State<Webchat>,
    Path((org, channel)): Path<(String, String)>,
) -> Result<Response, Refusal> {
    let (c, settings) = chat.channel(&org, &channel)?;
    let html = PAGE_HTML
        .replace("{{ORG}}", &html_escape(&c.org))
        .replace("{{CHANNEL}}", &html_escape(&c.id))
        .replace("{{TITLE}}", &html_escape(&settings.title));
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response())
}

/// Whether the page that sent the request may use the chat: no `Origin` (not a browser
/// page: it needs a token all the same), the hub's own pages, or one the channel allows.
fn origin_allowed(
    headers: &HeaderMap,
    settings: &WebchatSettings,
) -> Result<Option<HeaderValue>, Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = origin.to_str().unwrap_or_default();
    let own_host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same_host = own_host.is_some_and(|host| {
        text.split_once("://")
            .is_some_and(|(_, rest)| rest.trim_end_matches('/').eq_ignore_ascii_case(host))
    });
    if same_host || settings.allows_origin(text, None) {
        Ok(Some(origin.clone()))
    } else {
        Err(Refusal::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "pages at `{text}` may not use this chat (see the channel's info.allowedOrigins)"
            ),
        ))
    }
}

fn with_cors(mut response: Response, origin: Option<HeaderValue>) -> Response {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn preflight(
    State(chat): State<Webchat>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let (_, settings) = chat.channel(&org, &channel)?;
    let origin = origin_allowed(&headers, &settings)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Ok(with_cors(response, origin))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    profile: Option<serde_json::Map<String, Value>>,
}

/// A profile is a few short texts the page knows (a name, a locale); nothing else is kept.
fn valid_profile(profile: &serde_json::Map<String, Value>) -> Result<(), Refusal> {
    let bad = profile.len() > 10
        || profile.iter().any(|(k, v)| {
            k.len() > 40 || !matches!(v, Value::String(s) if s.chars().count() <= 200)
        });
    if bad {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            "profile: at most 10 fields, each a text of at most 200 characters".into(),
        ));
    }
    Ok(())
}

/// `POST …/session`: a token for a new visitor, or the same visitor's token renewed.
async fn session(
    State(chat): State<Webchat>,
    Path((org, channel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = async {
        let (c, settings) = chat.channel(&org, &channel)?;
        let origin = origin_allowed(&headers, &settings)?;
        let result = (|| {
            if body.len() > SESSION_BODY_LIMIT {
                return Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("body is larger than {SESSION_BODY_LIMIT} bytes"),
                ));
            }
            let request: SessionRequest = if body.iter().all(u8::is_ascii_whitespace) {
                SessionRequest {
                    token: None,
                    profile: None,
                }
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("body: {e}"),
                    )
                })?
            };
            let now = now_ms() / 1000;
            let token = match request.token.as_deref().filter(|t| !t.is_empty()) {
                Some(token) => {
                    let mut known =
                        VisitorToken::verify(token, &settings.token_key, &c.org, &c.id, now)
                            .map_err(refused_token)?;
                    known.expires = now.saturating_add(settings.token_ttl_secs as i64);
                    known
                }
                None => {
                    let profile = request.profile.unwrap_or_default();
                    valid_profile(&profile)?;
                    VisitorToken::new(&c.org, &c.id, now, settings.token_ttl_secs, profile)
                }
            };
            let expires = time::OffsetDateTime::from_unix_timestamp(token.expires)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default();
            Ok(axum::Json(json!({
                "token": token.sign(&settings.token_key),
                "visitorId": token.visitor,
                "expiresAt": expires,
            }))
            .into_response())
        })();
        Ok::<_, Refusal>(with_cors(
            result.unwrap_or_else(IntoResponse::into_response),
            origin,
        ))
    }
    .await;
    answer.unwrap_or_else(IntoResponse::into_response)
}

fn refused_token(e: TokenError) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, "invalid_token", e.to_string())
}

#[derive(Deserialize)]
struct SocketQuery {
    #[serde(default)]
    token: String,
    /// The highest sequence the browser has shown.
    #[serde(default)]
    after: u64,
}

/// `GET …/ws`: the visitor's connection.
async fn socket(
    State(chat): State<Webchat>,
    Path((org, channel)): Path<(String, String)>,
    Query(query): Query<SocketQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, Refusal> {
    let (c, settings) = chat.channel(&org, &channel)?;
    origin_allowed(&headers, &settings)?;
    let token = VisitorToken::verify(
        &query.token,
        &settings.token_key,
        &c.org,
        &c.id,
        now_ms() / 1000,
    );
    // A visitor's frames are small and most sockets sit idle: tungstenite's default 128 KiB
    // read buffer per socket was most of a connection's memory (docs/performance.md).
    let upgrade = upgrade
        .max_message_size(64 * 1024)
        .read_buffer_size(4 * 1024);
    Ok(match token {
        // A browser cannot read an HTTP status of a refused upgrade: it is told in a close
        // frame it can read.
        Err(e) => upgrade.on_upgrade(move |mut socket| async move {
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: CLOSE_TOKEN_REFUSED,
                    reason: e.to_string().into(),
                })))
                .await;
        }),
        Ok(token) => upgrade.on_upgrade(move |socket| visitor(chat, c, token, query.after, socket)),
    })
}

async fn send_json(socket: &mut futures::stream::SplitSink<WebSocket, Message>, v: &Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

/// One connected visitor: their mailbox out, their messages in, until either side goes.
async fn visitor(
    chat: Webchat,
    channel: Arc<Channel>,
    token: VisitorToken,
    after: u64,
    socket: WebSocket,
) {
    let visitor = token.visitor.to_string();
    let (mut out, mut incoming) = socket.split();
    let mut mailbox = match chat.mailbox.read(&channel.id, &visitor, after).await {
        Ok(m) => Box::pin(m),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), channel = %channel.id, "a visitor's mailbox cannot be read");
            let _ = out
                .send(Message::Close(Some(CloseFrame {
                    code: 1011,
                    reason: "try again shortly".into(),
                })))
                .await;
            return;
        }
    };
    if !send_json(&mut out, &json!({"type": "ready", "visitorId": visitor})).await {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            () = chat.stop.cancelled() => {
                let _ = out.send(Message::Close(Some(CloseFrame {
                    code: CLOSE_GOING_AWAY,
                    reason: "the hub is restarting".into(),
                }))).await;
                return;
            }
            entry = mailbox.next() => match entry {
                Some(Ok((seq, bytes))) => {
                    let Ok(entry) = serde_json::from_slice::<MailboxEntry>(&bytes) else {
                        tracing::warn!(seq, channel = %channel.id, "a mailbox entry that is not one; skipped");
                        continue;
                    };
                    if !send_json(&mut out, &entry.frame(seq)).await {
                        return;
                    }
                }
                // The browser reconnects and reads on from the last sequence it saw.
                Some(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), channel = %channel.id, "a visitor's mailbox failed");
                    let _ = out.send(Message::Close(Some(CloseFrame { code: 1011, reason: "try again".into() }))).await;
                    return;
                }
                None => return,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Some(error) = chat.take(&channel, &token, text.as_str()).await
                        && !send_json(&mut out, &error).await
                    {
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if !send_json(&mut out, &error_frame("bad_frame", "frames are JSON text", None)).await {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            _ = ping.tick() => {
                if out.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A client id names a message for the browser and for de-duplication: short and plain.
fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Webchat {
    /// A frame from the visitor: accepted into the hub and echoed to their mailbox, or the
    /// error frame saying why not (nothing is stored then).
    async fn take(&self, channel: &Channel, token: &VisitorToken, text: &str) -> Option<Value> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return Some(error_frame(
                    "bad_frame",
                    &format!("not a message frame: {e}"),
                    None,
                ));
            }
        };
        let client_id = frame.client_id().to_string();
        let refuse = |code: &str, message: &str| Some(error_frame(code, message, Some(&client_id)));
        if !valid_client_id(&client_id) {
            return Some(error_frame(
                "bad_frame",
                "clientId: 1-64 characters of A-Z, a-z, 0-9, -, _",
                None,
            ));
        }
        let settings = match self.channel(&channel.org, &channel.id) {
            Ok((_, s)) => s,
            Err(r) => return refuse("not_accepted", &r.message),
        };
        let empty = match &frame {
            ClientFrame::Text { text, .. } => text.trim().is_empty(),
            ClientFrame::Postback { payload, .. } => payload.is_empty(),
        };
        if empty {
            return refuse("bad_frame", "an empty message");
        }
        if frame.chars() > settings.max_message_chars {
            return refuse(
                "too_large",
                &format!(
                    "a message is at most {} characters",
                    settings.max_message_chars
                ),
            );
        }
        if !self
            .limiters
            .allows(&channel.id, settings.messages_per_minute, token.visitor)
        {
            return refuse(
                "rate_limited",
                "too many messages; wait a moment and send again",
            );
        }
        let visitor = token.visitor.to_string();
        let canonical = frame.response().to_string();
        let incoming = Incoming {
            member_id: channel.member_id(&visitor).to_string(),
            conversation_id: String::new(),
            purpose: "inbound",
            source_id: Some(client_id.clone()),
            occurred_at_ms: now_ms(),
            body: Body::InboundMessage(InboundMessage {
                external_id: visitor.clone(),
                profile_json: Value::Object(token.profile.clone()).to_string(),
                content: Some(frame.content()),
            }),
        };
        let accepted = match accept(&self.bus, channel, incoming, canonical.as_bytes()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, channel = %channel.id, "a visitor's message was not accepted");
                return refuse(
                    "not_accepted",
                    "the message could not be stored; send it again",
                );
            }
        };
        // Echoed under the event's id: a message sent twice is shown once.
        let entry = MailboxEntry::sent(&frame, rfc3339_now());
        let bytes = serde_json::to_vec(&entry).expect("an entry serializes");
        if let Err(e) = self
            .mailbox
            .post(
                &channel.id,
                &visitor,
                &format!("visitor-{}", accepted.event_id),
                bytes.into(),
            )
            .await
        {
            // Accepted already: the hub answers it; only the echo is missing, and a resend
            // (same clientId) is a duplicate that posts the echo again.
            tracing::warn!(error = %e, channel = %channel.id, "a visitor's message was not echoed");
            return refuse(
                "not_accepted",
                "the message was received but not confirmed; send it again",
            );
        }
        None
    }
}

pub(crate) fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(origins: &[&str]) -> WebchatSettings {
        WebchatSettings {
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
            max_message_chars: 100,
            messages_per_minute: 6,
            token_ttl_secs: 60,
            title: String::new(),
            token_key: b"0123456789abcdef".to_vec(),
        }
    }

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_hubs_own_page_and_the_listed_origins_pass_the_origin_check_and_no_other() {
        let s = settings(&["https://shop.example.com"]);
        let own = headers(Some("http://hub.local:8080"), "hub.local:8080");
        assert!(origin_allowed(&own, &s).unwrap().is_some());
        let listed = headers(Some("https://shop.example.com"), "hub.local:8080");
        assert!(origin_allowed(&listed, &s).unwrap().is_some());
        let other = headers(Some("https://evil.example.net"), "hub.local:8080");
        let refused = origin_allowed(&other, &s).unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::FORBIDDEN, "origin_not_allowed")
        );
        // A look-alike of the hub's host is not the hub.
        let lookalike = headers(Some("http://hub.local:8080.evil.net"), "hub.local:8080");
        assert!(origin_allowed(&lookalike, &s).is_err());
        // No Origin: not a page at all (a server, a test); it still needs a token.
        assert!(
            origin_allowed(&headers(None, "hub.local:8080"), &s)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_visitor_over_their_budget_is_limited_and_another_is_not() {
        let limiters = Limiters::default();
        let (ann, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let allowed = (0..5).filter(|_| limiters.allows("chat", 6, ann)).count();
        assert_eq!(allowed, 2, "bursts of a third of the minute's budget");
        assert!(limiters.allows("chat", 6, bob));
    }
}

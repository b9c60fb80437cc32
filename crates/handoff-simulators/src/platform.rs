use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::desk::DeskIdentity;

/// The platform-side APIs Handoff calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Send,
    Livechat,
    Relay,
}

/// One call Handoff made to the platform.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub api: Api,
    pub webhook_id: String,
    pub signature: Option<String>,
    /// `webhook-timestamp`, which the signature covers.
    pub timestamp: Option<i64>,
    pub body: Value,
}

/// A recorded call as the desk page (`/sim/calls`) sees it.
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    /// Its place in arrival order, from 1; `clear` does not restart it, so a page polling
    /// `after` its last number never sees a call twice.
    pub(crate) n: u64,
    /// When it was recorded, in Unix milliseconds.
    pub(crate) at_ms: u64,
    /// The ticket this platform's answer named, for a Livechat call: the page shows it and
    /// sends agent commands to it.
    pub(crate) ticket: Option<String>,
    pub(crate) call: Recorded,
}

#[derive(Default)]
struct CallLog {
    calls: Vec<Logged>,
    /// Calls recorded ever (the last one's `n`), `clear` included.
    total: u64,
}

#[derive(Default)]
struct Behaviour {
    /// Answer with this status instead of 200 (`None`: healthy).
    failing: Option<u16>,
    /// Answer this many next calls with the failing status, then recover.
    fail_next: usize,
    /// Wait this long before answering.
    stall: Duration,
}

#[derive(Default)]
struct Inner {
    calls: Mutex<CallLog>,
    behaviour: Mutex<HashMap<Api, Behaviour>>,
    /// Calls about these customers (`member.externalId`) answer this status.
    failing_members: Mutex<HashMap<String, u16>>,
    /// Every accepted call is also sent here, with the moment it arrived (load tests).
    taps: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<(std::time::Instant, Recorded)>>>,
    notify: Notify,
    tickets: Mutex<u64>,
    /// The agent a Livechat answer names as taking the request (`agentName`), if any.
    livechat_agent: Mutex<Option<String>>,
    /// Who the desk page answers as, and the client it posts to the hub with.
    desk: Mutex<Option<(DeskIdentity, WebhookClient)>>,
    verbose: bool,
}

/// A running simulated custom platform. Cheap to clone.
#[derive(Clone)]
pub struct CustomPlatform {
    inner: Arc<Inner>,
    port: u16,
}

impl CustomPlatform {
    /// Binds `addr` (use `127.0.0.1:0` in tests) and serves `/send`, `/livechat`, `/relay`,
    /// and, for demos, `POST /sim/failing/{externalId}` (the body is the status every call
    /// about that customer answers) and `DELETE` of it to heal.
    ///
    /// It also serves the reference agent desk, `GET /desk`: a page that shows the
    /// Livechat requests as a queue and each one's relayed conversation, and answers as an
    /// agent (messages, `done`, other commands) through the hub's Webhook API, posted by
    /// this simulator as the identity given to [`CustomPlatform::set_desk`] (without one
    /// the page only watches). Its data: `GET /sim/calls?after=<n>` (every recorded call
    /// numbered from 1, with its arrival time and, for Livechat calls, the ticket
    /// answered), `GET /sim/desk/config` and `POST /sim/desk/send`.
    pub async fn start(addr: &str, verbose: bool) -> anyhow::Result<Self> {
        let listener = crate::listen(addr).await?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(Inner {
            verbose,
            ..Default::default()
        });
        let app = Router::new()
            .route("/send", post(|s, h, b| receive(Api::Send, s, h, b)))
            .route("/livechat", post(|s, h, b| receive(Api::Livechat, s, h, b)))
            .route("/relay", post(|s, h, b| receive(Api::Relay, s, h, b)))
            .with_state(inner.clone());
        let platform = Self { inner, port };
        let control = platform.clone();
        let app = app.route(
            "/sim/failing/{external_id}",
            post({
                let control = control.clone();
                move |axum::extract::Path(who): axum::extract::Path<String>, body: String| async move {
                    match body.trim().parse::<u16>() {
                        Ok(code) if (100..600).contains(&code) => {
                            control.set_failing_for(&who, Some(code));
                            axum::http::StatusCode::NO_CONTENT
                        }
                        _ => axum::http::StatusCode::BAD_REQUEST,
                    }
                }
            })
            .delete(
                move |axum::extract::Path(who): axum::extract::Path<String>| async move {
                    control.set_failing_for(&who, None);
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        );
        let app = app.merge(crate::desk::routes(platform.clone()));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(platform)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// As a desk that assigns at once: Livechat answers name `agent` as taking it.
    pub fn set_livechat_agent(&self, agent: Option<&str>) {
        *self.inner.livechat_agent.lock().unwrap() = agent.map(str::to_string);
    }

    /// Gives the desk page (`/desk`) an identity to answer with: it posts agent messages
    /// and commands to `desk.hub` as that outlet channel.
    pub fn set_desk(&self, desk: DeskIdentity) {
        // One client for the page's sends, so they share its connections.
        let client = WebhookClient::new(desk.hub.trim_end_matches('/').to_string());
        *self.inner.desk.lock().unwrap() = Some((desk, client));
    }

    /// The desk page's identity and client, when one was set.
    pub(crate) fn desk(&self) -> Option<(DeskIdentity, WebhookClient)> {
        self.inner.desk.lock().unwrap().clone()
    }

    /// Whether calls are printed as they arrive (the demo); the desk's sends are too.
    pub(crate) fn verbose(&self) -> bool {
        self.inner.verbose
    }

    /// Every call still kept whose number is above `after`, in arrival order, and the
    /// number of the last call recorded.
    pub(crate) fn logged_after(&self, after: u64) -> (Vec<Logged>, u64) {
        let log = self.inner.calls.lock().unwrap();
        // Numbers only grow along the log, so the calls above `after` are a tail of it.
        let from = log.calls.partition_point(|c| c.n <= after);
        (log.calls[from..].to_vec(), log.total)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every call to `api` so far, in arrival order.
    pub fn calls(&self, api: Api) -> Vec<Recorded> {
        self.inner
            .calls
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.call.api == api)
            .map(|c| c.call.clone())
            .collect()
    }

    /// Waits until `api` has received at least `n` calls, or `timeout` passes.
    pub async fn wait_for(&self, api: Api, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.inner.notify.notified();
            let calls = self.calls(api);
            if calls.len() >= n || tokio::time::Instant::now() >= deadline {
                return calls;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Makes `api` answer `status` until told otherwise (`None` heals it).
    pub fn set_failing(&self, api: Api, status: Option<u16>) {
        self.inner
            .behaviour
            .lock()
            .unwrap()
            .entry(api)
            .or_default()
            .failing = status;
    }

    /// Makes the next `n` calls to `api` answer `status`.
    pub fn fail_next(&self, api: Api, n: usize, status: u16) {
        let mut b = self.inner.behaviour.lock().unwrap();
        let b = b.entry(api).or_default();
        b.fail_next = n;
        b.failing = Some(status);
    }

    /// Makes every API answer `status` for calls about the customer `external_id`, until
    /// healed with `None`: one customer's deliveries fail while the others' succeed.
    pub fn set_failing_for(&self, external_id: &str, status: Option<u16>) {
        let mut failing = self.inner.failing_members.lock().unwrap();
        match status {
            Some(code) => failing.insert(external_id.to_string(), code),
            None => failing.remove(external_id),
        };
    }

    /// A stream of every call accepted from now on, with its arrival time.
    pub fn tap(&self) -> tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, Recorded)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.inner.taps.lock().unwrap().push(tx);
        rx
    }

    /// Forgets the calls recorded so far (long load runs keep only their tap). Later
    /// calls go on being numbered after them.
    pub fn clear(&self) {
        self.inner.calls.lock().unwrap().calls.clear();
    }

    /// Makes `api` wait `delay` before answering.
    pub fn stall(&self, api: Api, delay: Duration) {
        self.inner
            .behaviour
            .lock()
            .unwrap()
            .entry(api)
            .or_default()
            .stall = delay;
    }
}

async fn receive(
    api: Api,
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let (status, stall) = {
        let mut all = inner.behaviour.lock().unwrap();
        let b = all.entry(api).or_default();
        let status = b.failing;
        if b.fail_next > 0 {
            b.fail_next -= 1;
            if b.fail_next == 0 {
                b.failing = None;
            }
        }
        (status, b.stall)
    };
    if !stall.is_zero() {
        tokio::time::sleep(stall).await;
    }
    let member_status = body["member"]["externalId"]
        .as_str()
        .and_then(|m| inner.failing_members.lock().unwrap().get(m).copied());
    if let Some(code) = status.or(member_status) {
        let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (code, Json(json!({"error": "simulated failure"})));
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if inner.verbose {
        println!("[platform] {api:?} API <- {body}");
    }
    let recorded = Recorded {
        api,
        webhook_id: header("webhook-id").unwrap_or_default(),
        signature: header("webhook-signature"),
        timestamp: header("webhook-timestamp").and_then(|t| t.parse().ok()),
        body,
    };
    {
        let now = std::time::Instant::now();
        let mut taps = inner.taps.lock().unwrap();
        taps.retain(|t| t.send((now, recorded.clone())).is_ok());
    }
    // The ticket is chosen before the call is logged, so the desk page learns it with
    // the call.
    let ticket = (api == Api::Livechat).then(|| {
        let mut n = inner.tickets.lock().unwrap();
        *n += 1;
        format!("T-{n}")
    });
    {
        let mut log = inner.calls.lock().unwrap();
        log.total += 1;
        let n = log.total;
        log.calls.push(Logged {
            n,
            at_ms: unix_ms(),
            ticket: ticket.clone(),
            call: recorded,
        });
    }
    inner.notify.notify_waiters();
    let answer = match ticket {
        Some(ticket) => {
            let mut answer = json!({"ok": true, "ticketId": ticket});
            if let Some(agent) = inner.livechat_agent.lock().unwrap().clone() {
                answer["agentName"] = json!(agent);
            }
            answer
        }
        None => json!({"ok": true}),
    };
    (StatusCode::OK, Json(answer))
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Posts to a hub's Webhook API the way a custom platform does.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    base: String,
}

impl WebhookClient {
    /// `base` is the gateway's root URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.into(),
        }
    }

    /// The gateway's root URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, channel: &str, org: &str, token: &str) -> String {
        format!(
            "{}/v2.4/customWebhook?accessToken={token}&c={channel}&a={org}",
            self.base
        )
    }

    /// Any body, for tests of bad input. Returns status and JSON body (or Null).
    pub async fn post_raw(
        &self,
        channel: &str,
        org: &str,
        token: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .post(self.url(channel, org, token))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub async fn post(
        &self,
        channel: &str,
        org: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        self.post_raw(channel, org, token, serde_json::to_vec(body)?, headers)
            .await
    }

    /// The `sendToBot` body of a customer text message.
    pub fn customer_text(external_id: &str, channel: &str, text: &str, timestamp_ms: i64) -> Value {
        json!({
            "profile": {"firstName": "Test", "lastName": external_id},
            "externalId": external_id,
            "sendToBot": {"messageEvent": {
                "from": external_id, "to": channel, "type": "TEXT",
                "data": {"text": text}, "timestamp": timestamp_ms
            }}
        })
    }

    /// The `sendToInlet` body of an agent reply.
    pub fn agent_reply(member_id: &str, text: &str) -> Value {
        json!({
            "profile": {},
            "externalId": "agent-1",
            "sendToInlet": {"response": {"type": "TEXT", "text": text}, "memberId": member_id}
        })
    }

    /// The `sendToBot` body of an agent command for a conversation.
    pub fn agent_command(conversation: &str, text: &str, timestamp_ms: i64) -> Value {
        json!({
            "profile": {},
            "externalId": "agent-1",
            "sendToBot": {"messageEvent": {
                "from": "agent-1", "to": conversation, "type": "TEXT",
                "data": {"text": text}, "timestamp": timestamp_ms
            }}
        })
    }
}

mod exec;
mod frames;
mod schema;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Notify;

pub use frames::ErrorCodeStyle;
use state::State;

/// Zendesk Chat's Conversations API as `shared/spec/zendesk.md` and seed 002 describe it,
/// with scripted visitors in front of it:
///
/// - `POST /graphql/request` runs `startAgentSession(access_token)` (inline literal or
///   `$variables`) and answers `{"data":{"startAgentSession":{websocket_url, session_id,
///   client_id}}}`, the URL being `ws://HOST:PORT/stream/0.1/graphql/{session_id}:{client_id}`;
///   a wrong token answers `{"data":null,"errors":[{"name":"UNAUTHORIZED",…}]}`.
/// - On the WebSocket, `{"type":"request","id","payload":{query, variables?,
///   operationName?}}` is parsed by a real GraphQL parser and checked (fields, arguments,
///   types, variables, fragments); answers echo the `id` with its JSON type. Subscriptions
///   (`message`, `chatActivity`) are acknowledged with `data.subscription_id` and then
///   deliver `{"sig":"DATA","subscription_id","payload":{"data":…}}`; `stop_subscription`,
///   `{"sig":"PING"}` → `{"sig":"PONG","payload":<the ping's>}`, and
///   `{"sig":"EOS","reason"}` work as documented. Errors are seed 002's frame,
///   `{"error_code":<HTTP status>,"payload":{"errors":[{name, message, UUID}]},"id"}`.
/// - Supported: `updateAgentStatus`, `sendMessage`, `sendQuickReplies`,
///   `sendButtonTemplate`, `sendPanelTemplate`, `sendPanelTemplateCarousel`,
///   `sendListTemplate`, `setTypingIndicator`, `transferToDepartment`, `inviteAgent`,
///   `addTags`, `leaveChannel`, `listenVisitorChannel`, `stopAgentSession`; the queries
///   `departments` and `agents`. Anything else is the GraphQL error a server gives.
/// - The agent's messages come back on `message` with `from.__typename: "Agent"` and the
///   agent's [`ZendeskSim::agent_id`]; IDs are minted in the real base64 format.
///
/// Where the spec leaves a question open (§10), the choice here is what a client most
/// likely meets, configurable where that is cheap:
/// - error frames carry `error_code` as the HTTP status (seed 002); see
///   [`ZendeskSim::set_error_code_style`]. Parse and validation errors are
///   `GRAPHQL_EXEC_ERROR`/400, bad subscriptions `GRAPHQL_SUB_START_ERROR`/400 (injected
///   ones 500), rate limiting `RATE_LIMITED`/429, `MAX_SUB`/400;
/// - `variables` and `operationName` are accepted on the WebSocket too (seed 002);
/// - `stop_subscription` answers `{"data":{"success":true}}`, also for unknown ids;
/// - a second login ends the first session with EOS `"concurrent session limit reached"`,
///   `stopAgentSession` and a URL without a live session with `"unexpected session
///   status"`; after EOS the server closes the socket (close code 1000);
/// - a dropped socket may reconnect to the same URL while its session lives
///   ([`ZendeskSim::allow_reconnect_same_url`]); subscriptions die with their socket;
/// - a new chat goes to the agent if it is ONLINE (it joins: `MemberJoinLog` of the visitor,
///   then of the agent, on `chatActivity`), otherwise it waits and is assigned when the
///   agent goes ONLINE. `message` delivers the agent's chats and unserved ones (seed 002);
///   after a transfer with `leave: true` the chat is someone else's and no longer arrives;
///   `sendMessage(backoff: true)` into it answers `success: false`;
/// - a transfer to an existing department succeeds whatever its status; an unknown
///   department, or a send into an ended chat, is a `GRAPHQL_EXEC_ERROR`;
/// - a bad token over HTTP answers 200 with `errors` (what SAMPLE expects),
///   [`ZendeskSim::set_bad_token_status`].
///
/// Faults on demand: rate limits, failing subscription starts, `UNAUTHORIZED`, requests
/// never answered (lost before or after running), delayed answers, a subscription limit,
/// silent PINGs, EOS, and sockets dropped without a close frame.
#[derive(Clone)]
pub struct ZendeskSim {
    shared: Arc<Shared>,
    port: u16,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in a test thread (e.g. a visitor call on an unknown chat) must not take
        // the simulator down for the other tests sharing it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ZendeskSim {
    /// Binds `addr` (use `127.0.0.1:0` in tests) for an account whose agent logs in with
    /// `access_token`.
    pub async fn start(addr: &str, access_token: &str) -> anyhow::Result<Self> {
        let listener = crate::listen(addr).await?;
        let local = listener.local_addr()?;
        let host = if local.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], local.port()))
        } else {
            local
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(access_token, format!("ws://{host}"))),
            notify: Notify::new(),
        });
        let app = server::router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            shared,
            port: local.port(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP endpoint, the simulator's `https://chat-api.zopim.com/graphql/request`.
    pub fn graphql_url(&self) -> String {
        format!("http://127.0.0.1:{}/graphql/request", self.port)
    }

    /// The ID of the agent the token logs in as (what `from.id` of its echoes carries).
    pub fn agent_id(&self) -> String {
        self.shared.lock().agent_id().to_string()
    }

    pub fn agent_name(&self) -> String {
        self.shared.lock().agent_name().to_string()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = {
            let mut state = self.shared.lock();
            let out = f(&mut state);
            state.flush();
            out
        };
        self.shared.notify.notify_waiters();
        out
    }

    // ---- visitors ----------------------------------------------------------------------

    /// A visitor opens the widget and starts a chat; returns its channel id. An empty name
    /// gives the default `Visitor 12345678`. The same name again is the same visitor in a
    /// new chat, under a new channel id.
    pub fn visitor_join(&self, name: &str) -> String {
        self.with(|s| s.visitor_join(name))
    }

    /// The visitor types `text`; returns the message id. Panics if the chat is unknown or
    /// over.
    pub fn visitor_says(&self, channel_id: &str, text: &str) -> String {
        self.with(|s| s.visitor_says(channel_id, text))
    }

    /// The visitor taps one of the choices last offered in the chat (quick replies, options,
    /// quick-reply buttons), given by its text, its value or its 0-based index. What the
    /// widget sends is an ordinary message with the choice's value; returns that value.
    pub fn visitor_picks(&self, channel_id: &str, choice: &str) -> anyhow::Result<String> {
        self.with(|s| {
            let value = s.pick(channel_id, choice)?;
            s.visitor_says(channel_id, &value);
            Ok(value)
        })
    }

    /// The visitor closes the chat (`MemberLeaveLog` on `chatActivity`); the chat is over.
    pub fn visitor_leaves(&self, channel_id: &str) {
        self.with(|s| s.visitor_leaves(channel_id))
    }

    // ---- departments ---------------------------------------------------------------------

    /// Replaces the departments: `(id, name, status)` with status `ONLINE`, `AWAY` or
    /// `OFFLINE`. The default is one ONLINE department, "Support".
    pub fn set_departments(&self, departments: &[(&str, &str, &str)]) {
        self.with(|s| {
            s.departments = departments
                .iter()
                .map(|(id, name, status)| (id.to_string(), name.to_string(), status.to_string()))
                .collect();
        })
    }

    /// `(id, name, status)` of every department.
    pub fn departments(&self) -> Vec<(String, String, String)> {
        self.shared.lock().departments.clone()
    }

    // ---- what happened -------------------------------------------------------------------

    /// Everything the agent sent into the chat, in order: each the mutation's arguments
    /// without `channel_id`, plus `"mutation"` (e.g. `sendMessage` with `msg`,
    /// `sendQuickReplies` with `msg`, `quick_replies` and `fallback`).
    pub fn sent_to(&self, channel_id: &str) -> Vec<Value> {
        self.shared
            .lock()
            .log
            .sent
            .get(channel_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the agent has sent at least `n` messages into the chat, or `timeout`
    /// passes; returns what was sent.
    pub async fn wait_for_sent(&self, channel_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
        self.wait_until(timeout, || {
            let sent = self.sent_to(channel_id);
            (sent.len() >= n).then_some(sent)
        })
        .await
        .unwrap_or_else(|| self.sent_to(channel_id))
    }

    /// Waits until an ONLINE agent session has a socket subscribed to `message`, the point
    /// from which visitor messages reach it.
    pub async fn wait_until_listening(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.shared.lock().listening().then_some(()))
            .await
            .is_some()
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            if let Some(done) = check() {
                return Some(done);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// `(channel_id, department_id)` of every accepted `transferToDepartment`.
    pub fn transfers(&self) -> Vec<(String, String)> {
        self.shared.lock().log.transfers.clone()
    }

    /// Every accepted mutation other than `startAgentSession`, with its coerced arguments.
    pub fn mutations(&self) -> Vec<(String, Value)> {
        self.shared.lock().log.mutations.clone()
    }

    /// How many requests were answered `RATE_LIMITED`.
    pub fn rate_limited(&self) -> usize {
        self.shared.lock().log.rate_limited
    }

    /// How many `startAgentSession` calls succeeded.
    pub fn sessions_started(&self) -> usize {
        self.shared.lock().log.sessions_started
    }

    /// Sessions not ended by EOS.
    pub fn live_sessions(&self) -> usize {
        self.shared.lock().live_sessions()
    }

    pub fn open_sockets(&self) -> usize {
        self.shared.lock().open_sockets()
    }

    /// Every `updateAgentStatus` status, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.shared.lock().log.statuses.clone()
    }

    // ---- faults --------------------------------------------------------------------------

    /// Each session may make `burst` requests at once, refilled at `per_second`; the rest
    /// are answered `RATE_LIMITED`. PINGs are not counted.
    pub fn rate_limit(&self, burst: u32, per_second: f64) {
        self.with(|s| {
            s.faults.rate = Some((f64::from(burst), per_second));
            s.reset_buckets();
        })
    }

    pub fn clear_rate_limit(&self) {
        self.with(|s| s.faults.rate = None)
    }

    /// The next `n` subscription starts fail with `GRAPHQL_SUB_START_ERROR`.
    pub fn fail_next_subscriptions(&self, n: usize) {
        self.with(|s| s.faults.fail_subscriptions = n)
    }

    /// The next request, HTTP or WebSocket, is answered `UNAUTHORIZED`.
    pub fn unauthorized_next(&self) {
        self.with(|s| s.faults.unauthorized += 1)
    }

    /// The next `n` WebSocket requests are lost before they run: no effect, no answer.
    pub fn ignore_next_requests(&self, n: usize) {
        self.with(|s| s.faults.ignore_requests = n)
    }

    /// The next `n` WebSocket requests run but their answers are lost, so a resend
    /// duplicates the effect.
    pub fn lose_next_answers(&self, n: usize) {
        self.with(|s| s.faults.lose_answers = n)
    }

    /// Answers come this late (events are not delayed, so they may overtake answers).
    pub fn delay_answers(&self, delay: Duration) {
        self.with(|s| s.faults.answer_delay = delay)
    }

    /// More subscriptions than `max` on one socket are refused with `MAX_SUB`.
    pub fn set_max_subscriptions(&self, max: Option<usize>) {
        self.with(|s| s.faults.max_subscriptions = max)
    }

    /// Whether `{"sig":"PING"}` is answered with PONG (default yes).
    pub fn answer_pings(&self, on: bool) {
        self.with(|s| s.faults.answer_pings = on)
    }

    pub fn set_error_code_style(&self, style: ErrorCodeStyle) {
        self.with(|s| s.faults.error_code_style = style)
    }

    /// HTTP status of a refused `startAgentSession` (default 200, errors in the body).
    pub fn set_bad_token_status(&self, status: u16) {
        self.with(|s| s.faults.bad_token_status = status)
    }

    /// Whether a session outlives a dropped socket, so the same URL works again (default
    /// yes); if not, a drop ends the session and reconnecting gets EOS.
    pub fn allow_reconnect_same_url(&self, on: bool) {
        self.with(|s| s.faults.reconnect_same_url = on)
    }

    /// EOS reason sent to the older session on a second login.
    pub fn set_concurrent_login_reason(&self, reason: &str) {
        self.with(|s| s.faults.concurrent_reason = reason.to_string())
    }

    /// Every socket is cut without a close frame (the client sees 1006).
    pub fn drop_sockets(&self) {
        self.with(|s| s.drop_sockets())
    }

    /// Ends every live session with EOS `"unexpected session status"` (seed 002's example);
    /// a new `startAgentSession` is needed.
    pub fn send_eos(&self) {
        self.send_eos_with_reason(state::UNEXPECTED_REASON)
    }

    pub fn send_eos_with_reason(&self, reason: &str) {
        self.with(|s| s.end_all_sessions(reason))
    }
}

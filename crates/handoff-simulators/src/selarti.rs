use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// Selarti's API as the spec (`stella_selarti.md` part B, seed 001) describes it, with a
/// scripted AI behind it:
/// - `POST /api/1.1/wf/auth {"key"}` → `{"status":"success","response":{"token"}}` (Bubble
///   style); a wrong key is a 401;
/// - `POST /api/1.1/wf/send_message {"task","chat_id","message"}` with `Authorization:
///   Bearer`; answers at once, and the AI answers later on the "All messages" webhook:
///   first the echo of the user's message (`message_type: user`), then, after the think
///   time, the AI's answer:
///   - "operator" or "human" → hands the dialog to an operator (`operator: "yes"`, with
///     `panel_url` and `share_url`);
///   - "contact" → asks for a phone number; a message with digits → thanks, and
///     `contacts` / `get_contact` are set;
///   - "bye" → says goodbye and closes the dialog (`close: true`);
///   - anything else → `AI: <text>`.
///
/// Faults on demand: the current token expires ([`SelartiSim::expire_tokens`]), the next
/// sends fail with 5xx, every webhook is sent twice, or a pair is sent in reverse order.
#[derive(Clone)]
pub struct SelartiSim {
    state: Arc<SimState>,
    port: u16,
}

#[derive(Default)]
struct SimState {
    key: String,
    webhook: Mutex<Option<String>>,
    tokens: Mutex<Vec<String>>,
    /// Every token ever issued, expired or not.
    issued_tokens: Mutex<Vec<String>>,
    issued: AtomicUsize,
    auth_calls: AtomicUsize,
    sends: Mutex<Vec<Value>>,
    failing_sends: AtomicUsize,
    think: Mutex<Duration>,
    duplicate: AtomicBool,
    reorder: AtomicBool,
    counter: AtomicUsize,
    http: reqwest::Client,
    delivered: Mutex<HashMap<u16, usize>>,
}

impl SelartiSim {
    pub async fn start(addr: &str, api_key: &str) -> anyhow::Result<Self> {
        let listener = crate::listen(addr).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(SimState {
            key: api_key.to_string(),
            ..Default::default()
        });
        let app = Router::new()
            .route("/api/1.1/wf/auth", post(auth))
            .route("/api/1.1/wf/{method}", post(send))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { state, port })
    }

    /// The `apiBase` to configure.
    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}/api/1.1", self.port)
    }

    /// Where the "All messages" integration posts.
    pub fn set_webhook_url(&self, url: &str) {
        *self.state.webhook.lock().unwrap() = Some(url.to_string());
    }

    /// The AI takes this long to answer.
    pub fn set_think_time(&self, delay: Duration) {
        *self.state.think.lock().unwrap() = delay;
    }

    /// Every token issued so far stops working (a 401 on its next use).
    pub fn expire_tokens(&self) {
        self.state.tokens.lock().unwrap().clear();
    }

    /// The next `n` sends answer 503.
    pub fn fail_next_sends(&self, n: usize) {
        self.state.failing_sends.store(n, Ordering::SeqCst);
    }

    /// Every webhook is posted twice.
    pub fn duplicate_webhooks(&self, on: bool) {
        self.state.duplicate.store(on, Ordering::SeqCst);
    }

    /// The echo and the answer of each message are posted in reverse order.
    pub fn reorder_webhooks(&self, on: bool) {
        self.state.reorder.store(on, Ordering::SeqCst);
    }

    /// Bodies of the sends accepted so far.
    pub fn sends(&self) -> Vec<Value> {
        self.state.sends.lock().unwrap().clone()
    }

    /// Every bearer token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.issued_tokens.lock().unwrap().clone()
    }

    pub fn auth_calls(&self) -> usize {
        self.state.auth_calls.load(Ordering::SeqCst)
    }

    /// How many webhooks the hub answered with each status.
    pub fn webhook_statuses(&self) -> HashMap<u16, usize> {
        self.state.delivered.lock().unwrap().clone()
    }

    /// Posts a webhook body as Selarti would (e.g. a handcrafted or malformed one);
    /// returns the hub's status and body.
    pub async fn post_webhook(&self, body: &Value) -> anyhow::Result<(u16, Value)> {
        post_hook(&self.state, body).await
    }
}

async fn auth(State(state): State<Arc<SimState>>, Json(body): Json<Value>) -> Response {
    state.auth_calls.fetch_add(1, Ordering::SeqCst);
    if body.get("key").and_then(Value::as_str) != Some(state.key.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "message": "invalid key"})),
        )
            .into_response();
    }
    // Long and unlike anything else, so a test can look for it in logs.
    let token = format!(
        "selarti-bearer-{}-{:x}",
        state.issued.fetch_add(1, Ordering::SeqCst) + 1,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    state.tokens.lock().unwrap().push(token.clone());
    state.issued_tokens.lock().unwrap().push(token.clone());
    Json(json!({"status": "success", "response": {"token": token, "expires": 3600}}))
        .into_response()
}

async fn send(
    State(state): State<Arc<SimState>>,
    Path(_method): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    if !state.tokens.lock().unwrap().contains(&token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "message": "token expired"})),
        )
            .into_response();
    }
    if state
        .failing_sends
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response();
    }
    let (Some(chat_id), Some(text)) = (
        body.get("chat_id").and_then(Value::as_str),
        body.get("message").and_then(Value::as_str),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "error", "message": "chat_id and message are required"})),
        )
            .into_response();
    };
    state.sends.lock().unwrap().push(body.clone());
    let (chat_id, text) = (chat_id.to_string(), text.to_string());
    let task = body.get("task").cloned().unwrap_or(Value::Null);
    let state2 = state.clone();
    tokio::spawn(async move { converse(state2, chat_id, task, text).await });
    Json(json!({"status": "success", "response": {}})).into_response()
}

/// The scripted AI: the echo, then (after thinking) the answer.
async fn converse(state: Arc<SimState>, chat_id: String, task: Value, text: String) {
    let n = state.counter.fetch_add(2, Ordering::SeqCst);
    let base = |id: usize| {
        json!({
            "wh_type": "all_messages", "message_id": format!("sim{id}"),
            "external_chat_id": chat_id, "task_id": task, "channel_id": "sim-channel",
            "company_id": "sim-company", "thread_id": format!("thread-{chat_id}"),
            "manager_id": "sim-ai", "title": "Web visitor", "success": "no",
            "interest": null, "contacts": {}, "get_contact": false,
            "share_url": format!("https://selarti.example/share/{chat_id}"),
            "panel_url": format!("https://selarti.example/panel/{chat_id}"),
        })
    };
    let mut echo = base(n);
    echo["message_type"] = json!("user");
    echo["is_bot"] = json!(false);
    echo["message_text"] = json!(text);
    let mut answer = base(n + 1);
    answer["message_type"] = json!("bot");
    answer["is_bot"] = json!("да");
    let lower = text.to_lowercase();
    if lower.contains("operator") || lower.contains("human") {
        answer["message_text"] = json!("I am calling a colleague for you.");
        answer["operator"] = json!("yes");
    } else if lower.contains("bye") {
        answer["message_text"] = json!("Goodbye!");
        answer["close"] = json!(true);
    } else if lower.contains("contact") {
        answer["message_text"] = json!("What is your phone number?");
    } else if text.chars().filter(char::is_ascii_digit).count() >= 5 {
        answer["message_text"] = json!("Thank you, we will call you.");
        answer["contacts"] = json!({"phone": text});
        answer["get_contact"] = json!("yes");
        answer["interest"] = json!("high");
    } else {
        answer["message_text"] = json!(format!("AI: {text}"));
    }
    let think = *state.think.lock().unwrap();
    let mut hooks = vec![echo, answer];
    if state.reorder.load(Ordering::SeqCst) {
        hooks.reverse();
    } else {
        let _ = post_hook(&state, &hooks.remove(0)).await;
    }
    tokio::time::sleep(think).await;
    for hook in hooks {
        let _ = post_hook(&state, &hook).await;
    }
}

/// Posts one webhook, retrying a failure as an integration would (a few times), and twice
/// when duplicates are on.
async fn post_hook(state: &SimState, body: &Value) -> anyhow::Result<(u16, Value)> {
    let url = state
        .webhook
        .lock()
        .unwrap()
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no webhook URL set"))?;
    let times = if state.duplicate.load(Ordering::SeqCst) {
        2
    } else {
        1
    };
    let mut last = (0, Value::Null);
    for _ in 0..times {
        for attempt in 0..5u32 {
            match state.http.post(&url).json(body).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let answer = r.json::<Value>().await.unwrap_or(Value::Null);
                    *state.delivered.lock().unwrap().entry(status).or_default() += 1;
                    last = (status, answer);
                    if status < 500 {
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhook not delivered"),
            }
            tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
        }
    }
    Ok(last)
}

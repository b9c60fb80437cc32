use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// A scripted bot speaking the webhook-bot protocol:
/// - "agent" or "human" → asks for a handoff (`groupName: support`);
/// - "bye" → says goodbye and closes;
/// - "menu" → offers quick replies (Tea → `TEA`, Coffee → `COFFEE`);
/// - any other text → `You said: <text>`; a postback → `You chose: <payload>`;
/// - a message that could not be relayed → tells the customer so;
/// - a failed handoff → tells the customer no agent is available;
/// - an agent command → `Bot received command: <text>` (goes back to the agent).
///
/// Like a language model, it can be told to think before answering: for everyone
/// ([`DemoBot::set_think_time`]) or for one customer ([`DemoBot::set_think_time_for`]).
#[derive(Clone)]
pub struct DemoBot {
    state: Arc<BotState>,
    port: u16,
}

#[derive(Default)]
struct BotState {
    calls: Mutex<Vec<Value>>,
    /// The `traceparent` header of every recorded call (empty when absent).
    traceparents: Mutex<Vec<String>>,
    verbose: bool,
    /// Whether to keep every request (tests) or only count them (load runs).
    record: AtomicBool,
    count: AtomicUsize,
    think: Mutex<Duration>,
    think_for: Mutex<HashMap<String, Duration>>,
    answer_for: Mutex<HashMap<String, Value>>,
    /// Calls about these customers answer this status (a bot that is down for them).
    failing_for: Mutex<HashMap<String, u16>>,
}

impl DemoBot {
    pub async fn start(addr: &str, verbose: bool) -> anyhow::Result<Self> {
        let listener = crate::listen(addr).await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(BotState {
            verbose,
            record: AtomicBool::new(true),
            ..Default::default()
        });
        let app = Router::new()
            .route("/bot", post(answer))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { state, port })
    }

    /// Every answer takes this long.
    pub fn set_think_time(&self, delay: Duration) {
        *self.state.think.lock().unwrap() = delay;
    }

    /// Answers about the customer `external_id` take this long.
    pub fn set_think_time_for(&self, external_id: &str, delay: Duration) {
        self.state
            .think_for
            .lock()
            .unwrap()
            .insert(external_id.to_string(), delay);
    }

    /// Answers every message of the customer `external_id` with `answer`, as is (to try
    /// how the hub takes a misbehaving bot: text it cannot store, an answer too large).
    pub fn set_answer_for(&self, external_id: &str, answer: Value) {
        self.state
            .answer_for
            .lock()
            .unwrap()
            .insert(external_id.to_string(), answer);
    }

    /// Calls about the customer `external_id` answer `status` (`None`: heal).
    pub fn set_failing_for(&self, external_id: &str, status: Option<u16>) {
        let mut failing = self.state.failing_for.lock().unwrap();
        match status {
            Some(status) => failing.insert(external_id.to_string(), status),
            None => failing.remove(external_id),
        };
    }

    /// Stops keeping requests (a load run would hold millions); they are still counted.
    pub fn stop_recording(&self) {
        self.state.record.store(false, Ordering::Relaxed);
    }

    /// How many requests the bot received.
    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::Relaxed)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bot", self.port)
    }

    /// Every request the bot received, in order.
    pub fn calls(&self) -> Vec<Value> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The W3C `traceparent` each recorded call carried, in call order (empty if none).
    pub fn traceparents(&self) -> Vec<String> {
        self.state.traceparents.lock().unwrap().clone()
    }
}

fn text(t: impl Into<String>) -> Value {
    json!({"type": "TEXT", "text": t.into()})
}

async fn answer(
    State(state): State<Arc<BotState>>,
    headers: axum::http::HeaderMap,
    Json(request): Json<Value>,
) -> Response {
    if state.verbose {
        println!("[bot] <- {request}");
    }
    state.count.fetch_add(1, Ordering::Relaxed);
    if state.record.load(Ordering::Relaxed) {
        state.calls.lock().unwrap().push(request.clone());
        let traceparent = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        state.traceparents.lock().unwrap().push(traceparent.into());
    }
    let failing = request["member"]["externalId"]
        .as_str()
        .and_then(|m| state.failing_for.lock().unwrap().get(m).copied())
        .and_then(|status| StatusCode::from_u16(status).ok());
    if let Some(status) = failing {
        return (status, Json(json!({"error": "the bot is down"}))).into_response();
    }
    let think = request["member"]["externalId"]
        .as_str()
        .and_then(|m| state.think_for.lock().unwrap().get(m).copied())
        .unwrap_or_else(|| *state.think.lock().unwrap());
    if !think.is_zero() {
        tokio::time::sleep(think).await;
    }
    let scripted = request["member"]["externalId"]
        .as_str()
        .and_then(|m| state.answer_for.lock().unwrap().get(m).cloned());
    if let Some(answer) = scripted {
        return Json(answer).into_response();
    }
    let message = &request["message"];
    let said = message["text"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    let answer = match request["event"].as_str().unwrap_or_default() {
        "relay_failed" => json!({"responses": [text(format!(
            "Sorry, your message \"{said}\" could not reach the agent. I'm here meanwhile."
        ))]}),
        // The customer cancelled it themselves: the hub has told them.
        "handoff_failed" if request["handoffError"]["reason"] == "customer_cancelled" => {
            json!({"responses": []})
        }
        "handoff_failed" => json!({"responses": [text(format!(
            "No agent is available right now ({}). I'm still here to help.",
            request["handoffError"]["reason"].as_str().unwrap_or("unknown reason")
        ))]}),
        "live_chat_ended" => json!({"responses": []}),
        "agent_command" => json!({"responses": [text(format!("Bot received command: {said}"))]}),
        _ => match message["type"].as_str().unwrap_or_default() {
            "PAYLOAD" => json!({"responses": [text(format!(
                "You chose: {}", message["payload"].as_str().unwrap_or_default()
            ))]}),
            _ if said.eq_ignore_ascii_case("agent") || said.eq_ignore_ascii_case("human") => {
                json!({
                    "responses": [text("Connecting you to a human agent…")],
                    "handoff": {"summary": "Customer asked for an agent", "groupName": "support",
                                "label": "demo", "meta": {"source": "demo-bot"}}
                })
            }
            _ if said.eq_ignore_ascii_case("menu") => json!({"responses": [{
                "type": "TEXT", "text": "Tea or coffee?",
                "quickReplies": [
                    {"content_type": "text", "title": "Tea", "payload": "TEA"},
                    {"content_type": "text", "title": "Coffee", "payload": "COFFEE"},
                ],
            }]}),
            _ if said.eq_ignore_ascii_case("bye") => json!({
                "responses": [text("Goodbye!")], "close": true
            }),
            _ => json!({"responses": [text(format!("You said: {said}"))]}),
        },
    };
    Json(answer).into_response()
}

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// A scripted bot speaking the webhook-bot protocol:
/// - "agent" or "human" → asks for a handoff (`groupName: support`);
/// - "bye" → says goodbye and closes;
/// - any other text → `You said: <text>`; a postback → `You chose: <payload>`;
/// - a message that could not be relayed → tells the customer so;
/// - a failed handoff → tells the customer no agent is available;
/// - an agent command → `Bot received command: <text>` (goes back to the agent).
#[derive(Clone)]
pub struct DemoBot {
    calls: Arc<Mutex<Vec<Value>>>,
    port: u16,
}

impl DemoBot {
    pub async fn start(addr: &str, verbose: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let port = listener.local_addr()?.port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/bot", post(answer))
            .with_state((calls.clone(), verbose));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { calls, port })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bot", self.port)
    }

    /// Every request the bot received, in order.
    pub fn calls(&self) -> Vec<Value> {
        self.calls.lock().unwrap().clone()
    }
}

fn text(t: impl Into<String>) -> Value {
    json!({"type": "TEXT", "text": t.into()})
}

async fn answer(
    State((calls, verbose)): State<(Arc<Mutex<Vec<Value>>>, bool)>,
    Json(request): Json<Value>,
) -> Json<Value> {
    if verbose {
        println!("[bot] <- {request}");
    }
    calls.lock().unwrap().push(request.clone());
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
            _ if said.eq_ignore_ascii_case("bye") => json!({
                "responses": [text("Goodbye!")], "close": true
            }),
            _ => json!({"responses": [text(format!("You said: {said}"))]}),
        },
    };
    Json(answer)
}

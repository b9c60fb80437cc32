//! The reference agent desk: a page on the simulated custom platform (`GET /desk`) where a
//! person (or a WebDriver test) plays the human agents. It reads what Handoff called the
//! platform with (`/sim/calls`) and answers through the hub's Webhook API; the simulator
//! posts for it (`/sim/desk/send`), so the page needs no CORS from the hub and never holds
//! anything but its own origin.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::platform::{Api, CustomPlatform, WebhookClient, unix_ms};

/// The page: HTML with its CSS and script inline, nothing fetched from elsewhere.
const DESK_HTML: &str = include_str!("desk.html");

/// What the agent is called where the protocol names them (`sendToInlet.agentName`, shown
/// to the customer in the "agent joined" notice).
const AGENT_NAME: &str = "Alice";

/// How long a send waits for the hub: past it the page shows a failure rather than a
/// message that stays "sending" for ever.
const HUB_TIMEOUT: Duration = Duration::from_secs(15);

/// Who the desk page answers as: an outlet channel of the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeskIdentity {
    /// The outlet-gateway's root URL, e.g. `http://127.0.0.1:8081`.
    pub hub: String,
    pub org: String,
    /// The outlet channel's id.
    pub channel: String,
    /// The outlet channel's `accessToken`.
    pub token: String,
}

/// `GET /desk`, `GET /sim/calls`, `GET /sim/desk/config` and `POST /sim/desk/send`.
pub(crate) fn routes(platform: CustomPlatform) -> Router {
    Router::new()
        .route("/desk", get(page))
        .route("/sim/calls", get(calls))
        .route("/sim/desk/config", get(config))
        .route("/sim/desk/send", post(send))
        .with_state(platform)
}

type Answer = (StatusCode, Json<Value>);

/// An error in the hub's own shape, so the page reads both alike.
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    let message: String = message.into();
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
}

fn no_desk() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "no_desk",
        "this simulator has no desk identity (CustomPlatform::set_desk; handoff-sim sets it \
         from HANDOFF_SIM_DESK_*): the page can watch but not answer",
    )
}

fn api_name(api: Api) -> &'static str {
    match api {
        Api::Send => "send",
        Api::Livechat => "livechat",
        Api::Relay => "relay",
    }
}

async fn page() -> impl IntoResponse {
    // A simulator restarted with a newer page must not be hidden by a cached one.
    ([(header::CACHE_CONTROL, "no-store")], Html(DESK_HTML))
}

/// `GET /sim/calls?after=<n>`: the calls numbered above `n` (all without it), and `last`,
/// the number to ask after next time.
async fn calls(
    State(platform): State<CustomPlatform>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let after = match query.get("after").map(|a| a.trim().parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "`after` is the number of the last call seen (0 for all)",
            );
        }
    };
    let (logged, last) = platform.logged_after(after);
    let calls: Vec<Value> = logged
        .into_iter()
        .map(|c| {
            let mut call = json!({
                "n": c.n,
                "api": api_name(c.call.api),
                "webhookId": c.call.webhook_id,
                "at": c.at_ms,
                "body": c.call.body,
            });
            if let Some(ticket) = c.ticket {
                call["ticket"] = json!(ticket);
            }
            call
        })
        .collect();
    (StatusCode::OK, Json(json!({"calls": calls, "last": last})))
}

/// `GET /sim/desk/config`: who the page answers as.
async fn config(State(platform): State<CustomPlatform>) -> Answer {
    let Some((desk, _)) = platform.desk() else {
        return no_desk();
    };
    let config = json!({
        "hub": desk.hub,
        "org": desk.org,
        "channel": desk.channel,
        "token": desk.token,
        "agentName": AGENT_NAME,
    });
    (StatusCode::OK, Json(config))
}

/// A string field of `request` that is not blank.
fn given<'a>(request: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    request
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// `POST /sim/desk/send`: `{"memberId", "text"}` is an agent's message, `{"ticket",
/// "command"}` an agent command (`ticket` is whatever `messageEvent.to` names: a ticket,
/// Handoff's conversation id, or for `takeover` the member; `to` is taken as well). The
/// simulator posts it to the hub as the desk and answers `200 {"status", "body"}` with
/// the hub's status and JSON body, whatever the status; its own errors (a bad request, no
/// desk identity, the hub unreachable or silent) are 4xx/5xx with `{"error"}`.
async fn send(State(platform): State<CustomPlatform>, body: Bytes) -> Answer {
    let Some((desk, client)) = platform.desk() else {
        return no_desk();
    };
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the body is a JSON object: {\"memberId\", \"text\"} or {\"ticket\", \"command\"}",
        );
    };
    let to = given(&request, "ticket").or_else(|| given(&request, "to"));
    let hub_body = match (
        given(&request, "memberId"),
        given(&request, "text"),
        to,
        given(&request, "command"),
    ) {
        (Some(member), Some(text), None, None) => {
            let agent = given(&request, "agentName").unwrap_or(AGENT_NAME);
            let mut hub_body = WebhookClient::agent_reply(member.trim(), text);
            hub_body["sendToInlet"]["agentName"] = json!(agent.trim());
            hub_body
        }
        (None, None, Some(to), Some(command)) => {
            let now = i64::try_from(unix_ms()).unwrap_or(i64::MAX);
            WebhookClient::agent_command(to.trim(), command.trim(), now)
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send {\"memberId\", \"text\"} for a message, or {\"ticket\", \"command\"} for \
                 an agent command (both non-empty, not mixed)",
            );
        }
    };
    if platform.verbose() {
        println!("[desk] -> {hub_body}");
    }
    // Each send is a message of its own: without an id the hub would take the agent's
    // second "ok" within its duplicate window for the first one sent again.
    let webhook_id = format!("desk-{}", uuid::Uuid::new_v4());
    let headers = [("webhook-id", webhook_id.as_str())];
    let post = client.post(&desk.channel, &desk.org, &desk.token, &hub_body, &headers);
    match tokio::time::timeout(HUB_TIMEOUT, post).await {
        Ok(Ok((status, answer))) => {
            if platform.verbose() {
                println!("[desk] <- {status} {answer}");
            }
            (
                StatusCode::OK,
                Json(json!({"status": status, "body": answer})),
            )
        }
        Ok(Err(e)) => error(
            StatusCode::BAD_GATEWAY,
            "hub_unreachable",
            format!("posting to {} failed: {e:#}", desk.hub),
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "hub_timeout",
            format!(
                "{} did not answer within {}s",
                desk.hub,
                HUB_TIMEOUT.as_secs()
            ),
        ),
    }
}

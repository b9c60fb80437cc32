//! Selarti's "All messages" webhook: the AI's answers (and its operators' messages, and
//! its hand-to-a-human signal) for members whose bot is a Selarti channel. Each webhook
//! becomes a `BotReply` event, stored in JetStream before Selarti gets its 200.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::now_ms;
use handoff_platforms::hub::{Edge, Hub, Incoming, LookupRequest, accept_result};
use handoff_platforms::selarti::edge::{WebhookError, authorize};
use handoff_platforms::selarti::{WEBHOOK_PATH, parse_webhook};
use handoff_proto::Body;
use serde_json::{Value, json};

pub(crate) fn router<H: Hub>(edge: Edge<H>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive::<H>))
        .with_state(edge)
}

async fn receive<H: Hub>(
    State(edge): State<Edge<H>>,
    Path((channel, secret)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<Json<Value>, WebhookError> {
    let bot = authorize(&edge.catalog.load().channels, &channel, &secret)?;
    let bytes = axum::body::to_bytes(body, edge.body_limit)
        .await
        .map_err(|_| WebhookError::TooLarge(edge.body_limit))?;
    let update = parse_webhook(&bytes)?;
    // `external_chat_id` is the member id Handoff sent as `chat_id`; the look-up answers
    // "not found" for anything else, and for members of inlets this bot does not answer.
    let found = edge
        .hub
        .lookup(&LookupRequest {
            caller: Some(bot.id.clone()),
            member_id: Some(update.member_id.clone()),
            ..Default::default()
        })
        .await
        .map_err(|e| WebhookError::Unavailable(e.to_string()))?;
    let Some(member) = found.member_id.filter(|_| found.found) else {
        return Err(WebhookError::UnknownChat(update.member_id));
    };
    let incoming = Incoming {
        member_id: member.to_string(),
        conversation_id: String::new(),
        purpose: "selarti",
        source_id: Some(update.message_id.clone()),
        occurred_at_ms: now_ms(),
        body: Body::BotReply(update.reply),
    };
    let accepted = accept_result(&edge.hub, &bot, incoming, &bytes)
        .await
        .map_err(|e| match e {
            handoff_bus::PublishError::TooLarge { limit, .. } => WebhookError::TooLarge(limit),
            e => WebhookError::Unavailable(e.to_string()),
        })?;
    if accepted.duplicate {
        return Ok(Json(json!({"ok": true, "duplicate": true})));
    }
    Ok(Json(json!({"ok": true, "eventId": accepted.event_id})))
}

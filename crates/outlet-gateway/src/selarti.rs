//! Selarti's "All messages" webhook: the AI's answers (and its operators' messages, and
//! its hand-to-a-human signal) for members whose bot is a Selarti channel. Each webhook
//! becomes a `BotReply` event, stored in JetStream before Selarti gets its 200.

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::{message_keys, now_ms};
use handoff_platforms::selarti::edge::{WebhookError, authorize};
use handoff_platforms::selarti::{WEBHOOK_PATH, parse_webhook};
use handoff_proto::{Body, Envelope};
use serde_json::{Value, json};

use crate::AppState;
use crate::webhook::{LookupRequest, lookup};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(state)
}

async fn receive(
    State(state): State<AppState>,
    Path((channel, secret)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<Json<Value>, WebhookError> {
    let bot = authorize(&state.catalog.load().channels, &channel, &secret)?;
    let bytes = axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| WebhookError::TooLarge(state.body_limit))?;
    let update = parse_webhook(&bytes)?;
    // `external_chat_id` is the member id Handoff sent as `chat_id`; the look-up answers
    // "not found" for anything else, and for members of inlets this bot does not answer.
    let found = lookup(
        &state,
        LookupRequest {
            caller: &bot.id,
            member_id: Some(&update.member_id),
            outlet_channel: None,
            conversation_ref: None,
        },
    )
    .await
    .map_err(|e| WebhookError::Unavailable(e.to_string()))?;
    if !found.found {
        return Err(WebhookError::UnknownChat(update.member_id));
    }
    let keys = message_keys(
        &bot.id,
        &found.member_id,
        "selarti",
        Some(update.message_id.clone()),
        &bytes,
    );
    let envelope = Envelope {
        event_id: keys.event_id,
        org: bot.org.clone(),
        channel: bot.id.clone(),
        member_id: found.member_id,
        source_message_id: keys.source_message_id,
        occurred_at_ms: now_ms(),
        accepted_at_ms: now_ms(),
        body: Some(Body::BotReply(update.reply)),
        ..Default::default()
    };
    let duplicate = state
        .bus
        .publish_event_once(&envelope, &keys.dedup_id)
        .await
        .map_err(|e| match e {
            handoff_bus::PublishError::TooLarge { limit, .. } => WebhookError::TooLarge(limit),
            e => WebhookError::Unavailable(e.to_string()),
        })?;
    if duplicate {
        return Ok(Json(json!({"ok": true, "duplicate": true})));
    }
    handoff_platforms::metrics::message_in(&bot.id, bot.platform.as_str());
    Ok(Json(json!({"ok": true, "eventId": envelope.event_id})))
}

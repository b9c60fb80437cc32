//! `POST /v2.4/customWebhook` for inlet channels.

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::{message_keys, now_ms};
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body, read_body,
};
use handoff_proto::{Body, Envelope, InboundMessage};
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(state)
}

/// A customer message. 200 means JetStream has stored it; a re-post of the same message
/// (same `messageId` from the same member, or the same body within the duplicate window)
/// is answered 200 again and handled once.
async fn receive(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let channel = authorize(&state.catalog.load().channels, &query, Role::Inlet)?;
    let bytes = read_body(&headers, body, state.body_limit).await?;
    let (request, parsed) = parse_body(bytes, true)?;
    let WebhookRequest::SendToBot {
        external_id: Some(external_id),
        profile,
        content,
        source_message_id,
        timestamp_ms,
        ..
    } = request
    else {
        return Err(ApiError::Internal(
            "inlet request without sendToBot passed validation".into(),
        ));
    };
    let member_id = channel.member_id(&external_id).to_string();
    let keys = message_keys(
        &channel.id,
        &member_id,
        "inbound",
        source_message_id,
        parsed.to_string().as_bytes(),
    );
    let envelope = Envelope {
        event_id: keys.event_id,
        org: channel.org.clone(),
        channel: channel.id.clone(),
        member_id: member_id.clone(),
        source_message_id: keys.source_message_id,
        occurred_at_ms: timestamp_ms,
        accepted_at_ms: now_ms(),
        body: Some(Body::InboundMessage(InboundMessage {
            external_id,
            profile_json: Value::Object(profile).to_string(),
            content: Some(content),
        })),
        ..Default::default()
    };
    let duplicate = state
        .bus
        .accept_inbound_once(&envelope, &keys.dedup_id)
        .await?;
    if duplicate {
        return Ok(Json(
            json!({"ok": true, "duplicate": true, "memberId": member_id}),
        ));
    }
    handoff_platforms::metrics::message_in(&channel.id, channel.platform.as_str());
    Ok(Json(
        json!({"ok": true, "eventId": envelope.event_id, "memberId": member_id}),
    ))
}

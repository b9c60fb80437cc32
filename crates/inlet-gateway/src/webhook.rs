//! `POST /v2.4/customWebhook` for inlet channels.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::{PublishError, derived_id, now_ms};
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body,
};
use handoff_proto::{Body, Envelope, InboundMessage};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(state)
}

/// A customer message. 200 means JetStream has stored it; a re-post of the same message
/// (same `messageId`, or the same body) is answered 200 again and handled once.
async fn receive(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let channel = authorize(&state.channels, &query, Role::Inlet)?;
    let (request, parsed) = parse_body(body, state.body_limit, true)?;
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
    // Platforms that send no message id are deduplicated by the body itself (its canonical
    // JSON, which includes the customer's timestamp).
    let source_message_id = source_message_id.unwrap_or_else(|| {
        let digest = Sha256::digest(parsed.to_string().as_bytes());
        format!("sha256:{}", hex(&digest))
    });
    let member_id = channel.member_id(&external_id).to_string();
    let envelope = Envelope {
        event_id: derived_id(
            &format!("{}\n{source_message_id}", channel.id),
            "inbound",
            0,
        ),
        org: channel.org.clone(),
        channel: channel.id.clone(),
        member_id: member_id.clone(),
        source_message_id,
        occurred_at_ms: timestamp_ms,
        accepted_at_ms: now_ms(),
        body: Some(Body::InboundMessage(InboundMessage {
            external_id,
            profile_json: Value::Object(profile).to_string(),
            content: Some(content),
        })),
        ..Default::default()
    };
    state
        .bus
        .publish_event(&envelope)
        .await
        .map_err(|e| match e {
            PublishError::Unavailable(why) => ApiError::Unavailable(why),
            PublishError::NoMember => ApiError::Internal(e.to_string()),
        })?;
    Ok(Json(
        json!({"ok": true, "eventId": envelope.event_id, "memberId": member_id}),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

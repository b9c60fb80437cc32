//! `POST /v2.4/customWebhook` for inlet channels.

use axum::extract::{Query, State};
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::{PublishError, derived_id, new_event_id, now_ms};
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body, read_body,
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
/// (same `messageId` from the same member, or the same body within the duplicate window)
/// is answered 200 again and handled once.
async fn receive(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let channel = authorize(&state.channels, &query, Role::Inlet)?;
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
    // A message id is the platform's and is unique per member at most (some platforms
    // number messages per conversation), so the key is scoped to the member. Platforms that
    // send none are deduplicated by the body (its canonical JSON, which includes the
    // customer's timestamp) within JetStream's duplicate window only: the same words sent
    // again later are a new message.
    let (event_id, dedup_id, source_message_id) = match source_message_id {
        Some(id) => {
            let event_id = derived_id(&format!("{}\n{member_id}\n{id}", channel.id), "inbound", 0);
            (event_id.clone(), event_id, id)
        }
        None => {
            let digest = Sha256::digest(parsed.to_string().as_bytes());
            let key = format!("{}\n{member_id}\nsha256:{}", channel.id, hex(&digest));
            (
                new_event_id(),
                derived_id(&key, "inbound", 0),
                String::new(),
            )
        }
    };
    let envelope = Envelope {
        event_id,
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
    let duplicate = state
        .bus
        .publish_event_once(&envelope, &dedup_id)
        .await
        .map_err(|e| match e {
            PublishError::Unavailable(why) => ApiError::Unavailable(why),
            PublishError::NoMember => ApiError::Internal(e.to_string()),
        })?;
    if duplicate {
        return Ok(Json(
            json!({"ok": true, "duplicate": true, "memberId": member_id}),
        ));
    }
    Ok(Json(
        json!({"ok": true, "eventId": envelope.event_id, "memberId": member_id}),
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! `POST /v2.4/customWebhook` for outlet channels: what agents send.
//! - `sendToInlet {response, memberId}`: a reply for the customer; 404 for a member this
//!   outlet does not serve (unknown, or behind another inlet's or org's wall), 409 when
//!   the member is not in a live chat with it.
//! - `sendToBot {messageEvent}`: an agent command for the conversation named by
//!   `messageEvent.to` (Handoff's id or the outlet's ticket id); 404 when unknown.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::{message_keys, now_ms};
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body, read_body,
};
use handoff_proto::{AgentCommand, AgentMessage, Body, Envelope};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive))
        .with_state(state)
}

/// The router's look-up contract (`<prefix>_rpc.lookup`), mirrored here.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LookupRequest<'a> {
    /// The channel whose endpoint was called: the router finds only members it may act on.
    pub caller: &'a str,
    pub member_id: Option<&'a str>,
    pub outlet_channel: Option<&'a str>,
    pub conversation_ref: Option<&'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LookupReply {
    pub found: bool,
    pub member_id: String,
    pub state: String,
    pub conversation_id: String,
    pub outlet_channel: String,
    error: Option<String>,
}

pub(crate) async fn lookup(
    state: &AppState,
    request: LookupRequest<'_>,
) -> Result<LookupReply, ApiError> {
    let subject = format!("{}_rpc.lookup", state.bus.settings().prefix);
    let payload = serde_json::to_vec(&request).expect("serializable");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        state.bus.client().request(subject, payload.into()),
    )
    .await
    .map_err(|_| ApiError::Unavailable("member look-up timed out".into()))?
    .map_err(|e| ApiError::Unavailable(format!("member look-up failed: {e}")))?;
    let reply: LookupReply = serde_json::from_slice(&reply.payload)
        .map_err(|e| ApiError::Internal(format!("bad look-up reply: {e}")))?;
    if let Some(error) = reply.error {
        return Err(ApiError::Unavailable(error));
    }
    Ok(reply)
}

async fn receive(
    State(state): State<AppState>,
    Query(query): Query<WebhookQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let outlet = authorize(&state.catalog.load().channels, &query, Role::Outlet)?;
    let bytes = read_body(&headers, body, state.body_limit).await?;
    let (request, parsed) = parse_body(bytes, false)?;
    // A redelivery of the same agent message is recognised by the sender's stable id
    // (Standard Webhooks `webhook-id`), else the message's own id, else its body.
    let header_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(|s| format!("webhook-id:{s}"));
    let message_id = |m: Option<String>| header_id.or(m.map(|m| format!("message-id:{m}")));
    let (member_id, conversation_id, source_id, occurred, body) = match request {
        WebhookRequest::SendToInlet {
            member_id,
            content,
            source_message_id,
        } => {
            let found = lookup(
                &state,
                LookupRequest {
                    caller: &outlet.id,
                    member_id: Some(&member_id),
                    outlet_channel: None,
                    conversation_ref: None,
                },
            )
            .await?;
            if !found.found {
                return Err(ApiError::UnknownMember(member_id));
            }
            if found.state != "live" || found.outlet_channel != outlet.id {
                return Err(ApiError::NotLive(member_id));
            }
            (
                found.member_id,
                found.conversation_id,
                message_id(source_message_id),
                now_ms(),
                Body::AgentMessage(AgentMessage {
                    content: Some(content),
                }),
            )
        }
        WebhookRequest::SendToBot {
            to,
            content,
            source_message_id,
            timestamp_ms,
            ..
        } => {
            let reference = to.ok_or_else(|| ApiError::InvalidField {
                field: "sendToBot.messageEvent.to".into(),
                message: "an agent command names its conversation in `messageEvent.to`".into(),
            })?;
            let found = lookup(
                &state,
                LookupRequest {
                    caller: &outlet.id,
                    member_id: None,
                    outlet_channel: Some(&outlet.id),
                    conversation_ref: Some(&reference),
                },
            )
            .await?;
            if !found.found || found.conversation_id.is_empty() {
                return Err(ApiError::UnknownConversation(reference));
            }
            if found.state == "bot" {
                return Err(ApiError::NotLive(found.member_id));
            }
            (
                found.member_id,
                found.conversation_id,
                message_id(source_message_id),
                timestamp_ms,
                Body::AgentCommand(AgentCommand {
                    content: Some(content),
                    conversation_ref: reference,
                }),
            )
        }
    };
    let keys = message_keys(
        &outlet.id,
        &member_id,
        "agent",
        source_id,
        parsed.to_string().as_bytes(),
    );
    let envelope = Envelope {
        event_id: keys.event_id,
        org: outlet.org.clone(),
        channel: outlet.id.clone(),
        member_id,
        conversation_id,
        source_message_id: keys.source_message_id,
        occurred_at_ms: occurred,
        accepted_at_ms: now_ms(),
        body: Some(body),
        ..Default::default()
    };
    let duplicate = state
        .bus
        .accept_inbound_once(&envelope, &keys.dedup_id)
        .await?;
    if duplicate {
        return Ok(Json(json!({"ok": true, "duplicate": true})));
    }
    handoff_platforms::metrics::message_in(&outlet.id, outlet.platform.as_str());
    Ok(Json(json!({"ok": true, "eventId": envelope.event_id})))
}

//! `POST /v2.4/customWebhook` for outlet channels: what agents send.
//! - `sendToInlet {response, memberId}`: a reply for the customer; 404 for a member this
//!   outlet does not serve (unknown, or behind another inlet's or org's wall), 409 when
//!   the member is not in a live chat with it.
//! - `sendToBot {messageEvent}`: an agent command for the conversation named by
//!   `messageEvent.to` (Handoff's id or the outlet's ticket id); 404 when unknown.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use handoff_bus::now_ms;
use handoff_config::Role;
use handoff_platforms::custom::WebhookRequest;
use handoff_platforms::custom::edge::{
    ApiError, WEBHOOK_PATH, WebhookQuery, authorize, parse_body, read_body,
};
use handoff_platforms::hub::{Edge, Hub, Incoming, LookupReply, LookupRequest, Serving, accept};
use handoff_proto::{AgentCommand, AgentMessage, Body};
use serde_json::{Value, json};

pub(crate) fn router<H: Hub>(edge: Edge<H>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receive::<H>))
        .with_state(edge)
}

/// Asks the router who a member or conversation is, behind the wall of `caller`.
pub(crate) async fn lookup(
    hub: &impl Hub,
    request: LookupRequest,
) -> Result<LookupReply, ApiError> {
    hub.lookup(&request)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

async fn receive<H: Hub>(
    State(edge): State<Edge<H>>,
    Query(query): Query<WebhookQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let outlet = authorize(&edge.catalog.load().channels, &query, Role::Outlet)?;
    let bytes = read_body(&headers, body, edge.body_limit).await?;
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
            agent_name,
        } => {
            // An agent writing to a member the bot holds takes them over (where the
            // outlet allows it): the router opens the live chat before answering.
            let found = lookup(
                &edge.hub,
                LookupRequest {
                    caller: Some(outlet.id.clone()),
                    member_id: Some(member_id.clone()),
                    claim: outlet.live_chat.agent_takeover,
                    agent_name: Some(agent_name.clone()).filter(|n| !n.is_empty()),
                    ..Default::default()
                },
            )
            .await?;
            let Some(member) = found.member_id.filter(|_| found.found) else {
                return Err(ApiError::UnknownMember(member_id));
            };
            if found.state != Serving::Live || found.outlet_channel != outlet.id {
                return Err(ApiError::NotLive(member_id));
            }
            (
                member.to_string(),
                found
                    .conversation_id
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                message_id(source_message_id),
                now_ms(),
                Body::AgentMessage(AgentMessage {
                    content: Some(content),
                    agent_name,
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
            let said = match &content.kind {
                Some(handoff_proto::v1::content::Kind::Text(t)) => t.text.trim(),
                _ => "",
            };
            if outlet.live_chat.agent_takeover
                && said.eq_ignore_ascii_case(outlet.live_chat.takeover_command.trim())
            {
                // `to` names the member; of two agents racing, one gets the chat.
                let found = lookup(
                    &edge.hub,
                    LookupRequest {
                        caller: Some(outlet.id.clone()),
                        member_id: Some(reference.clone()),
                        claim: true,
                        ..Default::default()
                    },
                )
                .await?;
                let (Some(member), Some(conversation), true) =
                    (found.member_id, found.conversation_id, found.found)
                else {
                    return Err(ApiError::UnknownMember(reference));
                };
                if !found.claimed {
                    return Err(ApiError::Taken(reference));
                }
                let incoming = Incoming {
                    member_id: member.to_string(),
                    conversation_id: conversation.to_string(),
                    purpose: "agent",
                    source_id: message_id(source_message_id),
                    occurred_at_ms: timestamp_ms,
                    body: Body::AgentCommand(AgentCommand {
                        content: Some(content),
                        conversation_ref: conversation.to_string(),
                    }),
                };
                let accepted =
                    accept(&edge.hub, &outlet, incoming, parsed.to_string().as_bytes()).await?;
                return Ok(Json(
                    json!({"ok": true, "eventId": accepted.event_id, "conversationId": conversation}),
                ));
            }
            let found = lookup(
                &edge.hub,
                LookupRequest {
                    caller: Some(outlet.id.clone()),
                    outlet_channel: Some(outlet.id.clone()),
                    conversation_ref: Some(reference.clone()),
                    ..Default::default()
                },
            )
            .await?;
            let (Some(member), Some(conversation), true) =
                (found.member_id, found.conversation_id, found.found)
            else {
                return Err(ApiError::UnknownConversation(reference));
            };
            if found.state == Serving::Bot {
                return Err(ApiError::NotLive(member.to_string()));
            }
            (
                member.to_string(),
                conversation.to_string(),
                message_id(source_message_id),
                timestamp_ms,
                Body::AgentCommand(AgentCommand {
                    content: Some(content),
                    conversation_ref: reference,
                }),
            )
        }
    };
    let incoming = Incoming {
        member_id,
        conversation_id,
        purpose: "agent",
        source_id,
        occurred_at_ms: occurred,
        body,
    };
    let accepted = accept(&edge.hub, &outlet, incoming, parsed.to_string().as_bytes()).await?;
    if accepted.duplicate {
        return Ok(Json(json!({"ok": true, "duplicate": true})));
    }
    Ok(Json(json!({"ok": true, "eventId": accepted.event_id})))
}

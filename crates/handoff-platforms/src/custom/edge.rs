//! The HTTP edge of the Webhook API (`POST /v2.4/customWebhook?accessToken=…&c=…&a=…`),
//! shared by inlet-gateway (inlet channels) and outlet-gateway (outlet channels).

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use handoff_config::{Channel, Channels, Platform, Role};
use serde::Deserialize;

use super::transform::{WebhookRequest, parse_webhook_request};

/// The path Stella's custom platforms post to; keeping it lets a platform move to Handoff
/// by changing the host only.
pub const WEBHOOK_PATH: &str = "/v2.4/customWebhook";

/// Query parameters of the Webhook API. All optional here so their absence gets our own
/// error, not the extractor's.
#[derive(Debug, Deserialize)]
pub struct WebhookQuery {
    #[serde(rename = "accessToken")]
    pub access_token: Option<String>,
    pub c: Option<String>,
    pub a: Option<String>,
}

/// Everything the Webhook API can answer besides 200. The status mapping is exhaustive.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("query parameter `{0}` is required")]
    MissingParameter(&'static str),
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{message}")]
    InvalidField { field: String, message: String },
    #[error("the access token is missing or wrong")]
    Unauthorized,
    #[error("no channel `{channel}` in org `{org}` is served here")]
    UnknownChannel { channel: String, org: String },
    #[error("channel `{0}` is disabled and accepts no new messages")]
    ChannelDisabled(String),
    #[error("no member `{0}` is known")]
    UnknownMember(String),
    #[error("no open conversation `{0}` on this outlet")]
    UnknownConversation(String),
    #[error("member `{0}` is not in a live chat")]
    NotLive(String),
    #[error("member `{0}` is already with a human (or on the way to one)")]
    Taken(String),
    #[error("body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the message could not be stored; try again")]
    Unavailable(String),
    /// The hub is working through a backlog and takes new messages again shortly.
    #[error("{0}")]
    Busy(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MissingParameter(_) => (StatusCode::BAD_REQUEST, "missing_parameter"),
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::UnknownChannel { .. } => (StatusCode::NOT_FOUND, "unknown_channel"),
            ApiError::ChannelDisabled(_) => (StatusCode::CONFLICT, "channel_disabled"),
            ApiError::UnknownMember(_) => (StatusCode::NOT_FOUND, "unknown_member"),
            ApiError::UnknownConversation(_) => (StatusCode::NOT_FOUND, "unknown_conversation"),
            ApiError::NotLive(_) => (StatusCode::CONFLICT, "member_not_live"),
            ApiError::Taken(_) => (StatusCode::CONFLICT, "member_taken"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// What a refused platform is asked to wait before it sends again.
const RETRY_AFTER_SECS: &str = "5";

impl From<handoff_bus::PublishError> for ApiError {
    fn from(e: handoff_bus::PublishError) -> Self {
        match e {
            handoff_bus::PublishError::Unavailable(why) => ApiError::Unavailable(why),
            handoff_bus::PublishError::Full { .. } => ApiError::Busy(e.to_string()),
            handoff_bus::PublishError::TooLarge { limit, .. } => ApiError::PayloadTooLarge(limit),
            handoff_bus::PublishError::NoMember => ApiError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            ApiError::Unavailable(detail) | ApiError::Internal(detail) => {
                tracing::error!(%detail, code, "request failed");
            }
            ApiError::Busy(detail) => tracing::warn!(%detail, code, "request deferred"),
            _ => tracing::info!(error = %self, code, "request refused"),
        }
        let field = match &self {
            ApiError::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let mut response = crate::error_response(status, code, self.to_string(), field);
        if matches!(self, ApiError::Busy(_) | ApiError::Unavailable(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// Finds the channel named by `c`/`a` among the custom channels with `role`, then checks the token in
/// constant time.
pub fn authorize(
    channels: &Channels,
    query: &WebhookQuery,
    role: Role,
) -> Result<Arc<Channel>, ApiError> {
    let channel_id = query
        .c
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::MissingParameter("c"))?;
    let org = query
        .a
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::MissingParameter("a"))?;
    let token = query
        .access_token
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    let channel = channels
        .get(channel_id)
        .filter(|c| c.org == org && c.role == role && c.platform == Platform::Custom)
        .ok_or_else(|| ApiError::UnknownChannel {
            channel: channel_id.to_string(),
            org: org.to_string(),
        })?;
    if !channel.token_matches(token) {
        return Err(ApiError::Unauthorized);
    }
    if !channels.is_enabled(&channel.id) {
        return Err(ApiError::ChannelDisabled(channel.id.clone()));
    }
    Ok(channel.clone())
}

/// Reads a request body of at most `limit` bytes. Called once the token is checked, so an
/// unauthenticated client cannot make the service buffer anything.
pub async fn read_body(
    headers: &HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let source = e.into_inner();
        if source
            .downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            ApiError::PayloadTooLarge(limit)
        } else {
            ApiError::MalformedJson(format!("the body could not be read: {source}"))
        }
    })
}

/// Validates the body of a Webhook API request; also returns the parsed JSON, whose
/// canonical form (sorted keys) identifies a re-posted body.
pub fn parse_body(
    bytes: Bytes,
    inlet: bool,
) -> Result<(WebhookRequest, serde_json::Value), ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let request = parse_webhook_request(&value, inlet).map_err(|e| ApiError::InvalidField {
        field: e.field,
        message: e.message,
    })?;
    Ok((request, value))
}

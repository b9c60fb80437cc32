//! Errors of Selarti's webhook endpoint, answered as `{"error": {"code", "message", "field"?}}`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use handoff_config::{Channel, Channels, Platform};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Unknown channel or wrong secret: the same answer for both, so neither can be probed.
    #[error("no Selarti webhook at this address")]
    NotFound,
    #[error("the body is not a JSON object: {0}")]
    Malformed(String),
    #[error("`{field}`: {message}")]
    InvalidField { field: String, message: String },
    #[error("no member has the external_chat_id `{0}`")]
    UnknownChat(String),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The hub's own parts failed; the detail is logged, never answered.
    #[error("temporarily unavailable; try again")]
    Unavailable(String),
}

impl WebhookError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            WebhookError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            WebhookError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            WebhookError::InvalidField { .. } => (StatusCode::BAD_REQUEST, "invalid_field"),
            WebhookError::UnknownChat(_) => (StatusCode::NOT_FOUND, "unknown_chat"),
            WebhookError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            WebhookError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        match &self {
            WebhookError::Unavailable(detail) => tracing::error!(%detail, code, "webhook failed"),
            _ => tracing::info!(error = %self, code, "webhook refused"),
        }
        let field = match &self {
            WebhookError::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        crate::error_response(status, code, self.to_string(), field)
    }
}

/// The Selarti bot channel `channel_id` whose access token is `secret` (compared in
/// constant time).
pub fn authorize(
    channels: &Channels,
    channel_id: &str,
    secret: &str,
) -> Result<Arc<Channel>, WebhookError> {
    channels
        .get(channel_id)
        .filter(|c| c.platform == Platform::Selarti && c.token_matches(secret))
        .cloned()
        .ok_or(WebhookError::NotFound)
}

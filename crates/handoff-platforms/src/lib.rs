//! Platform adapters and the outbound HTTP client they share.
//!
//! - [`platform`]: the closed list of platforms as typed channel settings, and the service
//!   that serves each (see `docs/architecture.md`, "Adding a platform").
//! - [`content`]: Handoff's JSON form of normalized content, shared by all platforms.
//! - [`custom`]: the Stella-compatible custom platform protocol (Webhook API bodies we
//!   accept; Livechat, Relay and Send API bodies we send), for inlets and outlets.
//! - [`webhook_bot`]: Handoff's generic webhook-bot protocol.
//! - [`selarti`]: Selarti's AI as a bot (send now, answer later on its webhook).
//! - [`zendesk`]: Zendesk Chat's Conversations API, served as an agent (wire, settings
//!   and transforms; the session lives in `zendesk-agent`).
//! - [`outbound`]: signed (Standard Webhooks), retrying POSTs with a stable `webhook-id`.
//!
//! Every platform folder has the same files: `settings` (its typed channel settings),
//! `wire` (its wire types, private to the folder), `transform` (to and from the normalized
//! model) and, when it receives calls, `edge` (its endpoint's errors). Wire shapes stay
//! inside each adapter; the rest of Handoff sees `handoff_proto` types.

pub mod catalog;
pub mod catalog_store;
pub mod content;
pub mod custom;
#[cfg(test)]
mod fuzz;
pub mod hub;
pub mod metrics;
pub mod outbound;
mod platform;
pub mod selarti;
pub mod settle;
pub mod webchat;
pub mod webhook_bot;
pub mod zendesk;

pub use catalog::{Catalog, Snapshot};
pub use outbound::{DeliveryError, Horizon, OutboundClient, OutboundSettings, Signer};
pub use platform::{ChannelSettings, Platforms};

/// Every edge answers a refusal the same way: `{"error": {"code", "message", "field"?}}`.
pub fn error_response(
    status: axum::http::StatusCode,
    code: &str,
    message: String,
    field: Option<&str>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut error = serde_json::json!({"code": code, "message": message});
    if let Some(field) = field {
        error["field"] = serde_json::json!(field);
    }
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

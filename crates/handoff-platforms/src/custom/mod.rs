//! The Stella-compatible custom platform protocol (seed 000, "Connect to a custom
//! platform"). Handoff serves its Webhook API and calls the platform's Livechat, Relay and
//! Send APIs, whose URLs live in the channel's `info`.

pub mod edge;
mod transform;
mod wire;

pub use transform::{
    InvalidRequest, WebhookRequest, content_from_response, content_to_response, livechat_body,
    parse_webhook_request, relay_body, send_body,
};

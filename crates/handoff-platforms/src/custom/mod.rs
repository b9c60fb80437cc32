//! The Stella-compatible custom platform protocol (seed 000, "Connect to a custom
//! platform"). Handoff serves its Webhook API and calls the platform's Livechat, Relay and
//! Send APIs, whose URLs live in the channel's `info` (read by [`settings`]).

pub mod edge;
pub mod settings;
mod transform;
mod wire;

pub use settings::{InletSettings, OutletSettings};
pub use transform::{
    InvalidRequest, WebhookRequest, livechat_body, parse_webhook_request, relay_body, send_body,
    watched_body,
};

//! Selarti (an AI manager) as a bot.
//!
//! Handoff sends each customer message to Selarti's send-message method (Bearer token from
//! `POST {apiBase}/wf/auth`); the AI answers later, on Selarti's "All messages" webhook,
//! which Handoff receives at `/selarti/{channel}/{accessToken}`. Spec:
//! `shared/spec/stella_selarti.md` part B and seed 001 (the webhook's field names).
//!
//! - [`settings`]: the channel's typed settings, parsed from the channels file.
//! - `wire`: the webhook body exactly as Selarti sends it (private to this folder).
//! - [`transform`]: the webhook to a `BotReply`, a customer message to a send body.
//! - [`client`]: the token cache and the send call.
//! - [`edge`]: the webhook endpoint's errors.

pub mod client;
pub mod edge;
pub mod settings;
pub mod transform;
mod wire;

pub use client::SelartiClient;
pub use settings::SelartiSettings;
pub use transform::{WebhookUpdate, parse_webhook, send_body};

/// Where Selarti's "All messages" integration posts: `/selarti/{channel}/{accessToken}`.
pub const WEBHOOK_PATH: &str = "/selarti/{channel}/{secret}";

//! Platform adapters and the outbound HTTP client they share.
//!
//! - [`custom`]: the Stella-compatible custom platform protocol (Webhook API bodies we
//!   accept; Livechat, Relay and Send API bodies we send), for inlets and outlets.
//! - [`webhook_bot`]: Handoff's generic webhook-bot protocol.
//! - [`selarti`]: Selarti's AI as a bot (send now, answer later on its webhook).
//! - [`outbound`]: signed (Standard Webhooks), retrying POSTs with a stable `webhook-id`.
//!
//! Wire shapes stay inside each adapter; the rest of Handoff sees `handoff_proto` types.

pub mod custom;
#[cfg(test)]
mod fuzz;
pub mod outbound;
pub mod selarti;
pub mod webhook_bot;

pub use outbound::{DeliveryError, Horizon, OutboundClient, OutboundSettings, Signer};

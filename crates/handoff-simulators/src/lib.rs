//! Faithful simulators of the external platforms Handoff talks to, written from
//! `shared/spec`: used by the system tests and by the demo (`handoff-sim`).
//!
//! - [`CustomPlatform`]: a Stella-style custom platform. As an inlet it receives Send API
//!   calls and posts customer messages to the hub's Webhook API; as a custom live-chat
//!   system it receives Livechat and Relay calls and lets an agent answer and send
//!   commands. Every call is recorded; any API can be told to fail or stall.
//! - [`DemoBot`]: a scripted bot speaking Handoff's webhook-bot protocol.

mod bot;
mod platform;

pub use bot::DemoBot;
pub use platform::{Api, CustomPlatform, Recorded, WebhookClient};

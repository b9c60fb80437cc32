//! Handoff's generic webhook-bot protocol: any HTTP bot (Rasa, Botpress, an LLM service)
//! plugs in without Selarti.
//!
//! Handoff POSTs one JSON object per customer message (see [`request_body`]) to the bot
//! channel's `info.url`; the bot answers synchronously with
//! `{"responses": [<Stella response objects>], "handoff": {...}?, "close": bool?}`
//! (a bare array of responses is also accepted, and an empty body means "no answer").
//! The README documents the protocol for bot authors.

pub mod settings;
pub mod transform;
mod wire;

pub use settings::BotSettings;
pub use transform::{BotAnswer, BotEvent, BotRequest, parse_answer, request_body};

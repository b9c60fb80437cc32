//! Handoff's own web chat: an embeddable widget whose visitors talk to the hub over a
//! WebSocket. The inlet-gateway serves it; this folder holds what the platform is made of
//! apart from the service: the channel's settings, the visitor token and the frames.
//!
//! A visitor is whoever holds a token the hub signed (never an id the browser chose), so
//! nobody can read or write as another visitor. What the hub sends a visitor waits in their
//! mailbox (a JetStream subject, see `handoff_bus::mailbox`) and is read from the last
//! sequence the browser saw, so a reload or another replica resumes without loss.

pub mod frames;
pub mod settings;
pub mod token;

pub use settings::WebchatSettings;
pub use token::{TokenError, VisitorToken};

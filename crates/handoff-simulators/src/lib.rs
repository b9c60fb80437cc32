//! Faithful simulators of the external platforms Handoff talks to, written from
//! `shared/spec`: used by the system tests and by the demo (`handoff-sim`).
//!
//! - [`CustomPlatform`]: a Stella-style custom platform. As an inlet it receives Send API
//!   calls and posts customer messages to the hub's Webhook API; as a custom live-chat
//!   system it receives Livechat and Relay calls and lets an agent answer and send
//!   commands. Every call is recorded; any API can be told to fail or stall. It serves the
//!   reference agent desk too (`/desk`): a page that plays the human agents, answering as
//!   the [`DeskIdentity`] it is given.
//! - [`DemoBot`]: a scripted bot speaking Handoff's webhook-bot protocol.
//! - [`SelartiSim`]: Selarti's auth and send API with a scripted AI answering on the
//!   "All messages" webhook, with faults on demand.
//! - [`ZendeskSim`]: Zendesk Chat's Conversations API (GraphQL over HTTP and WebSocket) with
//!   scripted visitors, recording what the agent sends, with faults on demand (rate limits,
//!   failing subscriptions, EOS, dropped sockets, lost answers).

mod bot;
mod desk;
mod platform;
mod selarti;
mod zendesk;

pub use bot::DemoBot;
pub use desk::DeskIdentity;
pub use platform::{Api, CustomPlatform, Recorded, WebhookClient};
pub use selarti::SelartiSim;
pub use zendesk::{ErrorCodeStyle, ZendeskSim};

/// Binds `address` as `TcpListener::bind` does, but with the backlog a real platform's
/// server has (the kernel caps it at `net.core.somaxconn`) instead of std's 128: the hub
/// opens a connection per concurrent call, and a thousand customers at once must not find
/// a simulator dropping handshakes (each dropped one waits a second to be sent again).
pub async fn listen(address: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(address).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{address} resolves to no address"),
        )
    }))
}

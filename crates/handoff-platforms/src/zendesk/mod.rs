//! Zendesk Chat, served as an agent over the Chat Conversations API: `startAgentSession`
//! over HTTP, then GraphQL requests and subscriptions over a WebSocket whose URL is the
//! credential. Spec: `shared/spec/zendesk.md`, and seed 002 (Zendesk's own text, which wins
//! where they differ).
//!
//! - [`settings`]: the channel's typed settings.
//! - `wire`: the frames exactly as they travel (private to this folder).
//! - [`transform`]: frames to what the agent service acts on, visitor messages to
//!   normalized content, normalized content to the mutations that send it (text in
//!   GraphQL variables, so visitor and bot text never breaks a query).
//!
//! The service that holds the session is `zendesk-agent`.

pub mod settings;
pub mod transform;
mod wire;

pub use settings::ZendeskSettings;
pub use transform::{
    ACTIVITY_SUBSCRIPTION, DEPARTMENTS_QUERY, DepartmentError, ErrorKind, Frame, FrameError,
    GO_ONLINE, MESSAGE_SUBSCRIPTION, OutgoingRequest, VisitorMessage, graphql_string,
    online_department, parse_frame, ping_frame, request_frame, send_request, start_session_query,
    stop_subscription_frame, transfer_request, visitor_content, visitor_left, visitor_message,
};

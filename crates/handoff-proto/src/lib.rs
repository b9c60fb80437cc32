//! The normalized event model (`proto/handoff/v1`), generated once here and reused by
//! every service.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/handoff.v1.rs"));
}

/// The admin API (`proto/handoff/admin/v1`), served by the router.
#[cfg(feature = "admin")]
#[allow(clippy::all, clippy::pedantic)]
pub mod admin {
    include!(concat!(env!("OUT_DIR"), "/handoff.admin.v1.rs"));

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}

pub use prost::Message;
pub use v1::envelope::Body;
pub use v1::*;

impl Envelope {
    /// The bus-level name of the body, used as the last subject token and in logs.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            None => "empty",
            Some(Body::InboundMessage(_)) => "inbound_message",
            Some(Body::BotReply(_)) => "bot_reply",
            Some(Body::BotFailed(_)) => "bot_failed",
            Some(Body::ConversationTimeout(_)) => "conversation_timeout",
            Some(Body::Parked(_)) => "parked",
            Some(Body::CustomerLeft(_)) => "customer_left",
            Some(Body::OperatorClose(_)) => "operator_close",
            Some(Body::AgentMessage(_)) => "agent_message",
            Some(Body::AgentCommand(_)) => "agent_command",
            Some(Body::HandoffAccepted(_)) => "handoff_accepted",
            Some(Body::HandoffFailed(_)) => "handoff_failed",
            Some(Body::RelayFailed(_)) => "relay_failed",
            Some(Body::DeliveryFailed(_)) => "delivery_failed",
            Some(Body::DeliveryStalled(_)) => "delivery_stalled",
            Some(Body::TurnDue(_)) => "turn_due",
            Some(Body::HandoffRequested(_)) => "handoff_requested",
            Some(Body::DeliverToMember(_)) => "deliver_to_member",
            Some(Body::SendToBot(_)) => "send_to_bot",
            Some(Body::RequestLivechat(_)) => "request_livechat",
            Some(Body::RelayToOutlet(_)) => "relay_to_outlet",
            Some(Body::DeliverToOutlet(_)) => "deliver_to_outlet",
            Some(Body::DeliverLifecycle(_)) => "deliver_lifecycle",
        }
    }
}

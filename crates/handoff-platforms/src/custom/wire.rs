//! Bodies of the Webhook API exactly as seed 000 names them.

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StellaWebhookBody {
    /// Required for inlets; live-chat systems posting `sendToInlet` may omit it.
    pub profile: Option<Map<String, Value>>,
    pub external_id: Option<String>,
    pub send_to_bot: Option<StellaSendToBot>,
    pub send_to_inlet: Option<StellaSendToInlet>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StellaSendToBot {
    pub message_event: StellaMessageEvent,
}

#[derive(Debug, Deserialize)]
pub(super) struct StellaMessageEvent {
    pub from: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Map<String, Value>,
    pub timestamp: StellaTimestamp,
    #[serde(default, rename = "messageId")]
    pub message_id: Option<String>,
}

/// Seed 000 says "timestamp in ms" (a number); Stella's normalized samples also send epoch
/// seconds as a string. Both are accepted.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum StellaTimestamp {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StellaSendToInlet {
    pub response: Map<String, Value>,
    pub member_id: String,
    /// Handoff's extension: the agent's display name, for the "agent joined" notice.
    #[serde(default)]
    pub agent_name: Option<String>,
}

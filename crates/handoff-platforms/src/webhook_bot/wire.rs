//! The bot's answer exactly as it arrives (private to this folder).

use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum WireAnswer {
    Full {
        #[serde(default)]
        responses: Vec<Value>,
        #[serde(default)]
        handoff: Option<WireHandoff>,
        #[serde(default)]
        close: bool,
    },
    Bare(Vec<Value>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct WireHandoff {
    #[serde(default)]
    pub(super) summary: String,
    #[serde(default)]
    pub(super) group_name: String,
    #[serde(default)]
    pub(super) label: String,
    #[serde(default)]
    pub(super) meta: Map<String, Value>,
}

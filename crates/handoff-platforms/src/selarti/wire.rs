//! The "All messages" webhook body, with every field of seed 001. Selarti is a Bubble app:
//! booleans may come as `true`, `"yes"` or `"да"`, ids as strings or numbers, and empty
//! fields as `null` or `""`; unknown fields are ignored.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct Webhook {
    #[serde(deserialize_with = "text")]
    pub channel_id: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub close: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub company_id: Option<String>,
    /// An object, or a string the AI collected (a phone, an e-mail).
    pub contacts: Value,
    #[serde(deserialize_with = "flag")]
    pub get_contact: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub external_chat_id: Option<String>,
    pub interest: Value,
    #[serde(deserialize_with = "flag")]
    pub is_bot: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub manager_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub message_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub message_text: Option<String>,
    #[serde(deserialize_with = "text")]
    pub message_type: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub operator: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub panel_url: Option<String>,
    #[serde(deserialize_with = "text")]
    pub share_url: Option<String>,
    #[serde(deserialize_with = "flag")]
    pub success: Option<bool>,
    #[serde(deserialize_with = "text")]
    pub task_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub thread_id: Option<String>,
    #[serde(deserialize_with = "text")]
    pub title: Option<String>,
    #[serde(deserialize_with = "text")]
    pub wh_type: Option<String>,
}

/// A string, a number (as its text), or nothing (`null`, `""`).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, got {}",
            kind(&other)
        ))),
    }
}

/// `true`/`false`, `1`/`0`, or yes/no words in English or Russian; `null`/`""` is unset.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(Some(true)),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(Some(false)),
        Value::String(s) => match s.trim().to_lowercase().as_str() {
            "" => Ok(None),
            "true" | "yes" | "y" | "1" | "да" | "д" => Ok(Some(true)),
            "false" | "no" | "n" | "0" | "нет" | "н" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a yes/no value"
            ))),
        },
        other => Err(serde::de::Error::custom(format!(
            "expected a yes/no value, got {}",
            kind(&other)
        ))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

//! What travels on a visitor's WebSocket, and what waits in their mailbox.

use handoff_proto::{Content, Sender};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::content::{content_from_response, content_to_response};

/// A frame from the browser.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    Text {
        text: String,
        #[serde(rename = "clientId")]
        client_id: String,
    },
    /// A tap on a quick reply or a postback button.
    Postback {
        payload: String,
        #[serde(default)]
        title: String,
        #[serde(rename = "clientId")]
        client_id: String,
    },
}

impl ClientFrame {
    pub fn client_id(&self) -> &str {
        match self {
            Self::Text { client_id, .. } | Self::Postback { client_id, .. } => client_id,
        }
    }

    /// Characters the visitor wrote (what the size limit counts).
    pub fn chars(&self) -> usize {
        match self {
            Self::Text { text, .. } => text.chars().count(),
            Self::Postback { payload, title, .. } => {
                payload.chars().count() + title.chars().count()
            }
        }
    }

    /// The message in the Stella form every platform shares.
    pub fn response(&self) -> Value {
        match self {
            Self::Text { text, .. } => serde_json::json!({"type": "TEXT", "text": text}),
            Self::Postback { payload, title, .. } => {
                serde_json::json!({"type": "PAYLOAD", "payload": payload, "text": title})
            }
        }
    }

    pub fn content(&self) -> Content {
        // Both shapes above are ones `content_from_response` reads.
        content_from_response(&self.response()).unwrap_or_default()
    }
}

/// One message in a visitor's mailbox, as stored (the sequence is the stream's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailboxEntry {
    /// `visitor`, `bot`, `agent` or `system` (the hub's notices).
    pub from: String,
    /// RFC 3339.
    pub at: String,
    /// A Stella response object.
    pub content: Value,
    /// The browser's id for a visitor message, echoed so it can confirm what it sent.
    #[serde(rename = "clientId", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
}

impl MailboxEntry {
    /// What the hub sends a visitor (`deliver_to_member`).
    pub fn delivered(content: &Content, sender: Sender, at: String) -> Self {
        let from = match sender {
            Sender::Agent => "agent",
            Sender::Hub => "system",
            Sender::Bot | Sender::Unspecified => "bot",
            // Not sent to members today; named for what it is.
            Sender::Customer => "visitor",
        };
        Self {
            from: from.into(),
            at,
            content: content_to_response(content),
            client_id: String::new(),
        }
    }

    /// What the visitor sent, once the hub has accepted it.
    pub fn sent(frame: &ClientFrame, at: String) -> Self {
        Self {
            from: "visitor".into(),
            at,
            content: frame.response(),
            client_id: frame.client_id().to_string(),
        }
    }

    /// The frame the browser gets for the entry at stream sequence `seq`.
    pub fn frame(&self, seq: u64) -> Value {
        let mut v = serde_json::json!({
            "type": "message",
            "seq": seq,
            "from": self.from,
            "at": self.at,
            "content": self.content,
        });
        if !self.client_id.is_empty() {
            v["clientId"] = Value::String(self.client_id.clone());
        }
        v
    }
}

/// An error frame: `code` is one of `rate_limited`, `too_large`, `bad_frame`,
/// `not_accepted`.
pub fn error_frame(code: &str, message: &str, client_id: Option<&str>) -> Value {
    let mut v = serde_json::json!({"type": "error", "code": code, "message": message});
    if let Some(id) = client_id {
        v["clientId"] = Value::String(id.to_string());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_browser_frame_of_an_unknown_type_or_with_extra_fields_is_refused() {
        for bad in [
            r#"{"type":"text","text":"hi"}"#,
            r#"{"type":"shout","text":"hi","clientId":"c1"}"#,
            r#"{"type":"text","text":"hi","clientId":"c1","as":"someone-else"}"#,
            "not json",
        ] {
            assert!(serde_json::from_str::<ClientFrame>(bad).is_err(), "{bad}");
        }
        let ok: ClientFrame = serde_json::from_str(
            r#"{"type":"postback","payload":"Y","title":"Yes","clientId":"c2"}"#,
        )
        .unwrap();
        assert_eq!(ok.client_id(), "c2");
        assert_eq!(ok.response()["type"], "PAYLOAD");
    }
}

use handoff_proto::v1::content;
use handoff_proto::{Content, HandoffDetails, Member, Postback, Text, Unsupported};
use serde_json::{Map, Value, json};

use super::wire::{StellaTimestamp, StellaWebhookBody};
use crate::content::{content_from_response, content_to_response, content_with_raw};

/// A validated Webhook API request, in Handoff's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookRequest {
    /// `sendToBot`: a customer message (on an inlet) or an agent command (on an outlet).
    SendToBot {
        external_id: Option<String>,
        profile: Map<String, Value>,
        from: String,
        to: Option<String>,
        content: Content,
        source_message_id: Option<String>,
        timestamp_ms: i64,
    },
    /// `sendToInlet`: an agent's reply for the member `member_id`.
    SendToInlet {
        member_id: String,
        content: Content,
        source_message_id: Option<String>,
        /// The agent's display name, when the desk gives it (`agentName`).
        agent_name: String,
    },
}

/// A request that does not follow the protocol, with the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidRequest {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidRequest {
    InvalidRequest {
        field: field.into(),
        message: message.into(),
    }
}

/// Parses a Webhook API body. `inlet` is true for inlet channels, where `profile`,
/// `externalId` and `sendToBot` are required.
pub fn parse_webhook_request(body: &Value, inlet: bool) -> Result<WebhookRequest, InvalidRequest> {
    if let Some(field) = nul_field(body, "") {
        return Err(invalid(
            &field,
            "text must not contain the NUL character (\\u0000)",
        ));
    }
    let body: StellaWebhookBody = serde_path_to_error::deserialize(body).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        // serde names a missing field in its message; surface it as the field.
        match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(missing) => {
                let full = if field == "." {
                    missing.to_string()
                } else {
                    format!("{field}.{missing}")
                };
                invalid(&full, format!("`{full}` is required"))
            }
            None => invalid(&field, message),
        }
    })?;
    match (body.send_to_bot, body.send_to_inlet) {
        (Some(_), Some(_)) => Err(invalid(
            "sendToBot",
            "a request carries either `sendToBot` or `sendToInlet`, not both",
        )),
        (None, None) => Err(invalid(
            "sendToBot",
            "one of `sendToBot` or `sendToInlet` is required",
        )),
        (None, Some(_)) if inlet => Err(invalid(
            "sendToInlet",
            "`sendToInlet` is accepted on outlet channels only",
        )),
        (Some(stb), None) => {
            let ev = stb.message_event;
            if inlet && body.profile.is_none() {
                return Err(invalid("profile", "`profile` is required"));
            }
            let external_id = body.external_id.filter(|s| !s.is_empty());
            if inlet && external_id.is_none() {
                return Err(invalid("externalId", "`externalId` is required"));
            }
            if ev.from.is_empty() {
                return Err(invalid(
                    "sendToBot.messageEvent.from",
                    "`sendToBot.messageEvent.from` must not be empty",
                ));
            }
            let timestamp_ms = match ev.timestamp {
                StellaTimestamp::Number(n) => n,
                StellaTimestamp::Text(s) => s.trim().parse::<i64>().map_err(|_| {
                    invalid(
                        "sendToBot.messageEvent.timestamp",
                        "`timestamp` must be a number (ms since epoch)",
                    )
                })?,
            };
            // Epoch seconds (10 digits) are normalized to ms.
            let timestamp_ms = if timestamp_ms < 100_000_000_000 {
                timestamp_ms * 1000
            } else {
                timestamp_ms
            };
            let content = content_from_message_event(&ev.kind, &ev.data)?;
            let source_message_id = ev
                .message_id
                .or_else(|| {
                    ev.data
                        .get("messageId")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .filter(|id| !id.trim().is_empty());
            Ok(WebhookRequest::SendToBot {
                external_id,
                profile: body.profile.unwrap_or_default(),
                from: ev.from,
                to: ev.to.filter(|s| !s.is_empty()),
                content,
                source_message_id,
                timestamp_ms,
            })
        }
        (None, Some(sti)) => {
            if sti.member_id.is_empty() {
                return Err(invalid(
                    "sendToInlet.memberId",
                    "`sendToInlet.memberId` must not be empty",
                ));
            }
            let source_message_id = sti
                .response
                .get("messageId")
                .and_then(Value::as_str)
                .filter(|id| !id.trim().is_empty())
                .map(str::to_string);
            let content = content_from_response(&Value::Object(sti.response))
                .map_err(|m| invalid("sendToInlet.response", m))?;
            Ok(WebhookRequest::SendToInlet {
                member_id: sti.member_id,
                content,
                source_message_id,
                agent_name: sti
                    .agent_name
                    .map(|n| n.trim().chars().take(100).collect())
                    .unwrap_or_default(),
            })
        }
    }
}

/// The path of the first string (value or key) holding NUL: Postgres cannot store it in
/// text or JSON, so it is refused at the edge rather than accepted and never storable.
fn nul_field(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
            ".".into()
        } else {
            path.into()
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_field(v, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\u0000")))
            } else {
                nul_field(v, &join(k))
            }
        }),
        _ => None,
    }
}

/// A customer message event becomes content whose raw form is a Stella response object
/// (`{"type": …, …data}`), so relaying it to an outlet loses nothing.
fn content_from_message_event(
    kind: &str,
    data: &Map<String, Value>,
) -> Result<Content, InvalidRequest> {
    let text = data.get("text").and_then(Value::as_str);
    let payload = data.get("payload").and_then(Value::as_str);
    let kind_upper = kind.to_ascii_uppercase();
    let typed = match kind_upper.as_str() {
        "TEXT" => content::Kind::Text(Text {
            text: text
                .ok_or_else(|| {
                    invalid(
                        "sendToBot.messageEvent.data.text",
                        "a TEXT message needs `data.text`",
                    )
                })?
                .to_string(),
        }),
        "PAYLOAD" => content::Kind::Postback(Postback {
            payload: payload
                .ok_or_else(|| {
                    invalid(
                        "sendToBot.messageEvent.data.payload",
                        "a PAYLOAD message needs `data.payload`",
                    )
                })?
                .to_string(),
            title: text.unwrap_or_default().to_string(),
        }),
        "" => {
            return Err(invalid(
                "sendToBot.messageEvent.type",
                "`type` must not be empty",
            ));
        }
        other => content::Kind::Unsupported(Unsupported {
            original_type: other.to_string(),
        }),
    };
    let mut raw = Map::new();
    raw.insert("type".into(), Value::String(kind_upper));
    raw.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(content_with_raw(typed, &Value::Object(raw)))
}

fn json_object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

fn bot_meta(member: &Member) -> Value {
    json!({
        "liveChat": member.live_chat,
        "tempData": json_object(&member.temp_data_json),
    })
}

/// Send API body: `{response, member: {externalId, profile, meta, botMeta}, channel: {info}}`
/// plus `conversationId` when the response goes to a conversation.
pub fn send_body(
    content: &Content,
    member: &Member,
    channel_info: &Map<String, Value>,
    conversation_id: Option<&str>,
) -> Value {
    let mut body = json!({
        "response": content_to_response(content),
        "member": {
            "externalId": member.external_id,
            "profile": json_object(&member.profile_json),
            "meta": json_object(&member.meta_json),
            "botMeta": bot_meta(member),
        },
        "channel": { "info": channel_info },
    });
    if let Some(id) = conversation_id {
        body["conversationId"] = Value::String(id.to_string());
    }
    body
}

/// Relay API body: `{response, member: {_id, profile, meta, botMeta: {liveChat, tempData}},
/// channel: {info}}` (channel = the outlet), plus Handoff's `conversationId`.
pub fn relay_body(
    content: &Content,
    member: &Member,
    outlet_info: &Map<String, Value>,
    conversation_id: &str,
) -> Value {
    json!({
        "response": content_to_response(content),
        "member": {
            "_id": member.id,
            "profile": json_object(&member.profile_json),
            "meta": json_object(&member.meta_json),
            "botMeta": bot_meta(member),
        },
        "channel": { "info": outlet_info },
        "conversationId": conversation_id,
    })
}

/// A message of a bot conversation for agents watching it (`liveChat.monitor`): the Relay
/// API body without a `conversationId` (no live chat stands behind it), with `mode: "bot"`
/// and who said it (`author`: `customer`, `bot` or `agent`).
pub fn watched_body(
    content: &Content,
    member: &Member,
    outlet_info: &Map<String, Value>,
    author: &str,
) -> Value {
    let mut body = relay_body(content, member, outlet_info, "");
    if let Value::Object(b) = &mut body {
        b.remove("conversationId");
        b.insert("mode".into(), json!("bot"));
        b.insert("author".into(), json!(author));
    }
    body
}

/// Livechat API body: `{member: {_id, profile, meta, botMeta}, assignmentDetails: {summary,
/// groupName}, chatHistoryURL, meta}`; `meta` carries Handoff's `conversationId`, the
/// label and whatever meta the trigger supplied.
pub fn livechat_body(
    member: &Member,
    details: &HandoffDetails,
    chat_history_url: &str,
    conversation_id: &str,
) -> Value {
    let mut meta = json_object(&details.meta_json);
    if let Value::Object(m) = &mut meta {
        m.insert("conversationId".into(), json!(conversation_id));
        if !details.label.is_empty() {
            m.insert("label".into(), json!(details.label));
        }
        m.insert("trigger".into(), json!(details.trigger));
    }
    json!({
        "member": {
            "_id": member.id,
            "externalId": member.external_id,
            "profile": json_object(&member.profile_json),
            "meta": json_object(&member.meta_json),
            "botMeta": bot_meta(member),
        },
        "assignmentDetails": {
            "summary": details.summary,
            "groupName": details.group_name,
        },
        "chatHistoryURL": chat_history_url,
        "meta": meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inlet_body() -> Value {
        json!({
            "profile": {"firstName": "Ada"},
            "externalId": "u-1",
            "sendToBot": {"messageEvent": {
                "from": "u-1", "to": "web", "type": "TEXT",
                "data": {"text": "hello"}, "timestamp": 1_599_536_864_000_i64
            }}
        })
    }

    #[test]
    fn a_text_message_event_parses() {
        let req = parse_webhook_request(&inlet_body(), true).unwrap();
        let WebhookRequest::SendToBot {
            content,
            timestamp_ms,
            ..
        } = req
        else {
            panic!("expected sendToBot")
        };
        assert_eq!(timestamp_ms, 1_599_536_864_000);
        assert!(matches!(content.kind, Some(content::Kind::Text(ref t)) if t.text == "hello"));
        assert_eq!(
            content_to_response(&content),
            json!({"type": "TEXT", "text": "hello"})
        );
    }

    #[test]
    fn nul_anywhere_in_the_body_is_refused_naming_its_field() {
        let mut body = inlet_body();
        body["sendToBot"]["messageEvent"]["data"]["text"] = json!("a\u{0}b");
        let err = parse_webhook_request(&body, true).unwrap_err();
        assert_eq!(err.field, "sendToBot.messageEvent.data.text");
        let mut body = inlet_body();
        body["profile"]["tags"] = json!(["ok", "n\u{0}"]);
        let err = parse_webhook_request(&body, true).unwrap_err();
        assert_eq!(err.field, "profile.tags[1]");
    }

    #[test]
    fn an_empty_message_id_is_no_id() {
        let mut body = inlet_body();
        body["sendToBot"]["messageEvent"]["messageId"] = json!("");
        let WebhookRequest::SendToBot {
            source_message_id, ..
        } = parse_webhook_request(&body, true).unwrap()
        else {
            panic!("expected sendToBot")
        };
        assert_eq!(source_message_id, None);
    }

    #[test]
    fn a_missing_nested_field_is_named() {
        let mut body = inlet_body();
        body["sendToBot"]["messageEvent"]
            .as_object_mut()
            .unwrap()
            .remove("from");
        let err = parse_webhook_request(&body, true).unwrap_err();
        assert_eq!(err.field, "sendToBot.messageEvent.from");
    }

    #[test]
    fn a_missing_external_id_is_named_on_inlets() {
        let mut body = inlet_body();
        body.as_object_mut().unwrap().remove("externalId");
        assert_eq!(
            parse_webhook_request(&body, true).unwrap_err().field,
            "externalId"
        );
    }

    #[test]
    fn seconds_as_strings_are_normalized_to_ms() {
        let mut body = inlet_body();
        body["sendToBot"]["messageEvent"]["timestamp"] = json!("1599536864");
        let WebhookRequest::SendToBot { timestamp_ms, .. } =
            parse_webhook_request(&body, true).unwrap()
        else {
            panic!()
        };
        assert_eq!(timestamp_ms, 1_599_536_864_000);
    }
}

//! Selarti's webhook to the normalized model, and a customer message to Selarti's send body.

use handoff_proto::v1::content::Kind;
use handoff_proto::{BotReply, Content, HandoffDetails, Text};
use serde_json::{Map, Value, json};

use super::edge::WebhookError;
use super::settings::SelartiSettings;
use super::wire::Webhook;

/// What one webhook means for Handoff.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookUpdate {
    /// Selarti's message id: the same id twice is one effect.
    pub message_id: String,
    /// `external_chat_id`: the `chat_id` Handoff sent, i.e. the member's Handoff id.
    pub member_id: String,
    pub reply: BotReply,
}

/// Parses an "All messages" webhook body; the error names the field.
pub fn parse_webhook(body: &[u8]) -> Result<WebhookUpdate, WebhookError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let hook: Webhook = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." || !e.inner().is_data() {
            WebhookError::Malformed(e.inner().to_string())
        } else {
            WebhookError::InvalidField {
                field,
                message: e.inner().to_string(),
            }
        }
    })?;
    let required = |value: &Option<String>, field: &str| {
        value.clone().ok_or_else(|| WebhookError::InvalidField {
            field: field.into(),
            message: "required".into(),
        })
    };
    // Postgres stores no NUL: refused here, by name, rather than parked later.
    let text_fields = [
        ("message_text", &hook.message_text),
        ("title", &hook.title),
        ("thread_id", &hook.thread_id),
    ];
    let nul = text_fields
        .into_iter()
        .find(|(_, v)| v.as_deref().is_some_and(|t| t.contains('\0')))
        .map(|(field, _)| field)
        .or_else(|| {
            [("contacts", &hook.contacts), ("interest", &hook.interest)]
                .into_iter()
                .find(|(_, v)| has_nul(v))
                .map(|(field, _)| field)
        });
    if let Some(field) = nul {
        return Err(WebhookError::InvalidField {
            field: field.into(),
            message: "contains a NUL character".into(),
        });
    }
    let message_id = required(&hook.message_id, "message_id")?;
    let member_id = required(&hook.external_chat_id, "external_chat_id")?;
    let text = hook.message_text.clone().unwrap_or_default();
    let said = || {
        (!text.trim().is_empty())
            .then(|| Content {
                kind: Some(Kind::Text(Text { text: text.clone() })),
                raw_json: String::new(),
            })
            .into_iter()
            .collect::<Vec<_>>()
    };
    let (responses, author) = match hook.message_type.as_deref() {
        Some("bot") => (said(), ""),
        // A human answering inside Selarti's own panel.
        Some("operator") => (said(), "agent"),
        // The echo of what Handoff sent: recorded (its fields below), not delivered.
        Some("user") | None => (Vec::new(), ""),
        Some(other) => {
            return Err(WebhookError::InvalidField {
                field: "message_type".into(),
                message: format!("`{other}` is not bot, operator or user"),
            });
        }
    };
    let handoff = (hook.operator == Some(true)).then(|| {
        let mut meta = Map::new();
        meta.insert("source".into(), json!("selarti"));
        if let Some(url) = &hook.panel_url {
            meta.insert("panelUrl".into(), json!(url));
        }
        if let Some(url) = &hook.share_url {
            meta.insert("shareUrl".into(), json!(url));
        }
        if let Some(thread) = &hook.thread_id {
            meta.insert("threadId".into(), json!(thread));
        }
        HandoffDetails {
            // Left empty: the router summarises the dialog it holds.
            summary: String::new(),
            meta_json: Value::Object(meta).to_string(),
            trigger: "bot".into(),
            ..Default::default()
        }
    });
    let mut profile = Map::new();
    match &hook.contacts {
        Value::Null => {}
        Value::String(s) if s.trim().is_empty() => {}
        Value::Object(o) if o.is_empty() => {}
        contacts => {
            profile.insert("contacts".into(), contacts.clone());
        }
    }
    // Only ever set, never unset: an echo arriving late (webhooks come out of order) still
    // carries the `false` of before the customer gave a contact.
    if hook.get_contact == Some(true) {
        profile.insert("getContact".into(), json!(true));
    }
    let mut meta = Map::new();
    if !hook.interest.is_null() {
        meta.insert("interest".into(), hook.interest.clone());
    }
    for (key, value) in [("success", hook.success), ("isBot", hook.is_bot)] {
        if let Some(v) = value {
            meta.insert(key.into(), json!(v));
        }
    }
    for (key, value) in [("title", &hook.title), ("threadId", &hook.thread_id)] {
        if let Some(v) = value {
            meta.insert(key.into(), json!(v));
        }
    }
    let object = |m: Map<String, Value>| {
        if m.is_empty() {
            String::new()
        } else {
            Value::Object(m).to_string()
        }
    };
    Ok(WebhookUpdate {
        message_id,
        member_id,
        reply: BotReply {
            responses,
            handoff,
            close: hook.close == Some(true),
            agent_conversation_id: String::new(),
            author: author.into(),
            profile_json: object(profile),
            meta_json: object(meta),
            // Selarti answers on its own, not in the call that asked: nothing says which
            // epoch it answers, so only who owns the member now decides.
            epoch: None,
        },
    })
}

fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// The text Selarti is given for a customer's message (it takes text only).
fn text_of(content: &Content) -> String {
    match &content.kind {
        Some(Kind::Text(t)) => t.text.clone(),
        Some(Kind::Postback(p)) if !p.title.is_empty() => p.title.clone(),
        Some(Kind::Postback(p)) => p.payload.clone(),
        Some(Kind::QuickReplies(q)) => q.text.clone(),
        Some(Kind::Buttons(b)) => b.text.clone(),
        Some(Kind::Media(m)) if !m.caption.is_empty() => format!("{} {}", m.caption, m.url),
        Some(Kind::Media(m)) => m.url.clone(),
        Some(Kind::Location(l)) => format!("{} ({}, {})", l.title, l.latitude, l.longitude)
            .trim()
            .to_string(),
        Some(Kind::Carousel(c)) => c
            .cards
            .first()
            .map(|card| card.title.clone())
            .unwrap_or_default(),
        Some(Kind::Unsupported(_)) | None => String::new(),
    }
}

/// The send-message body for a customer's message, or `None` when it carries no text.
/// `chat_id` is the member's Handoff id: Selarti keeps one dialog context per chat id, and
/// echoes it back as `external_chat_id`.
pub fn send_body(settings: &SelartiSettings, member_id: &str, content: &Content) -> Option<Value> {
    let text = text_of(content);
    if text.trim().is_empty() {
        return None;
    }
    Some(json!({
        "task": settings.task_id,
        "chat_id": member_id,
        "message": text,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<WebhookUpdate, WebhookError> {
        parse_webhook(v.to_string().as_bytes())
    }

    fn base() -> Value {
        json!({"wh_type": "all_messages", "message_id": "m1", "external_chat_id": "c1",
               "message_type": "bot", "message_text": "Hello!", "unknown_field": 1})
    }

    #[test]
    fn a_bot_message_becomes_one_response_from_the_bot() {
        let u = parse(base()).unwrap();
        assert_eq!(u.message_id, "m1");
        assert_eq!(u.member_id, "c1");
        assert_eq!(u.reply.responses.len(), 1);
        assert_eq!(u.reply.author, "");
        assert!(u.reply.handoff.is_none());
    }

    #[test]
    fn every_seed_field_is_read_and_yes_no_words_are_booleans() {
        let mut v = base();
        let extra = json!({"channel_id": 4, "close": "да", "company_id": "5", "contacts":
            {"phone": "+1"}, "get_contact": "yes", "interest": "high", "is_bot": "нет",
            "manager_id": "6", "operator": "yes", "panel_url": "https://p", "share_url":
            "https://s", "success": true, "task_id": "7", "thread_id": "8", "title": "Ann"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let u = parse(v).unwrap();
        assert!(u.reply.close);
        let h = u.reply.handoff.unwrap();
        let meta: Value = serde_json::from_str(&h.meta_json).unwrap();
        assert_eq!(meta["panelUrl"], "https://p");
        assert_eq!(meta["shareUrl"], "https://s");
        let profile: Value = serde_json::from_str(&u.reply.profile_json).unwrap();
        assert_eq!(profile["contacts"]["phone"], "+1");
        assert_eq!(profile["getContact"], true);
        let meta: Value = serde_json::from_str(&u.reply.meta_json).unwrap();
        assert_eq!(meta["interest"], "high");
        assert_eq!(meta["isBot"], false);
        assert_eq!(meta["title"], "Ann");
        assert_eq!(meta["threadId"], "8");
    }

    #[test]
    fn an_operator_message_is_authored_by_an_agent_and_a_user_echo_delivers_nothing() {
        let mut v = base();
        v["message_type"] = json!("operator");
        assert_eq!(parse(v.clone()).unwrap().reply.author, "agent");
        v["message_type"] = json!("user");
        assert!(parse(v).unwrap().reply.responses.is_empty());
    }

    #[test]
    fn malformed_fields_are_named() {
        let mut v = base();
        v["operator"] = json!("maybe");
        assert!(
            matches!(parse(v), Err(WebhookError::InvalidField { field, .. }) if field == "operator")
        );
        let mut v = base();
        v.as_object_mut().unwrap().remove("external_chat_id");
        assert!(
            matches!(parse(v), Err(WebhookError::InvalidField { field, .. }) if field == "external_chat_id")
        );
        let mut v = base();
        v["message_type"] = json!("robot");
        assert!(
            matches!(parse(v), Err(WebhookError::InvalidField { field, .. }) if field == "message_type")
        );
        assert!(matches!(
            parse_webhook(b"{not json"),
            Err(WebhookError::Malformed(_))
        ));
    }
}

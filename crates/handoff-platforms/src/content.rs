//! Handoff's JSON form of normalized content, shared by every platform and by the router's
//! transcripts: the Stella response object (`{"type": "TEXT", "text": …}`, `BUTTON`,
//! `CAROUSEL`, …). It is the custom platform's own wire form and the webhook-bot protocol's,
//! which is why it was chosen; a platform with another format converts to `Content` in its
//! own `transform` and never needs this module.

use handoff_proto::v1::{button, content, media};
use handoff_proto::{
    Button, Buttons, Card, Carousel, Choice, Content, Media, Postback, QuickReplies, Text,
    Unsupported,
};
use serde_json::{Value, json};

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn buttons_of(v: &Value) -> Vec<Button> {
    v.get("buttons")
        .and_then(Value::as_array)
        .map(|bs| {
            bs.iter()
                .map(|b| {
                    let (kind, value) = match str_of(b, "type") {
                        "web_url" | "url" => (button::Kind::Url, str_of(b, "url")),
                        "phone_number" | "call" => (button::Kind::Call, str_of(b, "payload")),
                        _ => (button::Kind::Postback, str_of(b, "payload")),
                    };
                    Button {
                        kind: kind as i32,
                        title: str_of(b, "title").to_string(),
                        value: value.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A Stella response object (bot answer, agent reply) into normalized content. Unknown
/// types are kept as `Unsupported` with the whole object in `raw_json`.
pub fn content_from_response(v: &Value) -> Result<Content, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "a response must be a JSON object".to_string())?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| "a response needs a string `type`".to_string())?
        .to_ascii_uppercase();
    let typed = match kind.as_str() {
        "TEXT" => {
            let text = str_of(v, "text").to_string();
            match v.get("quickReplies").and_then(Value::as_array) {
                Some(qrs) if !qrs.is_empty() => content::Kind::QuickReplies(QuickReplies {
                    text,
                    options: qrs
                        .iter()
                        .map(|q| Choice {
                            title: str_of(q, "title").to_string(),
                            payload: str_of(q, "payload").to_string(),
                        })
                        .collect(),
                }),
                _ => content::Kind::Text(Text { text }),
            }
        }
        "PAYLOAD" => content::Kind::Postback(Postback {
            payload: str_of(v, "payload").to_string(),
            title: str_of(v, "text").to_string(),
        }),
        "IMAGE" | "AUDIO" | "VIDEO" | "FILE" | "STICKER" => content::Kind::Media(Media {
            kind: match kind.as_str() {
                "IMAGE" => media::Kind::Image,
                "AUDIO" => media::Kind::Audio,
                "VIDEO" => media::Kind::Video,
                "FILE" => media::Kind::File,
                _ => media::Kind::Sticker,
            } as i32,
            url: str_of(v, "url").to_string(),
            caption: str_of(v, "text").to_string(),
        }),
        "BUTTON" => content::Kind::Buttons(Buttons {
            text: str_of(v, "text").to_string(),
            buttons: buttons_of(v),
        }),
        "CAROUSEL" => content::Kind::Carousel(Carousel {
            cards: v
                .get("carousel")
                .and_then(Value::as_array)
                .map(|cards| {
                    cards
                        .iter()
                        .map(|c| Card {
                            title: str_of(c, "title").to_string(),
                            subtitle: str_of(c, "subtitle").to_string(),
                            image_url: str_of(c, "image_url").to_string(),
                            buttons: buttons_of(c),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }),
        other => content::Kind::Unsupported(Unsupported {
            original_type: other.to_string(),
        }),
    };
    Ok(content_with_raw(typed, v))
}

/// Content of `kind` whose platform form is `raw`. The raw form is kept (`raw_json`) only
/// when it says more than the typed form renders to, which loses nothing: a plain text
/// then travels once, not twice, on every bus hop and outbox row after the edge.
pub fn content_with_raw(kind: content::Kind, raw: &Value) -> Content {
    let raw_json = if typed_to_response(Some(&kind)) == *raw {
        String::new()
    } else {
        raw.to_string()
    };
    Content {
        kind: Some(kind),
        raw_json,
    }
}

/// Normalized content as a Stella response object: the original object when there is one
/// (lossless), otherwise built from the typed form.
pub fn content_to_response(content: &Content) -> Value {
    if !content.raw_json.is_empty()
        && let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(&content.raw_json)
    {
        return v;
    }
    typed_to_response(content.kind.as_ref())
}

fn typed_to_response(kind: Option<&content::Kind>) -> Value {
    let button = |b: &Button| match button::Kind::try_from(b.kind).unwrap_or_default() {
        button::Kind::Url => json!({"type": "web_url", "title": b.title, "url": b.value}),
        button::Kind::Call => json!({"type": "phone_number", "title": b.title, "payload": b.value}),
        _ => json!({"type": "postback", "title": b.title, "payload": b.value}),
    };
    match kind {
        Some(content::Kind::Text(t)) => json!({"type": "TEXT", "text": t.text}),
        Some(content::Kind::Postback(p)) => {
            json!({"type": "PAYLOAD", "payload": p.payload, "text": p.title})
        }
        Some(content::Kind::QuickReplies(q)) => json!({
            "type": "TEXT",
            "text": q.text,
            "quickReplies": q.options.iter().map(|o| json!({
                "content_type": "text", "title": o.title, "payload": o.payload
            })).collect::<Vec<_>>(),
        }),
        Some(content::Kind::Buttons(b)) => json!({
            "type": "BUTTON",
            "text": b.text,
            "buttons": b.buttons.iter().map(button).collect::<Vec<_>>(),
        }),
        Some(content::Kind::Carousel(c)) => json!({
            "type": "CAROUSEL",
            "carousel": c.cards.iter().map(|card| json!({
                "title": card.title,
                "subtitle": card.subtitle,
                "image_url": card.image_url,
                "buttons": card.buttons.iter().map(button).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Some(content::Kind::Media(m)) => {
            let kind = match media::Kind::try_from(m.kind).unwrap_or_default() {
                media::Kind::Audio => "AUDIO",
                media::Kind::Video => "VIDEO",
                media::Kind::File => "FILE",
                media::Kind::Sticker => "STICKER",
                _ => "IMAGE",
            };
            json!({"type": kind, "url": m.url, "text": m.caption})
        }
        Some(content::Kind::Location(l)) => json!({
            "type": "TEXT",
            "text": format!("{} ({}, {})", l.title, l.latitude, l.longitude),
        }),
        Some(content::Kind::Unsupported(u)) => json!({"type": u.original_type}),
        None => json!({"type": "TEXT", "text": ""}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_replies_round_trip_through_typed_content() {
        let v = json!({"type": "TEXT", "text": "Pick", "quickReplies": [
            {"content_type": "text", "title": "Yes", "payload": "Y"}]});
        let mut c = content_from_response(&v).unwrap();
        assert!(
            matches!(c.kind, Some(content::Kind::QuickReplies(ref q)) if q.options[0].payload == "Y")
        );
        c.raw_json.clear();
        assert_eq!(content_to_response(&c), v);
    }

    #[test]
    fn a_plain_text_travels_once_and_anything_more_keeps_the_original_object() {
        let plain = json!({"type": "TEXT", "text": "Hello"});
        let c = content_from_response(&plain).unwrap();
        assert_eq!(c.raw_json, "", "the typed form says it all");
        assert_eq!(content_to_response(&c), plain);

        let more = json!({"type": "TEXT", "text": "Hello", "metadata": {"intent": "greet"}});
        let c = content_from_response(&more).unwrap();
        assert!(matches!(c.kind, Some(content::Kind::Text(ref t)) if t.text == "Hello"));
        assert_eq!(
            content_to_response(&c),
            more,
            "nothing the bot sent is dropped"
        );
        let lower = json!({"type": "text", "text": "Hello"});
        assert_eq!(
            content_to_response(&content_from_response(&lower).unwrap()),
            lower
        );
    }

    #[test]
    fn unknown_response_types_are_kept_whole() {
        let v = json!({"type": "LIST", "items": [1, 2]});
        let c = content_from_response(&v).unwrap();
        assert!(
            matches!(c.kind, Some(content::Kind::Unsupported(ref u)) if u.original_type == "LIST")
        );
        assert_eq!(content_to_response(&c), v);
    }
}

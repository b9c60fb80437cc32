//! Handoff's normalized model to the webhook-bot request, and the bot's answer back.

use handoff_proto::{Content, HandoffDetails, Member};
use serde_json::{Map, Value, json};

use super::wire::WireAnswer;
use crate::content::{content_from_response, content_to_response};

/// Why Handoff is calling the bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotEvent {
    /// A customer message.
    Message,
    /// A customer message that could not be relayed to the live chat (`relayMessageError`).
    RelayFailed,
    /// The handoff the bot asked for failed (`handoffError`).
    HandoffFailed,
    /// An agent command from the live chat (`conversationId` set).
    AgentCommand,
    /// A live chat ended (agent command, idle timeout); the member is the bot's again
    /// (`liveChatEnded.reason`).
    LiveChatEnded,
}

impl BotEvent {
    fn as_str(self) -> &'static str {
        match self {
            BotEvent::Message => "message",
            BotEvent::RelayFailed => "relay_failed",
            BotEvent::HandoffFailed => "handoff_failed",
            BotEvent::AgentCommand => "agent_command",
            BotEvent::LiveChatEnded => "live_chat_ended",
        }
    }
}

/// Everything the bot is told about one message.
pub struct BotRequest<'a> {
    pub event: BotEvent,
    pub id: &'a str,
    pub org: &'a str,
    pub bot_channel: &'a str,
    pub member: &'a Member,
    pub content: &'a Content,
    pub conversation_id: Option<&'a str>,
    /// JSON object describing a failure (relay or handoff), when there is one.
    pub error_json: Option<&'a str>,
}

fn object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

pub fn request_body(r: &BotRequest<'_>) -> Value {
    let mut message = content_to_response(r.content);
    let mut body = json!({
        "event": r.event.as_str(),
        "id": r.id,
        "org": r.org,
        "botChannel": r.bot_channel,
        "inletChannel": r.member.inlet_channel,
        "member": {
            "_id": r.member.id,
            "externalId": r.member.external_id,
            "profile": object(&r.member.profile_json),
            "meta": object(&r.member.meta_json),
            "botMeta": {
                "liveChat": r.member.live_chat,
                "tempData": object(&r.member.temp_data_json),
            },
        },
    });
    if let Some(id) = r.conversation_id {
        body["conversationId"] = json!(id);
    }
    if let Some(err) = r.error_json {
        let key = match r.event {
            BotEvent::HandoffFailed => "handoffError",
            BotEvent::LiveChatEnded => "liveChatEnded",
            _ => "relayMessageError",
        };
        // Stella puts relayMessageError on the message event itself; so do we.
        message[key] = object(err);
        body[key] = object(err);
    }
    body["message"] = message;
    body
}

/// What the bot answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BotAnswer {
    pub responses: Vec<Content>,
    pub handoff: Option<HandoffDetails>,
    pub close: bool,
}

/// Parses a bot's HTTP answer body.
pub fn parse_answer(body: &[u8]) -> Result<BotAnswer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(BotAnswer::default());
    }
    let wire: WireAnswer =
        serde_json::from_slice(body).map_err(|e| format!("bot answer is not valid: {e}"))?;
    let (responses, handoff, close) = match wire {
        WireAnswer::Full {
            responses,
            handoff,
            close,
        } => (responses, handoff, close),
        WireAnswer::Bare(responses) => (responses, None, false),
    };
    let responses = responses
        .iter()
        .enumerate()
        .map(|(i, r)| content_from_response(r).map_err(|e| format!("responses[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(BotAnswer {
        responses,
        handoff: handoff.map(|h| HandoffDetails {
            summary: h.summary,
            group_name: h.group_name,
            label: h.label,
            meta_json: Value::Object(h.meta).to_string(),
            trigger: "bot".into(),
        }),
        close,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_answer_parses_with_handoff() {
        let a = parse_answer(
            br#"{"responses":[{"type":"TEXT","text":"One moment"}],
                 "handoff":{"summary":"wants a refund","groupName":"billing"}}"#,
        )
        .unwrap();
        assert_eq!(a.responses.len(), 1);
        let h = a.handoff.unwrap();
        assert_eq!(h.group_name, "billing");
        assert_eq!(h.trigger, "bot");
    }

    #[test]
    fn a_bare_array_and_an_empty_body_are_accepted() {
        assert_eq!(
            parse_answer(br#"[{"type":"TEXT","text":"hi"}]"#)
                .unwrap()
                .responses
                .len(),
            1
        );
        assert_eq!(parse_answer(b"").unwrap(), BotAnswer::default());
    }

    #[test]
    fn a_response_without_type_is_an_error_naming_it() {
        let err = parse_answer(br#"{"responses":[{"text":"hi"}]}"#).unwrap_err();
        assert!(err.contains("responses[0]"), "{err}");
    }
}

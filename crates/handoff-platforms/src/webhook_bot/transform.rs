//! Handoff's normalized model to the webhook-bot request, and the bot's answer back.

use handoff_proto::v1::send_to_bot::Reason;
use handoff_proto::{Content, HandoffDetails, Member, Trouble};
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
    /// A human took the member over without being asked (`liveChatStarted.reason`:
    /// `agent_takeover`); the bot's answers are not sent to the customer meanwhile.
    LiveChatStarted,
}

impl BotEvent {
    fn as_str(self) -> &'static str {
        match self {
            BotEvent::Message => "message",
            BotEvent::RelayFailed => "relay_failed",
            BotEvent::HandoffFailed => "handoff_failed",
            BotEvent::AgentCommand => "agent_command",
            BotEvent::LiveChatEnded => "live_chat_ended",
            BotEvent::LiveChatStarted => "live_chat_started",
        }
    }
}

impl BotEvent {
    /// Why a `SendToBot` command calls the bot.
    pub fn of(reason: Option<&Reason>) -> Self {
        match reason {
            None => BotEvent::Message,
            Some(Reason::RelayFailed(_)) => BotEvent::RelayFailed,
            Some(Reason::HandoffFailed(_)) => BotEvent::HandoffFailed,
            Some(Reason::LiveChatEnded(_)) => BotEvent::LiveChatEnded,
            Some(Reason::LiveChatStarted(_)) => BotEvent::LiveChatStarted,
            Some(Reason::AgentConversationId(_)) => BotEvent::AgentCommand,
        }
    }
}

/// Everything the bot is told about one message.
pub struct BotRequest<'a> {
    pub id: &'a str,
    pub org: &'a str,
    pub bot_channel: &'a str,
    pub member: &'a Member,
    pub content: &'a Content,
    /// Why the bot hears of it; `None`: a customer's message.
    pub reason: Option<&'a Reason>,
    /// The customer's messages this one joins (a coalesced turn), by their platform ids.
    pub message_ids: &'a [String],
}

fn object(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

/// A trouble as the bot's wire has it: `reason`, and `status` and `message` when known.
fn trouble(t: &Trouble) -> Value {
    let mut v = json!({"reason": t.reason});
    if let Some(status) = t.status {
        v["status"] = json!(status);
    }
    if !t.message.is_empty() {
        v["message"] = json!(t.message);
    }
    if !t.next_open_at.is_empty() {
        v["nextOpenAt"] = json!(t.next_open_at);
    }
    v
}

pub fn request_body(r: &BotRequest<'_>) -> Value {
    let mut message = content_to_response(r.content);
    let mut body = json!({
        "event": BotEvent::of(r.reason).as_str(),
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
    let (key, what) = match r.reason {
        None => (None, None),
        Some(Reason::AgentConversationId(id)) => {
            body["conversationId"] = json!(id);
            (None, None)
        }
        Some(Reason::RelayFailed(t)) => (Some("relayMessageError"), Some(trouble(t))),
        Some(Reason::HandoffFailed(t)) => (Some("handoffError"), Some(trouble(t))),
        Some(Reason::LiveChatEnded(t)) => (Some("liveChatEnded"), Some(trouble(t))),
        Some(Reason::LiveChatStarted(t)) => (Some("liveChatStarted"), Some(trouble(t))),
    };
    if let (Some(key), Some(what)) = (key, what) {
        // Stella puts relayMessageError on the message event itself; so do we.
        message[key] = what.clone();
        body[key] = what;
    }
    if !r.message_ids.is_empty() {
        body["messageIds"] = json!(r.message_ids);
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

    #[test]
    fn each_reason_reaches_the_bot_as_its_event_and_key_as_stella_names_them() {
        let member = Member {
            id: "m-1".into(),
            inlet_channel: "web".into(),
            ..Default::default()
        };
        let content = Content::default();
        let body = |reason: Option<Reason>| {
            request_body(&BotRequest {
                id: "e-1",
                org: "acme",
                bot_channel: "bot",
                member: &member,
                content: &content,
                reason: reason.as_ref(),
                message_ids: &[],
            })
        };
        let relay = Trouble {
            reason: "relay_failed".into(),
            status: Some(503),
            ..Default::default()
        };
        let refused = Trouble {
            reason: "livechat_failed".into(),
            status: Some(422),
            message: "no agents".into(),
            ..Default::default()
        };
        let ended = Trouble {
            reason: "agent_ended".into(),
            ..Default::default()
        };

        let message = body(None);
        let relayed = body(Some(Reason::RelayFailed(relay)));
        let handoff = body(Some(Reason::HandoffFailed(refused)));
        let over = body(Some(Reason::LiveChatEnded(ended)));
        let command = body(Some(Reason::AgentConversationId("c-9".into())));

        assert_eq!(message["event"], "message");
        assert!(message.get("conversationId").is_none());
        assert_eq!(relayed["event"], "relay_failed");
        assert_eq!(
            relayed["relayMessageError"],
            json!({"reason": "relay_failed", "status": 503})
        );
        assert_eq!(relayed["message"]["relayMessageError"]["status"], 503);
        assert_eq!(handoff["event"], "handoff_failed");
        assert_eq!(
            handoff["handoffError"],
            json!({"reason": "livechat_failed", "status": 422, "message": "no agents"})
        );
        assert_eq!(over["event"], "live_chat_ended");
        assert_eq!(over["liveChatEnded"], json!({"reason": "agent_ended"}));
        assert_eq!(command["event"], "agent_command");
        assert_eq!(command["conversationId"], "c-9");
    }
}

//! Server frames to what the agent service acts on; visitor messages to normalized content;
//! normalized content to the mutation that shows it to the visitor.
//!
//! Text goes into queries as GraphQL string literals escaped per the GraphQL spec: the
//! spec's proven path (every public client inlines; variables are documented by seed 002
//! but the schema's input type names, which variables must declare, are not public).

use handoff_proto::v1::{button, content};
use handoff_proto::{Choice, Content, Postback, Text};
use serde_json::{Value, json};

use super::wire::{ActivityData, DepartmentsData, GraphqlError, MessageData, ServerFrame};

/// How seed 002 says an error may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorKind {
    /// `RATE_LIMITED`: retry, with exponential backoff.
    RateLimited,
    /// `GRAPHQL_SUB_START_ERROR`: retry 3–5 times within 30 s, then recycle the session.
    SubscriptionStart,
    /// `UNAUTHORIZED`, `FORBIDDEN`, `MAX_SUB`, `GRAPHQL_EXEC_ERROR`: never retried as is.
    Fatal,
    /// A protocol error (`payload.body`) or an unnamed one: the service may be down.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameError {
    pub kind: ErrorKind,
    /// Zendesk's error name (`RATE_LIMITED`, …), or empty.
    pub name: String,
    pub message: String,
    /// Zendesk's UUID for the failure, to quote to its support.
    pub uuid: String,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} (UUID {})", self.name, self.message, self.uuid)
    }
}

/// A frame from the server, in the service's terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The result of request `id`: its `data`, or why it failed.
    Answer {
        id: u64,
        result: Result<Value, FrameError>,
    },
    /// An event of subscription `subscription`, or its failure.
    Event {
        subscription: String,
        result: Result<Value, FrameError>,
    },
    /// The session is over (a second login, `stopAgentSession`): start a new one.
    EndOfSession {
        reason: String,
    },
    Pong,
}

/// Reads one text frame.
pub fn parse_frame(text: &str) -> Result<Frame, String> {
    let frame: ServerFrame = serde_json::from_str(text).map_err(|e| format!("not a frame: {e}"))?;
    match frame.sig.as_deref() {
        Some("EOS") => {
            return Ok(Frame::EndOfSession {
                reason: frame.reason.unwrap_or_default(),
            });
        }
        Some("PONG") => return Ok(Frame::Pong),
        _ => {}
    }
    let result = result_of(frame.payload, frame.error_code);
    if let Some(subscription) = frame.subscription_id {
        return Ok(Frame::Event {
            subscription,
            result,
        });
    }
    // Handoff sends numeric ids only, so anything else is not an answer to it.
    match frame.id.as_ref().and_then(Value::as_u64) {
        Some(id) => Ok(Frame::Answer { id, result }),
        None => Err(format!(
            "a frame with neither a numeric id nor a subscription: {text}"
        )),
    }
}

fn result_of(payload: Option<Value>, error_code: Option<Value>) -> Result<Value, FrameError> {
    let payload = payload.unwrap_or(Value::Null);
    let errors: Vec<GraphqlError> = payload
        .get("errors")
        .cloned()
        .and_then(|e| serde_json::from_value(e).ok())
        .unwrap_or_default();
    if let Some(first) = errors.into_iter().next() {
        let name = first.name.unwrap_or_default();
        return Err(FrameError {
            kind: kind_of(&name),
            name,
            message: first.message.unwrap_or_default(),
            uuid: first.uuid.unwrap_or_default(),
        });
    }
    if let Some(body) = payload.get("body") {
        return Err(FrameError {
            kind: ErrorKind::Unavailable,
            name: String::new(),
            message: body
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string),
            uuid: String::new(),
        });
    }
    if let Some(code) = error_code {
        return Err(FrameError {
            kind: ErrorKind::Unavailable,
            name: String::new(),
            message: format!("error code {code} without errors"),
            uuid: String::new(),
        });
    }
    Ok(payload.get("data").cloned().unwrap_or(Value::Null))
}

fn kind_of(name: &str) -> ErrorKind {
    match name {
        "RATE_LIMITED" => ErrorKind::RateLimited,
        "GRAPHQL_SUB_START_ERROR" => ErrorKind::SubscriptionStart,
        "UNAUTHORIZED" | "FORBIDDEN" | "MAX_SUB" | "GRAPHQL_EXEC_ERROR" => ErrorKind::Fatal,
        _ => ErrorKind::Unavailable,
    }
}

/// A message a visitor wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct VisitorMessage {
    /// The chat: a visitor who comes back does so under a new one (spec §4.1).
    pub channel_id: String,
    pub message_id: String,
    pub text: String,
    pub visitor_name: String,
    /// The visitor's own id, the same across their chats.
    pub visitor_id: String,
    pub timestamp_ms: Option<i64>,
}

/// The visitor's message in a `message` event; `None` for agents' messages (the hub's own
/// echoes among them).
pub fn visitor_message(data: &Value) -> Result<Option<VisitorMessage>, String> {
    let data: MessageData =
        serde_json::from_value(data.clone()).map_err(|e| format!("message event: {e}"))?;
    let node = data.message.node;
    if node.from.typename != "Visitor" {
        return Ok(None);
    }
    Ok(Some(VisitorMessage {
        channel_id: node.channel.id,
        message_id: node.id,
        text: node.content,
        visitor_name: node.from.display_name.unwrap_or_default(),
        visitor_id: node.from.id.unwrap_or_default(),
        timestamp_ms: node.timestamp.map(|t| t as i64),
    }))
}

/// The subscription selections the agent needs: a message's text and sender, and a
/// member leaving (with its chat, which a leave log needs to be of any use).
pub const MESSAGE_SUBSCRIPTION: &str = "subscription { message { node { id content timestamp channel { id } from { __typename display_name id } } } }";
pub const ACTIVITY_SUBSCRIPTION: &str = "subscription { chatActivity(filter: {chat_activity_types: [MEMBER_LEAVE]}) { node { __typename ... on MemberLeaveLog { id channel { id } user { __typename id display_name } } } } }";

/// A visitor closing their chat, from a `chatActivity` event: `(chat id, log id)`; `None`
/// for anything else (agents leaving, joins).
pub fn visitor_left(data: &Value) -> Result<Option<(String, String)>, String> {
    let data: ActivityData =
        serde_json::from_value(data.clone()).map_err(|e| format!("chatActivity event: {e}"))?;
    let log = data.chat_activity.node;
    let by_visitor = log.user.as_ref().is_some_and(|u| u.typename == "Visitor");
    match (log.typename.as_str(), log.channel) {
        ("MemberLeaveLog", Some(channel)) if by_visitor => Ok(Some((channel.id, log.id))),
        _ => Ok(None),
    }
}

/// A visitor's text as content: the payload of a quick reply it matches (the widget sends
/// the tapped option's text), plain text otherwise.
pub fn visitor_content(text: &str, offered: &[Choice]) -> Content {
    let picked = offered
        .iter()
        .find(|c| c.title == text || (!c.payload.is_empty() && c.payload == text));
    let kind = match picked {
        Some(c) => content::Kind::Postback(Postback {
            payload: c.payload.clone(),
            title: c.title.clone(),
        }),
        None => content::Kind::Text(Text { text: text.into() }),
    };
    Content {
        kind: Some(kind),
        raw_json: String::new(),
    }
}

/// A mutation to send, and the quick replies it offers (to map the visitor's pick back).
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingRequest {
    pub query: String,
    pub offered: Vec<Choice>,
}

/// The mutation that shows `content` in chat `channel_id`; `None` when there is nothing
/// a visitor could see. What the API cannot show is degraded: buttons that post back
/// become quick replies, links become text lines, a carousel becomes its cards as text.
pub fn send_request(channel_id: &str, content: &Content) -> Option<OutgoingRequest> {
    let text_only = |text: String| {
        (!text.trim().is_empty()).then(|| OutgoingRequest {
            query: format!(
                "mutation {{ sendMessage(channel_id: {}, msg: {}) {{ success }} }}",
                graphql_string(channel_id),
                graphql_string(&text)
            ),
            offered: Vec::new(),
        })
    };
    match content.kind.as_ref()? {
        content::Kind::Text(t) => text_only(t.text.clone()),
        content::Kind::Postback(p) => text_only(if p.title.is_empty() {
            p.payload.clone()
        } else {
            p.title.clone()
        }),
        content::Kind::QuickReplies(q) => Some(quick_replies(channel_id, &q.text, &q.options)),
        content::Kind::Buttons(b) => {
            let mut text = b.text.clone();
            let mut choices = Vec::new();
            for button in &b.buttons {
                match button::Kind::try_from(button.kind).unwrap_or_default() {
                    button::Kind::Postback => choices.push(Choice {
                        title: button.title.clone(),
                        payload: button.value.clone(),
                    }),
                    _ => text.push_str(&format!("\n{}: {}", button.title, button.value)),
                }
            }
            if choices.is_empty() {
                text_only(text)
            } else {
                Some(quick_replies(channel_id, &text, &choices))
            }
        }
        content::Kind::Carousel(c) => text_only(
            c.cards
                .iter()
                .map(|card| {
                    let mut line = card.title.clone();
                    if !card.subtitle.is_empty() {
                        line.push_str(&format!(" — {}", card.subtitle));
                    }
                    for b in &card.buttons {
                        line.push_str(&format!("\n  {}: {}", b.title, b.value));
                    }
                    line
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        content::Kind::Media(m) => {
            text_only(format!("{}\n{}", m.caption, m.url).trim().to_string())
        }
        content::Kind::Location(l) => {
            text_only(format!("{} ({}, {})", l.title, l.latitude, l.longitude))
        }
        content::Kind::Unsupported(_) => None,
    }
}

fn quick_replies(channel_id: &str, text: &str, options: &[Choice]) -> OutgoingRequest {
    let replies: Vec<String> = options
        .iter()
        .map(|o| {
            let value = if o.payload.is_empty() {
                &o.title
            } else {
                &o.payload
            };
            format!(
                "{{action: {{value: {}}}, text: {}}}",
                graphql_string(value),
                graphql_string(&o.title)
            )
        })
        .collect();
    // Widgets that cannot show quick replies show the fallback: the text and the options.
    let fallback: Vec<String> = options.iter().map(|o| graphql_string(&o.title)).collect();
    OutgoingRequest {
        query: format!(
            "mutation {{ sendQuickReplies(channel_id: {}, msg: {}, quick_replies: [{}], fallback: {{msg: {}, options: [{}]}}) {{ success }} }}",
            graphql_string(channel_id),
            graphql_string(text),
            replies.join(", "),
            graphql_string(text),
            fallback.join(", ")
        ),
        offered: options.to_vec(),
    }
}

/// Every department with its status (spec §4.4: compared to `"ONLINE"`).
pub const DEPARTMENTS_QUERY: &str = "query { departments { edges { node { id name status } } } }";

/// Why a handoff to a Zendesk department cannot happen now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepartmentError {
    #[error("no department `{0}` in this Zendesk account")]
    Unknown(String),
    #[error("department `{name}` is {status}, not ONLINE")]
    NotOnline { name: String, status: String },
    #[error("the departments answer was not understood: {0}")]
    Unreadable(String),
}

impl DepartmentError {
    /// The reason as one word, for the bot (`handoffError.reason`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown(_) => "no_such_department",
            Self::NotOnline { .. } => "no_department_online",
            Self::Unreadable(_) => "departments_unreadable",
        }
    }
}

/// The id of department `wanted` (its id, or its name in any case) from a `departments`
/// answer, if it is ONLINE: a transfer to a department nobody staffs would leave the
/// visitor waiting for no one (SAMPLE checks the status first, spec §5.3).
pub fn online_department(data: &Value, wanted: &str) -> Result<String, DepartmentError> {
    let data: DepartmentsData = serde_json::from_value(data.clone())
        .map_err(|e| DepartmentError::Unreadable(e.to_string()))?;
    let wanted = wanted.trim();
    let department = data
        .departments
        .edges
        .into_iter()
        .map(|e| e.node)
        .find(|d| d.id == wanted || d.name.trim().eq_ignore_ascii_case(wanted))
        .ok_or_else(|| DepartmentError::Unknown(wanted.to_string()))?;
    if department.status.eq_ignore_ascii_case("ONLINE") {
        Ok(department.id)
    } else {
        Err(DepartmentError::NotOnline {
            name: department.name,
            status: department.status,
        })
    }
}

/// Hands chat `channel_id` to a department. The agent stays in the chat (no `leave`), so
/// the visitor's leaving still arrives and closes the conversation; it sends nothing more.
pub fn transfer_request(channel_id: &str, department_id: &str) -> String {
    format!(
        "mutation {{ transferToDepartment(channel_id: {}, department_id: {}) {{ success }} }}",
        graphql_string(channel_id),
        graphql_string(department_id)
    )
}

/// Whether a mutation's answer says it did not happen (`{"sendMessage": {"success":
/// false}}`): Zendesk answers so for a chat that is no longer the agent's. It is a
/// refusal, not a delivery.
pub fn answer_declined(data: &Value) -> bool {
    data.as_object().is_some_and(|fields| {
        fields
            .values()
            .any(|v| v.get("success").and_then(Value::as_bool) == Some(false))
    })
}

/// Whether `query` is one of the operations the hub itself sends on an agent session:
/// one operation whose one top-level field is `sendMessage`, `sendQuickReplies` or
/// `transferToDepartment` (mutations) or `departments` (a query). Forwarded requests
/// arrive over NATS, so the session's holder checks them rather than trusting the
/// subject: anything else (an agent's whole API) is refused.
pub fn is_hub_operation(query: &str) -> bool {
    use graphql_parser::query::{Definition, OperationDefinition, Selection};
    let Ok(document) = graphql_parser::parse_query::<&str>(query) else {
        return false;
    };
    let [Definition::Operation(operation)] = &document.definitions[..] else {
        return false;
    };
    let (allowed, selection): (&[&str], _) = match operation {
        OperationDefinition::Mutation(m) => (
            &["sendMessage", "sendQuickReplies", "transferToDepartment"],
            &m.selection_set,
        ),
        OperationDefinition::Query(q) => (&["departments"], &q.selection_set),
        OperationDefinition::SelectionSet(s) => (&["departments"], s),
        OperationDefinition::Subscription(_) => return false,
    };
    matches!(&selection.items[..], [Selection::Field(f)] if allowed.contains(&f.name))
}

/// The HTTP request that starts an agent session (its answer names the WebSocket).
pub fn start_session_query(access_token: &str) -> String {
    format!(
        "mutation {{ startAgentSession(access_token: {}) {{ websocket_url session_id client_id }} }}",
        graphql_string(access_token)
    )
}

/// The agent goes ONLINE (the session's first request).
pub const GO_ONLINE: &str = "mutation { updateAgentStatus(status: ONLINE) { node { id } } }";

/// The keep-alive frame; Zendesk answers PONG.
pub fn ping_frame(now_ms: i64) -> String {
    json!({"sig": "PING", "payload": now_ms}).to_string()
}

/// Ends a subscription before the session closes.
pub fn stop_subscription_frame(subscription_id: &str) -> String {
    json!({"payload": {"subscription_id": subscription_id}, "type": "stop_subscription", "id": 0})
        .to_string()
}

/// A request frame: `{"payload": {"query"}, "type": "request", "id"}`.
pub fn request_frame(id: u64, query: &str) -> String {
    json!({"payload": {"query": query}, "type": "request", "id": id}).to_string()
}

/// `s` as a GraphQL string literal: quotes, backslashes and control characters escaped
/// (GraphQL spec, StringValue), everything else as is.
pub fn graphql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str) -> Content {
        Content {
            kind: Some(content::Kind::Text(Text { text: t.into() })),
            raw_json: String::new(),
        }
    }

    #[test]
    fn visitor_text_with_quotes_and_newlines_is_escaped_into_the_query() {
        let sent = send_request("ch-1", &text("say \"hi\"\\ then\nbye")).unwrap();
        assert_eq!(
            sent.query,
            r#"mutation { sendMessage(channel_id: "ch-1", msg: "say \"hi\"\\ then\nbye") { success } }"#
        );
    }

    #[test]
    fn quick_replies_carry_a_fallback_and_a_pick_maps_back_to_its_payload() {
        let q = Content {
            kind: Some(content::Kind::QuickReplies(handoff_proto::QuickReplies {
                text: "Tea or coffee?".into(),
                options: vec![
                    Choice {
                        title: "Tea".into(),
                        payload: "TEA".into(),
                    },
                    Choice {
                        title: "Coffee".into(),
                        payload: "COFFEE".into(),
                    },
                ],
            })),
            raw_json: String::new(),
        };
        let sent = send_request("ch", &q).unwrap();
        assert!(
            sent.query
                .contains(r#"quick_replies: [{action: {value: "TEA"}, text: "Tea"}"#),
            "{}",
            sent.query
        );
        assert!(
            sent.query
                .contains(r#"fallback: {msg: "Tea or coffee?", options: ["Tea", "Coffee"]}"#),
            "{}",
            sent.query
        );
        let picked = visitor_content("Coffee", &sent.offered);
        assert!(
            matches!(picked.kind, Some(content::Kind::Postback(ref p)) if p.payload == "COFFEE")
        );
        assert!(matches!(
            visitor_content("milk", &sent.offered).kind,
            Some(content::Kind::Text(_))
        ));
    }

    #[test]
    fn error_frames_are_classified_as_seed_002_says_in_either_spelling() {
        let frame = parse_frame(r#"{"error_code": 429, "id": 7, "payload": {"errors": [{"name": "RATE_LIMITED", "message": "slow down", "UUID": "u-1"}]}}"#).unwrap();
        let Frame::Answer {
            id: 7,
            result: Err(e),
        } = frame
        else {
            panic!("{frame:?}")
        };
        assert_eq!((e.kind, e.uuid.as_str()), (ErrorKind::RateLimited, "u-1"));
        let frame = parse_frame(r#"{"errorCode": "GRAPHQL_SUB_START_ERROR", "sig": "DATA", "subscription_id": "s1", "payload": {"errors": [{"name": "GRAPHQL_SUB_START_ERROR"}]}}"#).unwrap();
        assert!(matches!(
            frame,
            Frame::Event {
                result: Err(FrameError {
                    kind: ErrorKind::SubscriptionStart,
                    ..
                }),
                ..
            }
        ));
        let frame = parse_frame(
            r#"{"error_code": 503, "id": 2, "payload": {"body": "graphql server unavailable"}}"#,
        )
        .unwrap();
        assert!(matches!(
            frame,
            Frame::Answer {
                result: Err(FrameError {
                    kind: ErrorKind::Unavailable,
                    ..
                }),
                ..
            }
        ));
        assert_eq!(
            parse_frame(r#"{"sig": "EOS", "reason": "unexpected session status"}"#).unwrap(),
            Frame::EndOfSession {
                reason: "unexpected session status".into()
            }
        );
        assert_eq!(
            parse_frame(r#"{"sig": "PONG", "payload": 1}"#).unwrap(),
            Frame::Pong
        );
    }

    #[test]
    fn a_visitors_message_is_kept_and_an_agents_echo_is_not() {
        let event = |typename: &str| {
            json!({"message": {"node": {
            "id": "m1", "content": "hello", "channel": {"id": "c1"}, "timestamp": 1675666127859.0,
            "from": {"__typename": typename, "display_name": "Visitor 26085828", "id": "v1"}}}})
        };
        let m = visitor_message(&event("Visitor")).unwrap().unwrap();
        assert_eq!((m.channel_id.as_str(), m.text.as_str()), ("c1", "hello"));
        assert_eq!(m.timestamp_ms, Some(1_675_666_127_859));
        assert_eq!(visitor_message(&event("Agent")).unwrap(), None);
        assert!(visitor_message(&json!({"message": {}})).is_err());
    }

    #[test]
    fn a_visitor_leaving_is_told_apart_from_an_agent_leaving() {
        let event = |typename: &str| {
            json!({"chatActivity": {"node": {
            "__typename": "MemberLeaveLog", "id": "l1", "channel": {"id": "c1"},
            "user": {"__typename": typename, "id": "u", "display_name": "x"}}}})
        };
        assert_eq!(
            visitor_left(&event("Visitor")).unwrap(),
            Some(("c1".into(), "l1".into()))
        );
        assert_eq!(visitor_left(&event("Agent")).unwrap(), None);
    }

    #[test]
    fn control_characters_are_escaped_as_unicode() {
        assert_eq!(graphql_string("a\u{1}b\u{8}"), r#""a\u0001b\b""#);
    }

    #[test]
    fn a_department_is_found_by_id_or_name_and_must_be_online() {
        let data = json!({"departments": {"edges": [
            {"node": {"id": "D1", "name": "Support", "status": "ONLINE"}},
            {"node": {"id": "D2", "name": "Billing", "status": "OFFLINE"}},
        ]}});
        assert_eq!(online_department(&data, "support").unwrap(), "D1");
        assert_eq!(online_department(&data, "D1").unwrap(), "D1");
        let offline = online_department(&data, "Billing").unwrap_err();
        assert_eq!(offline.code(), "no_department_online");
        assert_eq!(
            online_department(&data, "Sales").unwrap_err().code(),
            "no_such_department"
        );
    }

    #[test]
    fn only_the_operations_the_hub_sends_pass_as_forwarded_requests() {
        let hi = Content {
            kind: Some(content::Kind::Text(Text { text: "hi".into() })),
            raw_json: String::new(),
        };
        let text = send_request("ch-1", &hi).expect("a text is sent");
        for ours in [
            text.query.as_str(),
            DEPARTMENTS_QUERY,
            &transfer_request("ch-1", "d-1"),
        ] {
            assert!(is_hub_operation(ours), "{ours}");
        }
        for theirs in [
            "mutation { updateAgentStatus(status: INVISIBLE) { node { id } } }",
            r#"mutation { sendMessage(channel_id: "c", msg: "x") { success } leave(channel_id: "c") { success } }"#,
            "query { me { id } }",
            "subscription { message { node { id } } }",
            r#"mutation { sendMessage(channel_id: "c", msg: "x") { success } } query { me { id } }"#,
            "not graphql {",
        ] {
            assert!(!is_hub_operation(theirs), "{theirs}");
        }
    }

    #[test]
    fn an_answer_of_success_false_is_a_refusal_and_true_is_a_delivery() {
        assert!(answer_declined(&json!({"sendMessage": {"success": false}})));
        assert!(!answer_declined(&json!({"sendMessage": {"success": true}})));
        assert!(!answer_declined(&json!({"departments": {"edges": []}})));
    }
}

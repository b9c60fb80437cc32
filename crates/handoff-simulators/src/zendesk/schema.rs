//! The part of the Conversations API schema an agent bot meets (spec §4), as the simulator
//! checks it: root fields with typed arguments, input and enum types for argument
//! coercion, and one sample result per root field.
//!
//! Output types are described by example: a result is a JSON object holding every field of
//! its type (nullable ones as `null`) plus `__typename`, and a selection is checked by
//! projecting it onto the samples (see `exec`). That keeps the schema next to the values
//! the simulator really sends, so the two cannot drift apart.

use std::collections::HashMap;
use std::fmt;

use graphql_parser::query::{Field, Value as Literal};
use serde_json::{Map, Value, json};

/// An input type reference, e.g. `[QuickReplyInput!]!`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Ty {
    Named(String),
    List(Box<Ty>),
    NonNull(Box<Ty>),
}

impl Ty {
    /// Parses the schema notation used in the tables below.
    pub(super) fn parse(s: &str) -> Ty {
        if let Some(inner) = s.strip_suffix('!') {
            Ty::NonNull(Box::new(Ty::parse(inner)))
        } else if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Ty::List(Box::new(Ty::parse(inner)))
        } else {
            Ty::Named(s.to_string())
        }
    }

    pub(super) fn from_ast(t: &graphql_parser::query::Type<'static, String>) -> Ty {
        use graphql_parser::query::Type;
        match t {
            Type::NamedType(n) => Ty::Named(n.clone()),
            Type::ListType(inner) => Ty::List(Box::new(Ty::from_ast(inner))),
            Type::NonNullType(inner) => Ty::NonNull(Box::new(Ty::from_ast(inner))),
        }
    }

    pub(super) fn is_non_null(&self) -> bool {
        matches!(self, Ty::NonNull(_))
    }

    fn named(&self) -> &str {
        match self {
            Ty::Named(n) => n,
            Ty::List(t) | Ty::NonNull(t) => t.named(),
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Named(n) => f.write_str(n),
            Ty::List(t) => write!(f, "[{t}]"),
            Ty::NonNull(t) => write!(f, "{t}!"),
        }
    }
}

enum Kind {
    Scalar,
    Enum(&'static [&'static str]),
    Input(&'static [(&'static str, &'static str)]),
}

/// Only `ONLINE` is seen in public code; the Chat UI's Away and Invisible and the
/// department-status wording make the other three likely (spec §4.4, inferred).
pub(super) const AGENT_STATUSES: &[&str] = &["ONLINE", "AWAY", "INVISIBLE", "OFFLINE"];

/// The input type names are not in any retrieved source; they only show up in error
/// messages, which clients do not parse.
fn kind(name: &str) -> Option<Kind> {
    Some(match name {
        "ID" | "String" | "Boolean" | "Int" | "Float" => Kind::Scalar,
        "AgentStatus" => Kind::Enum(AGENT_STATUSES),
        "ChatActivityType" => Kind::Enum(&["MEMBER_JOIN", "MEMBER_LEAVE", "MEMBER_CHANGE"]),
        "ButtonActionType" => Kind::Enum(&["LINK_ACTION", "QUICK_REPLY_ACTION"]),
        "QuickReplyInput" => {
            Kind::Input(&[("text", "String!"), ("action", "QuickReplyActionInput!")])
        }
        "QuickReplyActionInput" | "PanelActionInput" => Kind::Input(&[("value", "String!")]),
        "FallbackInput" => Kind::Input(&[("msg", "String!"), ("options", "[String!]")]),
        "ButtonInput" => Kind::Input(&[("text", "String!"), ("action", "ButtonActionInput!")]),
        "ButtonActionInput" => Kind::Input(&[("type", "ButtonActionType!"), ("value", "String!")]),
        "PanelInput" | "ListItemInput" => Kind::Input(&[
            ("heading", "String!"),
            ("paragraph", "String"),
            ("image_url", "String"),
            ("action", "PanelActionInput"),
        ]),
        "PanelTemplateInput" => {
            Kind::Input(&[("panel", "PanelInput!"), ("buttons", "[ButtonInput!]")])
        }
        "ChatActivityFilter" => Kind::Input(&[("chat_activity_types", "[ChatActivityType!]")]),
        _ => return None,
    })
}

/// A root field with its arguments in schema notation.
pub(super) struct RootField {
    pub name: &'static str,
    pub args: &'static [(&'static str, &'static str)],
}

const fn root(name: &'static str, args: &'static [(&'static str, &'static str)]) -> RootField {
    RootField { name, args }
}

pub(super) const QUERY: &[RootField] = &[root("departments", &[]), root("agents", &[])];

/// Argument names and shapes from spec §4.4 (SCH-MUT and client code); the optional
/// `backoff` and `fallback` of the structured sends follow `sendMessage`'s documentation.
pub(super) const MUTATION: &[RootField] = &[
    root("startAgentSession", &[("access_token", "String!")]),
    root("stopAgentSession", &[]),
    root("updateAgentStatus", &[("status", "AgentStatus!")]),
    root(
        "sendMessage",
        &[
            ("channel_id", "ID!"),
            ("msg", "String!"),
            ("backoff", "Boolean"),
            ("msg_id", "String"),
            ("options", "[String!]"),
        ],
    ),
    root(
        "sendQuickReplies",
        &[
            ("channel_id", "ID!"),
            ("msg", "String!"),
            ("quick_replies", "[QuickReplyInput!]!"),
            ("fallback", "FallbackInput"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "sendButtonTemplate",
        &[
            ("channel_id", "ID!"),
            ("msg", "String!"),
            ("buttons", "[ButtonInput!]!"),
            ("fallback", "FallbackInput"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "sendPanelTemplate",
        &[
            ("channel_id", "ID!"),
            ("panel", "PanelInput!"),
            ("buttons", "[ButtonInput!]"),
            ("fallback", "FallbackInput"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "sendPanelTemplateCarousel",
        &[
            ("channel_id", "ID!"),
            ("items", "[PanelTemplateInput!]!"),
            ("fallback", "FallbackInput"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "sendListTemplate",
        &[
            ("channel_id", "ID!"),
            ("items", "[ListItemInput!]!"),
            ("buttons", "[ButtonInput!]"),
            ("fallback", "FallbackInput"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "setTypingIndicator",
        &[
            ("channel_id", "ID!"),
            ("typing", "Boolean!"),
            ("backoff", "Boolean"),
        ],
    ),
    root(
        "transferToDepartment",
        &[
            ("channel_id", "ID!"),
            ("department_id", "ID!"),
            ("leave", "Boolean"),
        ],
    ),
    root(
        "inviteAgent",
        &[
            ("agent_id", "ID!"),
            ("channel_id", "ID!"),
            ("leave", "Boolean"),
        ],
    ),
    root("addTags", &[("channel_id", "ID!"), ("tags", "[String!]!")]),
    root("leaveChannel", &[("channel_id", "ID!")]),
    root("listenVisitorChannel", &[("channel_id", "ID!")]),
];

pub(super) const SUBSCRIPTION: &[RootField] = &[
    root("message", &[]),
    root("chatActivity", &[("filter", "ChatActivityFilter")]),
];

/// The mutations that put something in front of the visitor.
pub(super) const SENDS: &[&str] = &[
    "sendMessage",
    "sendQuickReplies",
    "sendButtonTemplate",
    "sendPanelTemplate",
    "sendPanelTemplateCarousel",
    "sendListTemplate",
];

/// Object, interface and union names a fragment may be conditioned on.
pub(super) fn is_output_type(name: &str) -> bool {
    const NAMED: &[&str] = &[
        "Query",
        "Mutation",
        "Subscription",
        "Agent",
        "AgentChannel",
        "Channel",
        "ChatLog",
        "Department",
        "GraphQLSubscription",
        "MemberChangeLog",
        "MemberJoinLog",
        "MemberLeaveLog",
        "Message",
        "PageInfo",
        "User",
        "Visitor",
        "VisitorChannel",
    ];
    NAMED.contains(&name)
        || ["Payload", "Connection", "Edge"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

/// Whether an object of type `typename` satisfies the type condition `condition`.
pub(super) fn satisfies(typename: &str, condition: &str) -> bool {
    let supertypes: &[&str] = match typename {
        "Visitor" | "Agent" => &["User"],
        "VisitorChannel" | "AgentChannel" => &["Channel"],
        "Message" | "MemberJoinLog" | "MemberLeaveLog" | "MemberChangeLog" => &["ChatLog"],
        _ => &[],
    };
    typename == condition || supertypes.contains(&condition)
}

/// The declared variables of an operation with their values (provided or default),
/// already coerced to the declared types.
#[derive(Debug, Clone, Default)]
pub(super) struct Vars {
    pub types: HashMap<String, Ty>,
    pub values: Map<String, Value>,
}

/// Coerces a literal (or `$variable`) argument to JSON for type `ty`, with graphql-js's
/// wording for the failures.
pub(super) fn coerce_literal(
    v: &Literal<'static, String>,
    ty: &Ty,
    vars: &Vars,
) -> Result<Value, String> {
    if let Literal::Variable(name) = v {
        if !vars.types.contains_key(name) {
            return Err(format!("Variable \"${name}\" is not defined."));
        }
        return match vars.values.get(name) {
            None | Some(Value::Null) if ty.is_non_null() => Err(format!(
                "Variable \"${name}\" of required type \"{ty}\" was not provided."
            )),
            None | Some(Value::Null) => Ok(Value::Null),
            Some(value) => coerce_json(value, ty)
                .map_err(|e| format!("Variable \"${name}\" got invalid value {value}; {e}")),
        };
    }
    match (ty, v) {
        (Ty::NonNull(_), Literal::Null) => {
            Err(format!("Expected value of type \"{ty}\", found null."))
        }
        (Ty::NonNull(inner), v) => coerce_literal(v, inner, vars),
        (_, Literal::Null) => Ok(Value::Null),
        (Ty::List(inner), Literal::List(items)) => items
            .iter()
            .map(|item| coerce_literal(item, inner, vars))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        // Input coercion wraps a single value into a one-item list.
        (Ty::List(inner), v) => Ok(json!([coerce_literal(v, inner, vars)?])),
        (Ty::Named(name), v) => match kind(name) {
            Some(Kind::Scalar) => scalar_literal(name, v),
            Some(Kind::Enum(values)) => match v {
                Literal::Enum(e) if values.contains(&e.as_str()) => Ok(json!(e)),
                Literal::Enum(e) => {
                    Err(format!("Value \"{e}\" does not exist in \"{name}\" enum."))
                }
                other => Err(format!(
                    "Enum \"{name}\" cannot represent non-enum value: {other}."
                )),
            },
            Some(Kind::Input(fields)) => match v {
                Literal::Object(map) => {
                    if let Some(key) = map.keys().find(|k| !fields.iter().any(|(f, _)| f == k)) {
                        return Err(format!(
                            "Field \"{key}\" is not defined by type \"{name}\"."
                        ));
                    }
                    let mut out = Map::new();
                    for (field, field_ty) in fields {
                        let field_ty = Ty::parse(field_ty);
                        match map.get(*field) {
                            Some(x) => {
                                out.insert(field.to_string(), coerce_literal(x, &field_ty, vars)?);
                            }
                            None if field_ty.is_non_null() => {
                                return Err(format!(
                                    "Field \"{name}.{field}\" of required type \"{field_ty}\" was not provided."
                                ));
                            }
                            None => {}
                        }
                    }
                    Ok(Value::Object(out))
                }
                other => Err(format!("Expected value of type \"{name}\", found {other}.")),
            },
            None => Err(format!("Unknown type \"{name}\".")),
        },
    }
}

fn scalar_literal(name: &str, v: &Literal<'static, String>) -> Result<Value, String> {
    match (name, v) {
        ("String", Literal::String(s)) | ("ID", Literal::String(s)) => Ok(json!(s)),
        ("ID", Literal::Int(n)) => Ok(json!(n.as_i64().unwrap_or_default().to_string())),
        ("Boolean", Literal::Boolean(b)) => Ok(json!(b)),
        ("Int", Literal::Int(n)) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => Ok(json!(i)),
            _ => Err(format!(
                "Int cannot represent non 32-bit signed integer value: {v}"
            )),
        },
        ("Float", Literal::Int(n)) => Ok(json!(n.as_i64().unwrap_or_default() as f64)),
        ("Float", Literal::Float(f)) => Ok(json!(f)),
        _ => Err(scalar_error(name, &v.to_string())),
    }
}

fn scalar_error(name: &str, shown: &str) -> String {
    match name {
        "String" => format!("String cannot represent a non string value: {shown}"),
        "ID" => format!("ID cannot represent a non-string and non-integer value: {shown}"),
        "Boolean" => format!("Boolean cannot represent a non boolean value: {shown}"),
        "Int" => format!("Int cannot represent non-integer value: {shown}"),
        _ => format!("Float cannot represent non numeric value: {shown}"),
    }
}

/// Coerces a JSON value (a variable) to type `ty`: what `variables` go through.
pub(super) fn coerce_json(v: &Value, ty: &Ty) -> Result<Value, String> {
    match (ty, v) {
        (Ty::NonNull(_), Value::Null) => Err(format!(
            "Expected non-nullable type \"{ty}\" not to be null."
        )),
        (Ty::NonNull(inner), v) => coerce_json(v, inner),
        (_, Value::Null) => Ok(Value::Null),
        (Ty::List(inner), Value::Array(items)) => items
            .iter()
            .map(|item| coerce_json(item, inner))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        (Ty::List(inner), v) => Ok(json!([coerce_json(v, inner)?])),
        (Ty::Named(name), v) => match kind(name) {
            Some(Kind::Scalar) => match (name.as_str(), v) {
                ("String" | "ID", Value::String(_)) | ("Boolean", Value::Bool(_)) => Ok(v.clone()),
                ("ID", Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(json!(n.to_string())),
                ("Int", Value::Number(n))
                    if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) =>
                {
                    Ok(v.clone())
                }
                ("Float", Value::Number(_)) => Ok(v.clone()),
                _ => Err(scalar_error(name, &v.to_string())),
            },
            Some(Kind::Enum(values)) => match v.as_str() {
                Some(s) if values.contains(&s) => Ok(v.clone()),
                _ => Err(format!("Value {v} does not exist in \"{name}\" enum.")),
            },
            Some(Kind::Input(fields)) => {
                let Value::Object(map) = v else {
                    return Err(format!("Expected type \"{name}\" to be an object."));
                };
                if let Some(key) = map.keys().find(|k| !fields.iter().any(|(f, _)| f == k)) {
                    return Err(format!(
                        "Field \"{key}\" is not defined by type \"{name}\"."
                    ));
                }
                let mut out = Map::new();
                for (field, field_ty) in fields {
                    let field_ty = Ty::parse(field_ty);
                    match map.get(*field) {
                        Some(x) => {
                            out.insert(field.to_string(), coerce_json(x, &field_ty)?);
                        }
                        None if field_ty.is_non_null() => {
                            return Err(format!(
                                "Field \"{field}\" of required type \"{field_ty}\" was not provided."
                            ));
                        }
                        None => {}
                    }
                }
                Ok(Value::Object(out))
            }
            None => Err(format!("Unknown type \"{name}\".")),
        },
    }
}

/// Checks a variable definition's type names exist and are input types.
pub(super) fn check_input_type(ty: &Ty) -> Result<(), String> {
    let name = ty.named();
    if kind(name).is_some() {
        Ok(())
    } else if is_output_type(name) {
        Err(format!(
            "Variable type \"{ty}\" must be an input type, but \"{name}\" is an output type."
        ))
    } else {
        Err(format!("Unknown type \"{name}\"."))
    }
}

/// The arguments of a root field, coerced; unknown and missing ones are errors.
pub(super) fn coerce_args(
    parent: &str,
    spec: &RootField,
    field: &Field<'static, String>,
    vars: &Vars,
) -> Result<Map<String, Value>, String> {
    if let Some((name, _)) = field
        .arguments
        .iter()
        .find(|(name, _)| !spec.args.iter().any(|(a, _)| a == name))
    {
        return Err(format!(
            "Unknown argument \"{name}\" on field \"{parent}.{}\".",
            spec.name
        ));
    }
    let mut out = Map::new();
    for (arg, ty) in spec.args {
        let ty = Ty::parse(ty);
        match field.arguments.iter().find(|(name, _)| name == arg) {
            Some((_, literal)) => {
                out.insert(arg.to_string(), coerce_literal(literal, &ty, vars)?);
            }
            None if ty.is_non_null() => {
                return Err(format!(
                    "Field \"{}\" argument \"{arg}\" of type \"{ty}\" is required, but it was not provided.",
                    spec.name
                ));
            }
            None => {}
        }
    }
    Ok(out)
}

// ---- result values -------------------------------------------------------------------

pub(super) fn success(field: &str) -> Value {
    json!({ "__typename": payload_type(field), "success": true })
}

/// `sendMessage` → `SendMessagePayload`, the naming of the documented payload types.
pub(super) fn payload_type(field: &str) -> String {
    let mut name = String::with_capacity(field.len() + 7);
    let mut chars = field.chars();
    if let Some(first) = chars.next() {
        name.extend(first.to_uppercase());
    }
    name.extend(chars);
    name.push_str("Payload");
    name
}

pub(super) fn agent_node(id: &str, name: &str, status: &str) -> Value {
    json!({
        "__typename": "Agent",
        "id": id,
        "name": name,
        "display_name": name,
        "status": status,
    })
}

pub(super) fn visitor_node(id: &str, name: &str) -> Value {
    json!({ "__typename": "Visitor", "id": id, "display_name": name })
}

pub(super) fn channel_node(id: &str) -> Value {
    json!({ "__typename": "VisitorChannel", "id": id })
}

pub(super) struct MessageParts<'a> {
    pub id: &'a str,
    pub channel: &'a str,
    pub from: Value,
    pub content: &'a str,
    pub msg_id: Option<&'a str>,
    pub options: Option<Value>,
    pub timestamp_ms: u64,
}

pub(super) fn message_node(m: MessageParts<'_>) -> Value {
    let sender = m.from["display_name"].clone();
    json!({
        "__typename": "Message",
        "id": m.id,
        "content": m.content,
        "channel": channel_node(m.channel),
        "from": m.from,
        "msg_id": m.msg_id,
        "options": m.options,
        "sender_name": sender,
        // Float in the schema, milliseconds: the KATA log shows e.g. 1675666127859.
        "timestamp": m.timestamp_ms as f64,
    })
}

/// A `MemberJoinLog` / `MemberLeaveLog` chat log (spec §4.6; `channel` and `timestamp`
/// inferred from the other chat log, `Message`).
pub(super) fn member_log(
    typename: &str,
    id: &str,
    channel: &str,
    user: Value,
    timestamp_ms: u64,
) -> Value {
    json!({
        "__typename": typename,
        "id": id,
        "user_name": user["display_name"].clone(),
        "user": user,
        "channel": channel_node(channel),
        "timestamp": timestamp_ms as f64,
    })
}

/// A Relay connection, `{ edges { node } pageInfo }`.
pub(super) fn connection(type_name: &str, nodes: Vec<Value>) -> Value {
    let edges: Vec<Value> = nodes
        .into_iter()
        .map(|node| {
            json!({
                "__typename": format!("{type_name}Edge"),
                "cursor": node["id"].clone(),
                "node": node,
            })
        })
        .collect();
    json!({
        "__typename": format!("{type_name}Connection"),
        "pageInfo": {
            "__typename": "PageInfo",
            "hasNextPage": false,
            "hasPreviousPage": false,
            "startCursor": edges.first().map(|e| e["cursor"].clone()),
            "endCursor": edges.last().map(|e| e["cursor"].clone()),
        },
        "edges": edges,
    })
}

pub(super) fn department_node(id: &str, name: &str, status: &str) -> Value {
    json!({ "__typename": "Department", "id": id, "name": name, "status": status })
}

/// Representative results of a root field, each with every field filled in, against which
/// a selection is checked before anything runs (an error must not follow a side effect).
pub(super) fn samples(field: &str) -> Vec<Value> {
    let agent = agent_node("agent", "Agent", "ONLINE");
    let visitor = visitor_node("visitor", "Visitor 1");
    let message = |from: Value| {
        message_node(MessageParts {
            id: "m",
            channel: "c",
            from,
            content: "x",
            msg_id: Some("x"),
            options: Some(json!(["x"])),
            timestamp_ms: 0,
        })
    };
    match field {
        "startAgentSession" => vec![json!({
            "__typename": "StartAgentSessionPayload",
            "websocket_url": "", "session_id": "", "client_id": "",
        })],
        "updateAgentStatus" => vec![json!({
            "__typename": "UpdateAgentStatusPayload", "node": agent,
        })],
        "departments" => vec![connection(
            "Department",
            vec![department_node("d", "d", "ONLINE")],
        )],
        "agents" => vec![connection("Agent", vec![agent])],
        "message" => vec![
            json!({ "__typename": "MessagePayload", "node": message(visitor) }),
            json!({ "__typename": "MessagePayload", "node": message(agent) }),
        ],
        "chatActivity" => vec![
            json!({
                "__typename": "ChatActivityPayload",
                "node": member_log("MemberJoinLog", "l", "c", visitor, 0),
            }),
            json!({
                "__typename": "ChatActivityPayload",
                "node": member_log("MemberLeaveLog", "l", "c", agent, 0),
            }),
        ],
        other => vec![success(other)],
    }
}

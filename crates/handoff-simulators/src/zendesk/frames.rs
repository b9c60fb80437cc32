//! The JSON frames of the Conversations API WebSocket and HTTP endpoint (spec §3, seed 002),
//! and the IDs the service mints (spec §4.1).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Map, Value, json};

/// The error names of seed 002's table; the `name` of every entry of `payload.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorName {
    Unauthorized,
    RateLimited,
    MaxSub,
    GraphqlExecError,
    GraphqlSubStartError,
}

impl ErrorName {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::RateLimited => "RATE_LIMITED",
            Self::MaxSub => "MAX_SUB",
            Self::GraphqlExecError => "GRAPHQL_EXEC_ERROR",
            Self::GraphqlSubStartError => "GRAPHQL_SUB_START_ERROR",
        }
    }
}

/// How the top-level `error_code` of an error frame is written. Seed 002 documents
/// `"error_code": <httpStatusCode>`; the other two exist so a client can be tested against
/// the variants public clients were written for (spec §6: VISEO reads a code, SAMPLE only
/// `payload.errors`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorCodeStyle {
    /// `"error_code": 429` — the documented frame.
    #[default]
    HttpStatus,
    /// `"error_code": "RATE_LIMITED"` — the error name as a string (protocol errors, which
    /// have no name, keep the status).
    Name,
    /// No top-level code; only `payload.errors`.
    Absent,
}

/// A failed operation: what goes into `payload.errors` and the frame's `error_code`.
#[derive(Debug)]
pub(super) struct Failure {
    pub name: ErrorName,
    pub status: u16,
    pub messages: Vec<String>,
    /// Set when execution had started: GraphQL then answers `data: null` beside the errors
    /// (every root field is non-null), while a document that never ran has no `data` key.
    pub executed: bool,
}

impl Failure {
    pub(super) fn new(name: ErrorName, status: u16, message: impl Into<String>) -> Self {
        Self {
            name,
            status,
            messages: vec![message.into()],
            executed: false,
        }
    }

    /// A request the GraphQL server could not parse, validate or run.
    pub(super) fn exec(message: impl Into<String>) -> Self {
        Self::new(ErrorName::GraphqlExecError, 400, message)
    }

    pub(super) fn sub_start(message: impl Into<String>) -> Self {
        Self::new(ErrorName::GraphqlSubStartError, 400, message)
    }

    /// seed 002's `graphQLErrorPayload`.
    pub(super) fn payload(&self) -> Value {
        let errors: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                json!({
                    "name": self.name.as_str(),
                    "message": m,
                    "UUID": uuid::Uuid::new_v4().to_string(),
                })
            })
            .collect();
        let mut payload = json!({ "errors": errors });
        if self.executed {
            payload["data"] = Value::Null;
        }
        payload
    }
}

fn with_id(mut frame: Map<String, Value>, id: Option<&Value>) -> Value {
    if let Some(id) = id {
        // Echoed untouched: clients compare with `===`, so 3 and "3" are different ids.
        frame.insert("id".into(), id.clone());
    }
    Value::Object(frame)
}

fn error_code(style: ErrorCodeStyle, status: u16, name: Option<ErrorName>) -> Option<Value> {
    match style {
        ErrorCodeStyle::HttpStatus => Some(json!(status)),
        ErrorCodeStyle::Name => Some(name.map_or_else(|| json!(status), |n| json!(n.as_str()))),
        ErrorCodeStyle::Absent => None,
    }
}

/// `{"id", "payload": {"data"}}`: a query or mutation result, or a subscription's
/// acknowledgement (`data.subscription_id`).
pub(super) fn response(id: Option<&Value>, data: Value) -> Value {
    let mut frame = Map::new();
    frame.insert("payload".into(), json!({ "data": data }));
    with_id(frame, id)
}

/// `{"error_code", "payload": graphQLErrorPayload, "id"}`.
pub(super) fn error(id: Option<&Value>, failure: &Failure, style: ErrorCodeStyle) -> Value {
    let mut frame = Map::new();
    if let Some(code) = error_code(style, failure.status, Some(failure.name)) {
        frame.insert("error_code".into(), code);
    }
    frame.insert("payload".into(), failure.payload());
    with_id(frame, id)
}

/// `{"error_code", "payload": protocolErrorPayload}`: the frame itself was not understood.
pub(super) fn protocol_error(
    id: Option<&Value>,
    status: u16,
    body: &str,
    style: ErrorCodeStyle,
) -> Value {
    let mut frame = Map::new();
    if let Some(code) = error_code(style, status, None) {
        frame.insert("error_code".into(), code);
    }
    frame.insert("payload".into(), json!({ "body": body }));
    with_id(frame, id)
}

pub(super) fn data(subscription_id: &str, data: Value) -> Value {
    json!({ "payload": { "data": data }, "sig": "DATA", "subscription_id": subscription_id })
}

pub(super) fn eos(reason: &str) -> Value {
    json!({ "reason": reason, "sig": "EOS" })
}

pub(super) fn pong(payload: Value) -> Value {
    json!({ "sig": "PONG", "payload": payload })
}

/// IDs are base64 of a JSON array of `[key, value]` pairs, compact, padded (spec §4.1).
pub(super) fn encode_id(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<[&str; 2]> = pairs.iter().map(|(k, v)| [*k, *v]).collect();
    let json = serde_json::to_string(&pairs).unwrap_or_default();
    base64::engine::general_purpose::STANDARD.encode(json)
}

pub(super) fn random_digits(n: usize) -> String {
    random_from(b"0123456789", n)
}

pub(super) fn random_alnum(n: usize) -> String {
    random_from(
        b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        n,
    )
}

pub(super) fn random_lower(n: usize) -> String {
    random_from(b"0123456789abcdefghijklmnopqrstuvwxyz", n)
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut x = uuid::Uuid::new_v4().as_u128();
        // 12 draws use 72 of the 122 random bits with a bias well below what matters here.
        for _ in 0..12 {
            if out.len() == n {
                break;
            }
            out.push(alphabet[(x % alphabet.len() as u128) as usize] as char);
            x /= 64;
        }
    }
    // A leading zero would make a "10 digit" numeric id look shorter when parsed.
    if alphabet[0] == b'0' && out.starts_with('0') {
        out.replace_range(..1, "1");
    }
    out
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

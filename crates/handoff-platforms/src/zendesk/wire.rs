//! Frames and message nodes exactly as the Conversations API sends them (spec §3.2, §4.2;
//! seed 002 for error frames). Private to this folder.

use serde::Deserialize;
use serde_json::Value;

/// Any frame from the server: a response (`id`), an event (`sig: "DATA"`), `EOS`, `PONG`,
/// or an error frame (`error_code`, or `errorCode` as one client reads it).
#[derive(Deserialize)]
pub(super) struct ServerFrame {
    #[serde(default)]
    pub sig: Option<String>,
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default, alias = "errorCode")]
    pub error_code: Option<Value>,
}

/// One entry of `payload.errors`.
#[derive(Deserialize, Default)]
pub(super) struct GraphqlError {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "UUID")]
    pub uuid: Option<String>,
}

/// `data` of a `message` subscription event: `{"message": {"node": {…}}}`.
#[derive(Deserialize)]
pub(super) struct MessageData {
    pub message: MessageEdge,
}

#[derive(Deserialize)]
pub(super) struct MessageEdge {
    pub node: MessageNode,
}

#[derive(Deserialize)]
pub(super) struct MessageNode {
    pub id: String,
    #[serde(default)]
    pub content: String,
    pub channel: Node,
    pub from: User,
    #[serde(default)]
    pub timestamp: Option<f64>,
}

#[derive(Deserialize)]
pub(super) struct Node {
    pub id: String,
}

#[derive(Deserialize)]
pub(super) struct User {
    #[serde(rename = "__typename")]
    pub typename: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

/// `data` of a `chatActivity` event: `{"chatActivity": {"node": {…}}}`.
#[derive(Deserialize)]
pub(super) struct ActivityData {
    #[serde(rename = "chatActivity")]
    pub chat_activity: ActivityEdge,
}

#[derive(Deserialize)]
pub(super) struct ActivityEdge {
    pub node: ChatLog,
}

/// A `MemberJoinLog` or `MemberLeaveLog` (their `channel` is inferred from `Message`'s).
#[derive(Deserialize)]
pub(super) struct ChatLog {
    #[serde(rename = "__typename")]
    pub typename: String,
    pub id: String,
    #[serde(default)]
    pub channel: Option<Node>,
    #[serde(default)]
    pub user: Option<User>,
}

/// `data` of the `departments` query: `{"departments": {"edges": [{"node": {…}}]}}`.
#[derive(Deserialize)]
pub(super) struct DepartmentsData {
    pub departments: Connection<Department>,
}

#[derive(Deserialize)]
pub(super) struct Connection<T> {
    #[serde(default = "Vec::new")]
    pub edges: Vec<Edge<T>>,
}

#[derive(Deserialize)]
pub(super) struct Edge<T> {
    pub node: T,
}

#[derive(Deserialize)]
pub(super) struct Department {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
}

//! The simulated account: one agent (the token's), its API sessions and their sockets,
//! visitor channels, departments; what each request does to them; what is recorded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graphql_parser::query::Field;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedSender;

use super::exec::{Op, OpKind, response_key};
use super::frames::{self, ErrorCodeStyle, ErrorName, Failure};
use super::schema::{self, RootField};

/// What a socket task is told to do.
#[derive(Debug)]
pub(super) enum Out {
    Text(String),
    /// Send this EOS frame, then close the socket.
    Eos(String),
    /// Vanish without a close frame (the client sees 1006).
    Drop,
}

/// Where a request came from: sessions are started over HTTP, everything else needs one.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin {
    Http,
    Socket(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubKind {
    Message,
    ChatActivity,
}

pub(super) struct Sub {
    id: String,
    kind: SubKind,
    op: Op,
    field: Field<'static, String>,
    /// `chatActivity(filter: {chat_activity_types})`; None lets everything through.
    activity_types: Option<Vec<String>>,
}

struct Session {
    client_id: String,
    live: bool,
    status: Option<String>,
    bucket: Option<Bucket>,
}

struct Socket {
    session: String,
    tx: UnboundedSender<Out>,
    subs: Vec<Sub>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Channel {
    lc_id: String,
    visitor_id: String,
    visitor_name: String,
    open: bool,
    /// The agent has joined (been assigned) the chat.
    agent_member: bool,
    listening: bool,
    /// Transferred, or left by the agent: someone else's chat now, even while unserved.
    handed_off: bool,
    /// What the visitor was last offered to pick from: (text shown, what picking sends).
    offer: Vec<(String, String)>,
}

struct Visitor {
    key: String,
    id: String,
}

pub(super) struct Faults {
    pub rate: Option<(f64, f64)>,
    pub fail_subscriptions: usize,
    pub unauthorized: usize,
    pub ignore_requests: usize,
    pub lose_answers: usize,
    pub answer_delay: Duration,
    pub max_subscriptions: Option<usize>,
    pub error_code_style: ErrorCodeStyle,
    pub answer_pings: bool,
    pub bad_token_status: u16,
    pub reconnect_same_url: bool,
    pub concurrent_reason: String,
    pub stop_reason: String,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            rate: None,
            fail_subscriptions: 0,
            unauthorized: 0,
            ignore_requests: 0,
            lose_answers: 0,
            answer_delay: Duration::ZERO,
            max_subscriptions: None,
            error_code_style: ErrorCodeStyle::default(),
            answer_pings: true,
            bad_token_status: 200,
            reconnect_same_url: true,
            concurrent_reason: CONCURRENT_REASON.into(),
            stop_reason: UNEXPECTED_REASON.into(),
        }
    }
}

/// EOS reason BFlynn's client handles for a second login (spec §2.5).
const CONCURRENT_REASON: &str = "concurrent session limit reached";
/// EOS reason of seed 002's example: stopAgentSession, a URL with no session.
pub(super) const UNEXPECTED_REASON: &str = "unexpected session status";

#[derive(Default)]
pub(super) struct Log {
    pub sent: HashMap<String, Vec<Value>>,
    pub transfers: Vec<(String, String)>,
    pub statuses: Vec<String>,
    pub mutations: Vec<(String, Value)>,
    pub sessions_started: usize,
    /// Requests answered `RATE_LIMITED`.
    pub rate_limited: usize,
}

pub(super) struct State {
    token: String,
    ws_base: String,
    account: String,
    agent_id: String,
    agent_name: String,
    sessions: HashMap<String, Session>,
    sockets: HashMap<u64, Socket>,
    next_socket: u64,
    channels: HashMap<String, Channel>,
    visitors: HashMap<String, Visitor>,
    pub departments: Vec<(String, String, String)>,
    last_ms: u64,
    pub log: Log,
    pub faults: Faults,
    /// Frames produced while handling something, sent after its own answer.
    outbox: Vec<(u64, Out)>,
}

impl State {
    pub(super) fn new(token: &str, ws_base: String) -> Self {
        let account = frames::random_digits(7);
        let agent_id =
            frames::encode_id(&[("localId", &frames::random_digits(10)), ("type", "AGENT")]);
        let department = frames::encode_id(&[
            ("localId", &frames::random_digits(12)),
            ("type", "DEPARTMENT"),
        ]);
        Self {
            token: token.to_string(),
            ws_base,
            account,
            agent_id,
            agent_name: "Handoff Bot".into(),
            sessions: HashMap::new(),
            sockets: HashMap::new(),
            next_socket: 0,
            channels: HashMap::new(),
            visitors: HashMap::new(),
            departments: vec![(department, "Support".into(), "ONLINE".into())],
            last_ms: 0,
            log: Log::default(),
            faults: Faults::default(),
            outbox: Vec::new(),
        }
    }

    pub(super) fn agent_id(&self) -> &str {
        &self.agent_id
    }

    pub(super) fn agent_name(&self) -> &str {
        &self.agent_name
    }

    /// A timestamp strictly after the previous one, so chat log ids (which embed it) stay
    /// unique within a burst.
    fn tick(&mut self) -> u64 {
        self.last_ms = frames::now_ms().max(self.last_ms + 1);
        self.last_ms
    }

    // ---- sessions and sockets ----------------------------------------------------------

    pub(super) fn live_sessions(&self) -> usize {
        self.sessions.values().filter(|s| s.live).count()
    }

    pub(super) fn open_sockets(&self) -> usize {
        self.sockets.len()
    }

    fn agent_online(&self) -> bool {
        self.sessions
            .values()
            .any(|s| s.live && s.status.as_deref() == Some("ONLINE"))
    }

    /// Whether an online agent session has a socket with a `message` subscription.
    pub(super) fn listening(&self) -> bool {
        self.agent_online()
            && self.sockets.values().any(|s| {
                self.sessions[&s.session].live
                    && s.subs.iter().any(|sub| sub.kind == SubKind::Message)
            })
    }

    /// Registers a socket opened on `/stream/0.1/graphql/{key}`; None when the URL names no
    /// live session.
    pub(super) fn attach(&mut self, key: &str, tx: UnboundedSender<Out>) -> Option<u64> {
        let (sid, cid) = key.split_once(':')?;
        let session = self.sessions.get(sid)?;
        if !session.live || session.client_id != cid {
            return None;
        }
        self.next_socket += 1;
        self.sockets.insert(
            self.next_socket,
            Socket {
                session: sid.to_string(),
                tx,
                subs: Vec::new(),
            },
        );
        Some(self.next_socket)
    }

    pub(super) fn detach(&mut self, socket: u64) {
        self.sockets.remove(&socket);
    }

    fn end_session(&mut self, sid: &str, reason: &str) {
        if let Some(session) = self.sessions.get_mut(sid) {
            session.live = false;
        }
        let frame = frames::eos(reason).to_string();
        let ids: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, s)| s.session == sid)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.outbox.push((id, Out::Eos(frame.clone())));
        }
    }

    pub(super) fn end_all_sessions(&mut self, reason: &str) {
        let live: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.live)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in live {
            self.end_session(&sid, reason);
        }
    }

    pub(super) fn drop_sockets(&mut self) {
        for socket in self.sockets.values() {
            let _ = socket.tx.send(Out::Drop);
        }
        if !self.faults.reconnect_same_url {
            for session in self.sessions.values_mut() {
                session.live = false;
            }
        }
    }

    pub(super) fn reset_buckets(&mut self) {
        for session in self.sessions.values_mut() {
            session.bucket = None;
        }
    }

    /// Sends what handling produced besides its answer.
    pub(super) fn flush(&mut self) {
        for (id, out) in self.outbox.drain(..) {
            if let Some(socket) = self.sockets.get(&id) {
                let _ = socket.tx.send(out);
            }
        }
    }

    pub(super) fn socket_tx(&self, socket: u64) -> Option<UnboundedSender<Out>> {
        self.sockets.get(&socket).map(|s| s.tx.clone())
    }

    // ---- WebSocket frames ----------------------------------------------------------------

    /// Handles one text frame from a socket; returns the answer, if one is due.
    pub(super) fn on_frame(&mut self, socket: u64, text: &str) -> Option<Value> {
        let style = self.faults.error_code_style;
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return Some(frames::protocol_error(None, 400, "invalid JSON", style));
        };
        if frame.get("sig").and_then(Value::as_str) == Some("PING") {
            let payload = frame.get("payload").cloned().unwrap_or(Value::Null);
            return self.faults.answer_pings.then(|| frames::pong(payload));
        }
        let id = frame.get("id");
        let kind = frame.get("type").and_then(Value::as_str);
        if !matches!(kind, Some("request" | "stop_subscription")) {
            return Some(frames::protocol_error(
                id,
                400,
                "unknown request type",
                style,
            ));
        }
        if take_one(&mut self.faults.ignore_requests) {
            return None;
        }
        let sid = self.sockets.get(&socket)?.session.clone();
        if !self.allow(&sid) {
            self.log.rate_limited += 1;
            let failure = Failure::new(
                ErrorName::RateLimited,
                429,
                "Rate limit exceeded, please retry later",
            );
            return Some(frames::error(id, &failure, style));
        }
        let payload = frame.get("payload").cloned().unwrap_or(Value::Null);
        let result = if take_one(&mut self.faults.unauthorized) {
            Err(Failure::new(ErrorName::Unauthorized, 401, "Unauthorized"))
        } else if kind == Some("stop_subscription") {
            self.stop_subscription(socket, &payload)
        } else {
            self.run(Origin::Socket(socket), &payload)
        };
        if take_one(&mut self.faults.lose_answers) {
            return None;
        }
        Some(match result {
            Ok(data) => frames::response(id, data),
            Err(failure) => frames::error(id, &failure, style),
        })
    }

    /// Token bucket per session.
    fn allow(&mut self, sid: &str) -> bool {
        let Some((burst, per_second)) = self.faults.rate else {
            return true;
        };
        let Some(session) = self.sessions.get_mut(sid) else {
            return true;
        };
        let now = Instant::now();
        let bucket = session.bucket.get_or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * per_second).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn stop_subscription(&mut self, socket: u64, payload: &Value) -> Result<Value, Failure> {
        let Some(sub_id) = payload.get("subscription_id").and_then(Value::as_str) else {
            return Err(Failure::exec("subscription_id is required"));
        };
        if let Some(s) = self.sockets.get_mut(&socket) {
            // Stopping an unknown or stopped subscription still succeeds: a client that
            // stops while its ack is in flight must not see an error.
            s.subs.retain(|sub| sub.id != sub_id);
        }
        Ok(json!({ "success": true }))
    }

    // ---- GraphQL ---------------------------------------------------------------------------

    /// Runs a request payload; `Ok` is the `data` to answer.
    pub(super) fn run(&mut self, origin: Origin, payload: &Value) -> Result<Value, Failure> {
        let op = Op::prepare(payload).map_err(Failure::exec)?;
        match op.kind() {
            OpKind::Subscription => self.subscribe(origin, op),
            kind => self.execute(origin, &op, kind),
        }
    }

    fn execute(&mut self, origin: Origin, op: &Op, kind: OpKind) -> Result<Value, Failure> {
        let table = if kind == OpKind::Query {
            schema::QUERY
        } else {
            schema::MUTATION
        };
        let root = kind.root_type();
        let fields = op.root_fields().map_err(Failure::exec)?;
        // Everything is checked before anything runs, as a GraphQL server validates the
        // whole document first: a bad selection must not follow a message already sent.
        let mut planned = Vec::new();
        for f in fields {
            if f.name == "__typename" {
                planned.push((f, None));
                continue;
            }
            let spec = find(table, &f.name).ok_or_else(|| {
                Failure::exec(format!(
                    "Cannot query field \"{}\" on type \"{root}\".",
                    f.name
                ))
            })?;
            let args = schema::coerce_args(root, spec, f, &op.vars).map_err(Failure::exec)?;
            for sample in schema::samples(spec.name) {
                op.complete(&sample, f).map_err(Failure::exec)?;
            }
            planned.push((f, Some(args)));
        }
        let mut data = Map::new();
        for (f, args) in planned {
            let value = match args {
                None => json!(root),
                Some(args) => {
                    let result = match kind {
                        OpKind::Query => Ok(self.query(&f.name)),
                        _ => self.mutate(origin, &f.name, args),
                    };
                    match result {
                        Ok(v) => op.complete(&v, f).map_err(Failure::exec)?,
                        Err(mut failure) => {
                            failure.executed = true;
                            return Err(failure);
                        }
                    }
                }
            };
            data.insert(response_key(f), value);
        }
        Ok(Value::Object(data))
    }

    fn subscribe(&mut self, origin: Origin, op: Op) -> Result<Value, Failure> {
        let Origin::Socket(socket) = origin else {
            return Err(Failure::sub_start(
                "Subscriptions are only available over the WebSocket",
            ));
        };
        let fields = op.root_fields().map_err(Failure::sub_start)?;
        let [f] = fields.as_slice() else {
            return Err(Failure::sub_start(
                "Anonymous Subscription must select only one top level field.",
            ));
        };
        let spec = find(schema::SUBSCRIPTION, &f.name).ok_or_else(|| {
            Failure::sub_start(format!(
                "Cannot query field \"{}\" on type \"Subscription\".",
                f.name
            ))
        })?;
        let args =
            schema::coerce_args("Subscription", spec, f, &op.vars).map_err(Failure::sub_start)?;
        for sample in schema::samples(spec.name) {
            op.complete(&sample, f).map_err(Failure::sub_start)?;
        }
        if take_one(&mut self.faults.fail_subscriptions) {
            return Err(Failure::new(
                ErrorName::GraphqlSubStartError,
                500,
                "Failed to start subscription",
            ));
        }
        let max = self.faults.max_subscriptions;
        let Some(s) = self.sockets.get_mut(&socket) else {
            return Err(Failure::sub_start("socket closed"));
        };
        if max.is_some_and(|max| s.subs.len() >= max) {
            return Err(Failure::new(
                ErrorName::MaxSub,
                400,
                "Maximum number of subscriptions reached",
            ));
        }
        let activity_types = args
            .get("filter")
            .and_then(|f| f.get("chat_activity_types"))
            .and_then(Value::as_array)
            .map(|types| {
                types
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            });
        let id = frames::random_lower(11);
        let field = (*f).clone();
        s.subs.push(Sub {
            id: id.clone(),
            kind: if spec.name == "message" {
                SubKind::Message
            } else {
                SubKind::ChatActivity
            },
            op,
            field,
            activity_types,
        });
        Ok(json!({ "subscription_id": id }))
    }

    fn query(&self, field: &str) -> Value {
        match field {
            "departments" => schema::connection(
                "Department",
                self.departments
                    .iter()
                    .map(|(id, name, status)| schema::department_node(id, name, status))
                    .collect(),
            ),
            _ => schema::connection("Agent", vec![self.agent_node()]),
        }
    }

    fn agent_node(&self) -> Value {
        let status = self
            .sessions
            .values()
            .filter(|s| s.live)
            .find_map(|s| s.status.clone())
            .unwrap_or_else(|| "INVISIBLE".into());
        schema::agent_node(&self.agent_id, &self.agent_name, &status)
    }

    fn mutate(
        &mut self,
        origin: Origin,
        field: &str,
        args: Map<String, Value>,
    ) -> Result<Value, Failure> {
        if field == "startAgentSession" {
            return self.start_session(&args);
        }
        let Origin::Socket(socket) = origin else {
            // Over HTTP there is no session to act as (spec §2.1: HTTP is for
            // authentication only).
            return Err(Failure::new(
                ErrorName::Unauthorized,
                401,
                "Authentication required",
            ));
        };
        self.log
            .mutations
            .push((field.to_string(), Value::Object(args.clone())));
        let str_arg = |name: &str| {
            args.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let flag = |name: &str| args.get(name).and_then(Value::as_bool).unwrap_or(false);
        match field {
            "stopAgentSession" => {
                // Invalidates every session of the agent, this one included (SCH-MUT);
                // the EOS frames go out after this answer.
                let reason = self.faults.stop_reason.clone();
                self.end_all_sessions(&reason);
                Ok(schema::success(field))
            }
            "updateAgentStatus" => {
                let status = str_arg("status");
                let sid = self.sockets[&socket].session.clone();
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.status = Some(status.clone());
                }
                self.log.statuses.push(status.clone());
                if status == "ONLINE" {
                    self.assign_waiting_chats();
                }
                Ok(json!({
                    "__typename": "UpdateAgentStatusPayload",
                    "node": schema::agent_node(&self.agent_id, &self.agent_name, &status),
                }))
            }
            "transferToDepartment" => {
                let channel = str_arg("channel_id");
                self.open_channel(&channel)?;
                let department = str_arg("department_id");
                if !self.departments.iter().any(|(id, _, _)| *id == department) {
                    return Err(Failure::exec(format!("Department {department} not found")));
                }
                self.log.transfers.push((channel.clone(), department));
                self.hand_off(&channel, flag("leave"));
                Ok(schema::success(field))
            }
            "inviteAgent" => {
                let channel = str_arg("channel_id");
                self.open_channel(&channel)?;
                self.hand_off(&channel, flag("leave"));
                Ok(schema::success(field))
            }
            "leaveChannel" => {
                let channel = str_arg("channel_id");
                self.known_channel(&channel)?;
                self.hand_off(&channel, true);
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.listening = false;
                }
                Ok(schema::success(field))
            }
            "listenVisitorChannel" => {
                let channel = str_arg("channel_id");
                self.known_channel(&channel)?;
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.listening = true;
                }
                Ok(schema::success(field))
            }
            "addTags" => {
                let channel = str_arg("channel_id");
                self.open_channel(&channel)?;
                let bad = args["tags"].as_array().into_iter().flatten().find(|t| {
                    !t.as_str()
                        .unwrap_or_default()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                });
                if let Some(bad) = bad {
                    return Err(Failure::exec(format!(
                        "Invalid tag {bad}: only alphanumeric characters, hyphens (-) and underscores (_) are allowed"
                    )));
                }
                Ok(schema::success(field))
            }
            "setTypingIndicator" => {
                self.open_channel(&str_arg("channel_id"))?;
                Ok(schema::success(field))
            }
            send if schema::SENDS.contains(&send) => self.send(send, args),
            other => Err(Failure::exec(format!("{other} is not implemented"))),
        }
    }

    fn start_session(&mut self, args: &Map<String, Value>) -> Result<Value, Failure> {
        let token = args
            .get("access_token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if take_one(&mut self.faults.unauthorized) || token != self.token {
            return Err(Failure::new(
                ErrorName::Unauthorized,
                401,
                "Invalid access token",
            ));
        }
        // One session per agent: a new login ends the others (spec §2.5, seed 002).
        let reason = self.faults.concurrent_reason.clone();
        self.end_all_sessions(&reason);
        let session_id = frames::random_lower(6);
        let client_id = frames::random_digits(10);
        self.sessions.insert(
            session_id.clone(),
            Session {
                client_id: client_id.clone(),
                live: true,
                status: None,
                bucket: None,
            },
        );
        self.log.sessions_started += 1;
        Ok(json!({
            "__typename": "StartAgentSessionPayload",
            "websocket_url": format!("{}/stream/0.1/graphql/{session_id}:{client_id}", self.ws_base),
            "session_id": session_id,
            "client_id": client_id,
        }))
    }

    fn known_channel(&self, id: &str) -> Result<&Channel, Failure> {
        self.channels
            .get(id)
            .ok_or_else(|| Failure::exec(format!("Channel {id} not found")))
    }

    fn open_channel(&self, id: &str) -> Result<&Channel, Failure> {
        let ch = self.known_channel(id)?;
        if ch.open {
            Ok(ch)
        } else {
            Err(Failure::exec(format!("Channel {id} has ended")))
        }
    }

    /// The structured and plain sends: recorded, shown to the visitor, echoed.
    fn send(&mut self, field: &str, args: Map<String, Value>) -> Result<Value, Failure> {
        let channel_id = args["channel_id"].as_str().unwrap_or_default().to_string();
        let ch = self.open_channel(&channel_id)?;
        let backoff = args.get("backoff").and_then(Value::as_bool) == Some(true);
        if !ch.agent_member && ch.handed_off && backoff {
            // "Prevent sending the message when the channel is served by another agent."
            return Ok(json!({ "__typename": schema::payload_type(field), "success": false }));
        }
        if !ch.agent_member {
            // An agent who talks into a chat serves it.
            self.agent_joins(&channel_id);
        }
        let offer = offer_of(field, &args);
        let mut record = Map::new();
        record.insert("mutation".into(), json!(field));
        record.extend(
            args.iter()
                .filter(|(k, _)| *k != "channel_id")
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        self.log
            .sent
            .entry(channel_id.clone())
            .or_default()
            .push(Value::Object(record));
        if let Some(ch) = self.channels.get_mut(&channel_id) {
            ch.offer = offer;
        }
        let content = args
            .get("msg")
            .or_else(|| args.get("panel").and_then(|p| p.get("heading")))
            .and_then(Value::as_str);
        if let Some(content) = content {
            // The agent's own messages come back on `message` (spec §4.6).
            let options = (field == "sendMessage")
                .then(|| args.get("options").cloned())
                .flatten();
            let msg_id = args
                .get("msg_id")
                .and_then(Value::as_str)
                .map(str::to_string);
            let from = schema::agent_node(&self.agent_id, &self.agent_name, &self.agent_status());
            self.post_message(&channel_id, from, content, msg_id.as_deref(), options);
        }
        Ok(schema::success(field))
    }

    fn agent_status(&self) -> String {
        self.agent_node()["status"]
            .as_str()
            .unwrap_or("ONLINE")
            .to_string()
    }

    /// The agent gives the chat up (transfer, invite, leave); with `leave` it also leaves.
    fn hand_off(&mut self, channel_id: &str, leave: bool) {
        if leave
            && self
                .channels
                .get(channel_id)
                .is_some_and(|c| c.agent_member)
        {
            let agent = schema::agent_node(&self.agent_id, &self.agent_name, &self.agent_status());
            self.post_activity(channel_id, "MemberLeaveLog", agent);
            if let Some(ch) = self.channels.get_mut(channel_id) {
                ch.agent_member = false;
            }
        }
        if let Some(ch) = self.channels.get_mut(channel_id) {
            ch.handed_off = true;
        }
    }

    /// Under assigned routing a chat goes to the online API agent, who joins it (spec §5.1).
    fn assign_waiting_chats(&mut self) {
        let waiting: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.open && !c.agent_member && !c.handed_off)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.agent_joins(&id);
        }
    }

    fn agent_joins(&mut self, channel_id: &str) {
        if let Some(ch) = self.channels.get_mut(channel_id) {
            ch.agent_member = true;
            ch.handed_off = false;
        }
        let agent = schema::agent_node(&self.agent_id, &self.agent_name, &self.agent_status());
        self.post_activity(channel_id, "MemberJoinLog", agent);
    }

    // ---- visitors ------------------------------------------------------------------------

    pub(super) fn visitor_join(&mut self, name: &str) -> String {
        let name = if name.is_empty() {
            format!("Visitor {}", frames::random_digits(8))
        } else {
            name.to_string()
        };
        let account = self.account.clone();
        // A returning visitor keeps its visitor key but gets a new chat, so a new channel id
        // (spec §4.1: one lcId under several channel ids).
        let visitor = self.visitors.entry(name.clone()).or_insert_with(|| {
            let key = frames::random_alnum(15);
            let id = frames::encode_id(&[
                ("localId", &format!("{account}.{key}")),
                ("type", "VISITOR"),
            ]);
            Visitor { key, id }
        });
        let lc_id = format!("#supportchat:{account}-{}", visitor.key);
        let visitor_id = visitor.id.clone();
        let channel_id = frames::encode_id(&[
            ("lcId", &lc_id),
            (
                "scribeId",
                &format!("2302.{account}.{}", frames::random_alnum(13)),
            ),
            ("type", "VISITOR_CHANNEL"),
        ]);
        self.channels.insert(
            channel_id.clone(),
            Channel {
                lc_id,
                visitor_id: visitor_id.clone(),
                visitor_name: name.clone(),
                open: true,
                agent_member: false,
                listening: false,
                handed_off: false,
                offer: Vec::new(),
            },
        );
        self.post_activity(
            &channel_id,
            "MemberJoinLog",
            schema::visitor_node(&visitor_id, &name),
        );
        if self.agent_online() {
            self.agent_joins(&channel_id);
        }
        channel_id
    }

    pub(super) fn visitor_says(&mut self, channel_id: &str, text: &str) -> String {
        let ch = self.visitor_channel(channel_id);
        let from = schema::visitor_node(&ch.visitor_id, &ch.visitor_name);
        self.post_message(channel_id, from, text, None, None)
    }

    /// What picking `choice` (an offered text or value, or a 0-based index) sends.
    pub(super) fn pick(&self, channel_id: &str, choice: &str) -> anyhow::Result<String> {
        let ch = self.visitor_channel(channel_id);
        if ch.offer.is_empty() {
            anyhow::bail!("the agent offered nothing to pick from in {channel_id}");
        }
        let by_text = ch.offer.iter().find(|(text, value)| {
            text.eq_ignore_ascii_case(choice) || value.eq_ignore_ascii_case(choice)
        });
        let by_index = || choice.parse::<usize>().ok().and_then(|i| ch.offer.get(i));
        match by_text.or_else(by_index) {
            Some((_, value)) => Ok(value.clone()),
            None => anyhow::bail!(
                "{choice:?} is not among the offered {:?}",
                ch.offer.iter().map(|(t, _)| t).collect::<Vec<_>>()
            ),
        }
    }

    pub(super) fn visitor_leaves(&mut self, channel_id: &str) {
        let ch = self.visitor_channel(channel_id);
        let visitor = schema::visitor_node(&ch.visitor_id, &ch.visitor_name);
        self.post_activity(channel_id, "MemberLeaveLog", visitor);
        if let Some(ch) = self.channels.get_mut(channel_id) {
            ch.open = false;
            ch.agent_member = false;
            ch.offer.clear();
        }
    }

    fn visitor_channel(&self, channel_id: &str) -> &Channel {
        match self.channels.get(channel_id) {
            Some(ch) if ch.open => ch,
            Some(_) => panic!("the chat {channel_id} has ended; a returning visitor joins anew"),
            None => panic!("no chat {channel_id}"),
        }
    }

    // ---- events --------------------------------------------------------------------------

    /// Whether the agent's subscriptions see this chat: it serves or listens to it, or the
    /// chat is unserved and not handed to someone else (seed 002: "listen to any chat
    /// messages from unserved visitors or channels served by you").
    fn reaches_agent(&self, channel_id: &str) -> bool {
        self.channels
            .get(channel_id)
            .is_some_and(|c| c.agent_member || c.listening || !c.handed_off)
    }

    fn post_message(
        &mut self,
        channel_id: &str,
        from: Value,
        content: &str,
        msg_id: Option<&str>,
        options: Option<Value>,
    ) -> String {
        let ms = self.tick();
        let lc_id = self
            .channels
            .get(channel_id)
            .map(|c| c.lc_id.clone())
            .unwrap_or_default();
        let id = frames::encode_id(&[
            ("localId", &format!("{lc_id}{}.{:03}", ms / 1000, ms % 1000)),
            ("type", "CHAT_MESSAGE"),
        ]);
        let node = schema::message_node(schema::MessageParts {
            id: &id,
            channel: channel_id,
            from,
            content,
            msg_id,
            options,
            timestamp_ms: ms,
        });
        self.publish(
            SubKind::Message,
            channel_id,
            json!({ "__typename": "MessagePayload", "node": node }),
            None,
        );
        id
    }

    fn post_activity(&mut self, channel_id: &str, typename: &str, user: Value) {
        let ms = self.tick();
        let lc_id = self
            .channels
            .get(channel_id)
            .map(|c| c.lc_id.clone())
            .unwrap_or_default();
        let kind = if typename == "MemberJoinLog" {
            "MEMBER_JOIN"
        } else {
            "MEMBER_LEAVE"
        };
        let id = frames::encode_id(&[
            ("localId", &format!("{lc_id}{}.{:03}", ms / 1000, ms % 1000)),
            ("type", &format!("CHAT_{kind}")),
        ]);
        let node = schema::member_log(typename, &id, channel_id, user, ms);
        self.publish(
            SubKind::ChatActivity,
            channel_id,
            json!({ "__typename": "ChatActivityPayload", "node": node }),
            Some(kind),
        );
    }

    fn publish(&mut self, kind: SubKind, channel_id: &str, value: Value, activity: Option<&str>) {
        if !self.reaches_agent(channel_id) {
            return;
        }
        let mut frames_out = Vec::new();
        for (socket_id, socket) in &self.sockets {
            if !self.sessions.get(&socket.session).is_some_and(|s| s.live) {
                continue;
            }
            for sub in socket.subs.iter().filter(|s| s.kind == kind) {
                let filtered_out = match (&sub.activity_types, activity) {
                    (Some(types), Some(activity)) => !types.iter().any(|t| t == activity),
                    _ => false,
                };
                if filtered_out {
                    continue;
                }
                // The selection was checked against the samples when subscribing.
                let Ok(shaped) = sub.op.complete(&value, &sub.field) else {
                    continue;
                };
                let data = json!({ response_key(&sub.field): shaped });
                frames_out.push((
                    *socket_id,
                    Out::Text(frames::data(&sub.id, data).to_string()),
                ));
            }
        }
        self.outbox.extend(frames_out);
    }
}

fn find<'t>(table: &'t [RootField], name: &str) -> Option<&'t RootField> {
    table.iter().find(|f| f.name == name)
}

fn take_one(counter: &mut usize) -> bool {
    if *counter > 0 {
        *counter -= 1;
        true
    } else {
        false
    }
}

/// The choices a send offers the visitor as (text, what picking it sends). A quick reply
/// sends its `action.value` (spec §5.4); an option sends itself, and a `/` in it makes two
/// (SCH-MUT's `options` doc).
fn offer_of(field: &str, args: &Map<String, Value>) -> Vec<(String, String)> {
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let list = |key: &str| {
        args.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match field {
        "sendQuickReplies" => list("quick_replies")
            .iter()
            .filter_map(|q| Some((text(q, "text")?, text(&q["action"], "value")?)))
            .collect(),
        "sendMessage" => list("options")
            .iter()
            .filter_map(Value::as_str)
            .flat_map(|o| o.split('/'))
            .map(|o| (o.trim().to_string(), o.trim().to_string()))
            .collect(),
        _ => list("buttons")
            .iter()
            .filter(|b| b["action"]["type"] == "QUICK_REPLY_ACTION")
            .filter_map(|b| Some((text(b, "text")?, text(&b["action"], "value")?)))
            .collect(),
    }
}

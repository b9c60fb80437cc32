//! Black-box tests of `ZendeskSim`: a real WebSocket client (tokio-tungstenite) and HTTP
//! client (reqwest) over loopback, speaking the wire of shared/spec/zendesk.md.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use handoff_simulators::ZendeskSim;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::ProtocolError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const TOKEN: &str = "good-token";
const WAIT: Duration = Duration::from_secs(3);
const MESSAGE_SUB: &str = "subscription { message { node { id content channel { id } from { __typename display_name id } } } }";

async fn sim() -> ZendeskSim {
    ZendeskSim::start("127.0.0.1:0", TOKEN).await.unwrap()
}

/// SAMPLE's login: the token in `variables`.
async fn login(sim: &ZendeskSim) -> Value {
    let body = reqwest::Client::new()
        .post(sim.graphql_url())
        .json(&json!({
            "query": "mutation($access_token: String!) { startAgentSession(access_token: $access_token) { websocket_url session_id client_id } }",
            "variables": {"access_token": TOKEN},
        }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    body["data"]["startAgentSession"].clone()
}

/// A client socket that keeps frames it was not waiting for.
struct Agent {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<Value>,
}

impl Agent {
    async fn connect(url: &str) -> Agent {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Agent {
            ws,
            pending: VecDeque::new(),
        }
    }

    /// Logs in, goes ONLINE and subscribes to `message`, as SAMPLE does on `open`.
    async fn online(sim: &ZendeskSim) -> (Agent, String) {
        let session = login(sim).await;
        let mut agent = Agent::connect(session["websocket_url"].as_str().unwrap()).await;
        let status = agent
            .request(
                json!(2),
                "mutation { updateAgentStatus(status: ONLINE) { node { id } } }",
            )
            .await;
        assert_eq!(
            status["payload"]["data"]["updateAgentStatus"]["node"]["id"],
            sim.agent_id()
        );
        let sub = agent.subscribe(1, MESSAGE_SUB).await;
        (agent, sub)
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    async fn next_raw(&mut self) -> Option<Result<Message, WsError>> {
        tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("no frame in time")
    }

    /// The next frame that satisfies `wanted`; others are kept for later.
    async fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i).unwrap();
        }
        loop {
            match self.next_raw().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                    if wanted(&frame) {
                        return frame;
                    }
                    self.pending.push_back(frame);
                }
                Some(Ok(_)) => {}
                other => panic!("socket ended while waiting: {other:?}"),
            }
        }
    }

    async fn request(&mut self, id: Value, query: &str) -> Value {
        self.request_with(id, json!({ "query": query })).await
    }

    async fn request_with(&mut self, id: Value, payload: Value) -> Value {
        self.send(json!({ "payload": payload, "type": "request", "id": id }))
            .await;
        self.expect(|f| f.get("id") == Some(&id)).await
    }

    async fn subscribe(&mut self, id: u64, query: &str) -> String {
        let ack = self.request(json!(id), query).await;
        ack["payload"]["data"]["subscription_id"]
            .as_str()
            .unwrap_or_else(|| panic!("not acknowledged: {ack}"))
            .to_string()
    }

    async fn data(&mut self, subscription: &str) -> Value {
        let frame = self
            .expect(|f| f["sig"] == "DATA" && f["subscription_id"] == subscription)
            .await;
        frame["payload"]["data"].clone()
    }

    /// Nothing arrives for a while (but events may sit in `pending`).
    async fn silent_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.ws.next()).await.is_err()
    }
}

fn send_message(channel: &str, msg: &str) -> String {
    format!("mutation {{ sendMessage(channel_id: \"{channel}\", msg: \"{msg}\") {{ success }} }}")
}

#[tokio::test]
async fn a_session_starts_with_an_inline_or_a_variable_token_and_a_wrong_one_is_refused() {
    let sim = sim().await;
    let session = login(&sim).await;
    let url = session["websocket_url"].as_str().unwrap();
    let sid = session["session_id"].as_str().unwrap();
    let cid = session["client_id"].as_str().unwrap();
    assert!(url.starts_with("ws://127.0.0.1:"), "{url}");
    assert!(
        url.ends_with(&format!("/stream/0.1/graphql/{sid}:{cid}")),
        "{url}"
    );

    let http = reqwest::Client::new();
    let inline = |token: &str| json!({ "query": format!("mutation {{ startAgentSession(access_token: \"{token}\") {{ websocket_url session_id client_id }} }}") });
    let ok: Value = http
        .post(sim.graphql_url())
        .json(&inline(TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        ok["data"]["startAgentSession"]["websocket_url"].is_string(),
        "{ok}"
    );

    let refused = http
        .post(sim.graphql_url())
        .json(&inline("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 200);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["data"], Value::Null);
    assert_eq!(refused["errors"][0]["name"], "UNAUTHORIZED");
    assert!(refused["errors"][0]["UUID"].is_string());
    assert_eq!(sim.sessions_started(), 2);
    assert_eq!(sim.live_sessions(), 1);
}

#[tokio::test]
async fn a_visitor_message_arrives_as_data_on_the_message_subscription() {
    let sim = sim().await;
    let (mut agent, sub) = Agent::online(&sim).await;
    let activity = agent
        .subscribe(
            9,
            "subscription { chatActivity(filter: {chat_activity_types: [MEMBER_JOIN, MEMBER_LEAVE]}) { node { __typename ... on MemberJoinLog { id user_name user { id display_name } } ... on MemberLeaveLog { id user_name } } } }",
        )
        .await;
    assert!(sim.wait_until_listening(WAIT).await);
    assert_eq!(sim.statuses(), ["ONLINE"]);

    let channel = sim.visitor_join("Visitor 26085828");
    let joined = agent.data(&activity).await;
    assert_eq!(
        joined["chatActivity"]["node"]["__typename"],
        "MemberJoinLog"
    );
    assert_eq!(
        joined["chatActivity"]["node"]["user_name"],
        "Visitor 26085828"
    );
    // Then the agent is assigned the chat and joins it.
    let assigned = agent.data(&activity).await;
    assert_eq!(
        assigned["chatActivity"]["node"]["user"]["id"],
        sim.agent_id()
    );

    sim.visitor_says(&channel, "hi");
    let data = agent.data(&sub).await;
    let node = &data["message"]["node"];
    assert_eq!(node["content"], "hi");
    assert_eq!(node["channel"]["id"], channel.as_str());
    assert_eq!(node["from"]["__typename"], "Visitor");
    assert_eq!(node["from"]["display_name"], "Visitor 26085828");
    assert!(node["id"].is_string());
    assert_eq!(
        node.as_object().unwrap().len(),
        4,
        "only what was selected: {node}"
    );

    sim.visitor_leaves(&channel);
    let left = agent.data(&activity).await;
    assert_eq!(left["chatActivity"]["node"]["__typename"], "MemberLeaveLog");
    let again = sim.visitor_join("Visitor 26085828");
    assert_ne!(again, channel, "a returning visitor is a new chat");
}

#[tokio::test]
async fn send_message_is_answered_with_the_same_id_type_and_echoed_as_the_agent() {
    let sim = sim().await;
    let (mut agent, sub) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");

    let by_string = agent
        .request(json!("3"), &send_message(&channel, "Hello!"))
        .await;
    assert_eq!(by_string["id"], json!("3"));
    assert_eq!(by_string["payload"]["data"]["sendMessage"]["success"], true);
    let by_number = agent
        .request(json!(3), &send_message(&channel, "Again"))
        .await;
    assert_eq!(by_number["id"], json!(3));

    let echo = agent.data(&sub).await;
    assert_eq!(echo["message"]["node"]["from"]["__typename"], "Agent");
    assert_eq!(echo["message"]["node"]["from"]["id"], sim.agent_id());
    assert_eq!(echo["message"]["node"]["content"], "Hello!");
    let sent = sim.wait_for_sent(&channel, 2, WAIT).await;
    assert_eq!(sent[0]["mutation"], "sendMessage");
    assert_eq!(sent[0]["msg"], "Hello!");
    assert_eq!(sent[1]["msg"], "Again");
}

#[tokio::test]
async fn a_visitor_picks_a_quick_reply_and_its_value_arrives_as_a_visitor_message() {
    let sim = sim().await;
    let (mut agent, sub) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    let query = format!(
        "mutation {{ sendQuickReplies(channel_id: \"{channel}\", msg: \"We have the following options. Which one is your favorite?\", quick_replies: [{{action: {{value: \"My favorite is chocolate\"}}, text: \"Chocolate\"}}, {{action: {{value: \"My favorite is vanilla\"}}, text: \"Vanilla\"}}], fallback: {{msg: \"We have the following options. Which one is your favorite?\", options: [\"Chocolate\", \"Vanilla\"]}}) {{ success }} }}"
    );
    let answer = agent.request(json!(6), &query).await;
    assert_eq!(
        answer["payload"]["data"]["sendQuickReplies"]["success"], true,
        "{answer}"
    );
    let sent = sim.sent_to(&channel);
    assert_eq!(sent[0]["quick_replies"][1]["text"], "Vanilla");
    assert_eq!(
        sent[0]["fallback"]["options"],
        json!(["Chocolate", "Vanilla"])
    );

    assert_eq!(
        sim.visitor_picks(&channel, "vanilla").unwrap(),
        "My favorite is vanilla"
    );
    let picked = agent
        .expect(|f| {
            f["subscription_id"] == sub.as_str()
                && f["payload"]["data"]["message"]["node"]["from"]["__typename"] == "Visitor"
        })
        .await;
    assert_eq!(
        picked["payload"]["data"]["message"]["node"]["content"],
        "My favorite is vanilla"
    );
    assert_eq!(
        sim.visitor_picks(&channel, "0").unwrap(),
        "My favorite is chocolate"
    );
    assert!(sim.visitor_picks(&channel, "Strawberry").is_err());
}

#[tokio::test]
async fn text_in_variables_arrives_intact_while_unescaped_quotes_in_the_query_are_a_parse_error() {
    let sim = sim().await;
    let (mut agent, _) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    let text = "He said \"hi\"\nand left \\ 😀";
    let ok = agent
        .request_with(
            json!(10),
            json!({
                "query": "mutation Send($channel: ID!, $msg: String!) { sendMessage(channel_id: $channel, msg: $msg) { success } }",
                "variables": {"channel": channel, "msg": text},
                "operationName": "Send",
            }),
        )
        .await;
    assert_eq!(
        ok["payload"]["data"]["sendMessage"]["success"], true,
        "{ok}"
    );
    // Properly escaped inline text, the emoji as a JSON-style surrogate pair.
    let escaped = agent
        .request(
            json!(11),
            &send_message(&channel, r#"He said \"hi\"\nand left \\ \uD83D\uDE00"#),
        )
        .await;
    assert_eq!(
        escaped["payload"]["data"]["sendMessage"]["success"], true,
        "{escaped}"
    );
    let sent = sim.sent_to(&channel);
    assert_eq!(sent[0]["msg"], text);
    assert_eq!(sent[1]["msg"], text);

    let broken = agent
        .request(json!(12), &send_message(&channel, "He said \"hi\""))
        .await;
    assert_eq!(broken["error_code"], 400, "{broken}");
    assert_eq!(broken["payload"]["errors"][0]["name"], "GRAPHQL_EXEC_ERROR");
    let raw_newline = agent
        .request(json!(13), &send_message(&channel, "two\nlines"))
        .await;
    assert_eq!(
        raw_newline["payload"]["errors"][0]["name"],
        "GRAPHQL_EXEC_ERROR"
    );
    let unknown = agent
        .request(
            json!(14),
            "mutation { sendMessage(channel_id: \"x\", msg: \"m\") { succes } }",
        )
        .await;
    assert!(
        unknown["payload"]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Cannot query field \"succes\""),
        "{unknown}"
    );
    let string_for_enum = agent
        .request(
            json!(15),
            "mutation { updateAgentStatus(status: \"ONLINE\") { node { id } } }",
        )
        .await;
    assert_eq!(string_for_enum["error_code"], 400, "{string_for_enum}");
    assert_eq!(sim.sent_to(&channel).len(), 2, "nothing failed was sent");
}

#[tokio::test]
async fn requests_above_the_rate_limit_get_a_rate_limited_frame() {
    let sim = sim().await;
    let (mut agent, _) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    sim.rate_limit(2, 0.001);
    for id in 20..22 {
        let ok = agent
            .request(json!(id), &send_message(&channel, "ok"))
            .await;
        assert_eq!(
            ok["payload"]["data"]["sendMessage"]["success"], true,
            "{ok}"
        );
    }
    let limited = agent
        .request(json!(22), &send_message(&channel, "too many"))
        .await;
    assert_eq!(limited["error_code"], 429, "{limited}");
    assert_eq!(limited["payload"]["errors"][0]["name"], "RATE_LIMITED");
    // PINGs are not requests.
    agent.send(json!({ "sig": "PING", "payload": 1234 })).await;
    let pong = agent.expect(|f| f["sig"] == "PONG").await;
    assert_eq!(pong["payload"], 1234);
    assert_eq!(sim.sent_to(&channel).len(), 2);
}

#[tokio::test]
async fn a_failing_subscription_start_is_a_sub_start_error_and_the_retry_succeeds() {
    let sim = sim().await;
    let session = login(&sim).await;
    let mut agent = Agent::connect(session["websocket_url"].as_str().unwrap()).await;
    sim.fail_next_subscriptions(1);
    let failed = agent.request(json!(1), MESSAGE_SUB).await;
    assert_eq!(
        failed["payload"]["errors"][0]["name"], "GRAPHQL_SUB_START_ERROR",
        "{failed}"
    );
    assert!(failed["error_code"].is_number());
    let sub = agent.subscribe(1, MESSAGE_SUB).await;
    assert!(!sub.is_empty());

    agent
        .send(json!({ "payload": {"subscription_id": sub}, "type": "stop_subscription", "id": 8 }))
        .await;
    let ack = agent.expect(|f| f["id"] == 8).await;
    assert_eq!(ack["payload"]["data"]["success"], true);

    sim.unauthorized_next();
    let refused = agent.request(json!(2), MESSAGE_SUB).await;
    assert_eq!(refused["error_code"], 401);
    assert_eq!(refused["payload"]["errors"][0]["name"], "UNAUTHORIZED");
}

#[tokio::test]
async fn a_second_login_ends_the_first_session_with_eos() {
    let sim = sim().await;
    let first_url = login(&sim).await["websocket_url"]
        .as_str()
        .unwrap()
        .to_string();
    let mut first = Agent::connect(&first_url).await;
    first.subscribe(1, MESSAGE_SUB).await;

    login(&sim).await;
    let eos = first.expect(|f| f["sig"] == "EOS").await;
    assert_eq!(eos["reason"], "concurrent session limit reached");
    match first.next_raw().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected a close frame after EOS, got {other:?}"),
    }
    assert_eq!(sim.sessions_started(), 2);
    assert_eq!(sim.live_sessions(), 1);

    // The first session's URL is dead: opening it ends in EOS at once.
    let mut stale = Agent::connect(&first_url).await;
    let eos = stale.expect(|f| f["sig"] == "EOS").await;
    assert_eq!(eos["reason"], "unexpected session status");

    sim.send_eos();
    assert_eq!(sim.live_sessions(), 0);
}

#[tokio::test]
async fn dropped_sockets_close_without_a_close_frame_and_the_same_url_works_again() {
    let sim = sim().await;
    let session = login(&sim).await;
    let url = session["websocket_url"].as_str().unwrap();
    let mut agent = Agent::connect(url).await;
    agent.subscribe(1, MESSAGE_SUB).await;
    sim.drop_sockets();
    match agent.next_raw().await {
        Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) | None => {}
        other => panic!("expected an abrupt end (1006), got {other:?}"),
    }
    let mut again = Agent::connect(url).await;
    let status = again
        .request(
            json!(2),
            "mutation { updateAgentStatus(status: ONLINE) { node { id name } } }",
        )
        .await;
    assert_eq!(
        status["payload"]["data"]["updateAgentStatus"]["node"]["name"],
        sim.agent_name()
    );
    assert_eq!(sim.live_sessions(), 1);
}

#[tokio::test]
async fn an_ignored_request_gets_no_answer_and_its_resend_does() {
    let sim = sim().await;
    let (mut agent, _) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    sim.ignore_next_requests(1);
    agent
        .send(json!({ "payload": {"query": send_message(&channel, "once")}, "type": "request", "id": 7 }))
        .await;
    assert!(agent.silent_for(Duration::from_millis(300)).await);
    let resent = agent
        .request(json!(7), &send_message(&channel, "once"))
        .await;
    assert_eq!(resent["payload"]["data"]["sendMessage"]["success"], true);
    assert_eq!(sim.sent_to(&channel).len(), 1);
}

#[tokio::test]
async fn a_chat_transferred_to_an_online_department_with_leave_no_longer_reaches_the_agent() {
    let sim = sim().await;
    sim.set_departments(&[("d-1", "Sales", "OFFLINE"), ("d-2", "Support", "ONLINE")]);
    let (mut agent, sub) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    let departments = agent
        .request(
            json!(4),
            "query { departments { edges { node { id name status } } } }",
        )
        .await;
    let edges = departments["payload"]["data"]["departments"]["edges"]
        .as_array()
        .unwrap()
        .clone();
    let online = edges
        .iter()
        .find(|e| e["node"]["status"] == "ONLINE")
        .unwrap();
    let department = online["node"]["id"].as_str().unwrap();
    let query = format!(
        "mutation {{ transferToDepartment(channel_id: \"{channel}\", department_id: \"{department}\", leave: true) {{ success }} }}"
    );
    let done = agent.request(json!(5), &query).await;
    assert_eq!(
        done["payload"]["data"]["transferToDepartment"]["success"], true,
        "{done}"
    );
    assert_eq!(sim.transfers(), [(channel.clone(), "d-2".to_string())]);

    sim.visitor_says(&channel, "are you there?");
    assert!(agent.silent_for(Duration::from_millis(200)).await);
    assert!(
        agent
            .pending
            .iter()
            .all(|f| f["subscription_id"] != sub.as_str())
    );
    let backoff = format!(
        "mutation {{ sendMessage(channel_id: \"{channel}\", msg: \"late\", backoff: true) {{ success }} }}"
    );
    let refused = agent.request(json!(3), &backoff).await;
    assert_eq!(refused["payload"]["data"]["sendMessage"]["success"], false);
}

#[tokio::test]
async fn an_answer_lost_after_running_makes_a_resend_send_twice() {
    let sim = sim().await;
    let (mut agent, _) = Agent::online(&sim).await;
    let channel = sim.visitor_join("");
    sim.lose_next_answers(1);
    sim.set_error_code_style(handoff_simulators::ErrorCodeStyle::Name);
    agent
        .send(json!({ "payload": {"query": send_message(&channel, "twice")}, "type": "request", "id": 7 }))
        .await;
    sim.wait_for_sent(&channel, 1, WAIT).await;
    let resent = agent
        .request(json!(7), &send_message(&channel, "twice"))
        .await;
    assert_eq!(resent["payload"]["data"]["sendMessage"]["success"], true);
    assert_eq!(sim.sent_to(&channel).len(), 2);

    let bad = agent.request(json!(8), "mutation { sendMessage }").await;
    assert_eq!(bad["error_code"], "GRAPHQL_EXEC_ERROR", "{bad}");
}

#[tokio::test]
async fn stop_agent_session_answers_then_ends_the_session_with_eos() {
    let sim = sim().await;
    let (mut agent, _) = Agent::online(&sim).await;
    let answer = agent
        .request(json!(30), "mutation { stopAgentSession { success } }")
        .await;
    assert_eq!(
        answer["payload"]["data"]["stopAgentSession"]["success"],
        true
    );
    let eos = agent.expect(|f| f["sig"] == "EOS").await;
    assert_eq!(eos["reason"], "unexpected session status");
    assert_eq!(sim.live_sessions(), 0);
}

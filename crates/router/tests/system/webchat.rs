//! Handoff's own web chat, as a browser uses it but over plain sockets: a session token,
//! one WebSocket per visitor, and a reconnect (to the same or another replica) that shows
//! everything once, in order. The browser itself is driven in `scripts/browser-test`.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use handoff_simulators::{Api, WebhookClient};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::helpers::*;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn chat_url(base: &str, path: &str) -> String {
    format!("{base}/webchat/v1/{ORG}/{WEBCHAT}{path}")
}

/// A new visitor's token and id.
async fn session(base: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(chat_url(base, "/session"))
        .header("origin", WEBCHAT_ORIGIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn connect(base: &str, token: &str, after: u64, origin: &str) -> Socket {
    let url = chat_url(&base.replace("http://", "ws://"), "/ws");
    let mut request = format!("{url}?token={token}&after={after}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
}

/// The next JSON frame, skipping pings.
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        match message {
            Message::Text(text) => {
                eprintln!("frame: {text}");
                return serde_json::from_str(&text).unwrap();
            }
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Frames until `n` messages have come (the `ready` frame and others are skipped).
async fn messages(socket: &mut Socket, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let frame = next_frame(socket).await;
        if frame["type"] == "message" {
            got.push(frame);
        }
    }
    got
}

async fn write(socket: &mut Socket, client_id: &str, text: &str) {
    let frame = json!({"type": "text", "text": text, "clientId": client_id});
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
}

fn shown(m: &Value) -> (String, String) {
    (
        m["from"].as_str().unwrap_or_default().to_string(),
        m["content"]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn seqs(ms: &[Value]) -> Vec<u64> {
    ms.iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn a_visitor_chats_with_the_bot_and_a_reconnect_to_another_replica_shows_it_all_once_in_order()
 {
    // Arrange
    let mut hub = TestHub::start().await;
    let (status, started) = session(&hub.inlet_url, json!({"profile": {"firstName": "Vi"}})).await;
    assert_eq!(status, 200, "{started}");
    let token = started["token"].as_str().unwrap().to_string();

    // Act: two messages, each answered, then the visitor goes away; the bot's answer to a
    // third arrives while nobody is connected
    let mut socket = connect(&hub.inlet_url, &token, 0, WEBCHAT_ORIGIN).await;
    assert_eq!(next_frame(&mut socket).await["type"], "ready");
    write(&mut socket, "c-1", "hello").await;
    let first = messages(&mut socket, 2).await;
    write(&mut socket, "c-2", "how are you").await;
    let second = messages(&mut socket, 2).await;
    write(&mut socket, "c-3", "bye for now").await;
    let echo = messages(&mut socket, 1).await;
    socket.close(None).await.unwrap();
    let (_, replica) = hub.add_inlet_replica_at().await;
    let mut again = connect(&replica, &token, 0, WEBCHAT_ORIGIN).await;
    let everything = messages(&mut again, 6).await;
    let mut resumed = connect(&replica, &token, seqs(&everything)[4], WEBCHAT_ORIGIN).await;
    let rest = messages(&mut resumed, 1).await;

    // Assert
    let seen: Vec<_> = first.iter().chain(&second).map(shown).collect();
    assert_eq!(
        seen,
        [
            ("visitor".into(), "hello".into()),
            ("bot".into(), "You said: hello".into()),
            ("visitor".into(), "how are you".into()),
            ("bot".into(), "You said: how are you".into()),
        ]
    );
    assert_eq!(
        first[0]["clientId"], "c-1",
        "the browser confirms what it sent"
    );
    assert_eq!(shown(&echo[0]).1, "bye for now");
    let all: Vec<_> = everything.iter().map(shown).collect();
    assert_eq!(&all[..4], &seen[..]);
    assert_eq!(all[5], ("bot".into(), "You said: bye for now".into()));
    let order = seqs(&everything);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert_eq!(
        &order[..4],
        &seqs(&first.iter().chain(&second).cloned().collect::<Vec<_>>())[..]
    );
    assert_eq!(
        rest[0]["seq"], everything[5]["seq"],
        "read on after the last seen"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bot_heard: Vec<_> = hub
        .bot
        .calls()
        .into_iter()
        .filter(|r| r["member"]["profile"]["firstName"] == "Vi")
        .collect();
    assert_eq!(
        bot_heard.len(),
        3,
        "each message reached the bot once, with the profile"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_visitor_handed_to_a_human_sees_who_writes_the_hubs_notices_and_the_agent() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        ..Default::default()
    })
    .await;
    let (_, started) = session(&hub.inlet_url, json!({})).await;
    let token = started["token"].as_str().unwrap();
    let visitor = started["visitorId"].as_str().unwrap();
    let mut socket = connect(&hub.inlet_url, token, 0, WEBCHAT_ORIGIN).await;

    // Act
    write(&mut socket, "c-1", "talk to a human").await;
    hub.wait_desk(Api::Livechat, 1).await;
    let member = handoff_config::member_id(WEBCHAT, visitor);
    hub.wait_conversation_state(member, "live").await;
    let member = member.to_string();
    let (status, answer) = hub
        .outlet
        .post(
            OUTLET,
            ORG,
            OUTLET_TOKEN,
            &WebhookClient::agent_reply(&member, "Hi, Alice here"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");

    // Assert: the visitor's message, the hub's notices, the agent
    let mut got = Vec::new();
    while got.last().is_none_or(|(from, _)| from != "agent") {
        got.push(shown(&messages(&mut socket, 1).await[0]));
    }
    assert_eq!(got[0], ("visitor".into(), "talk to a human".into()));
    let notices = &got[1..got.len() - 1];
    assert!(notices.iter().all(|(from, _)| from == "system"), "{got:?}");
    assert!(
        notices.contains(&("system".into(), "An agent has joined the chat.".into())),
        "{got:?}"
    );
    assert_eq!(got.last().unwrap().1, "Hi, Alice here");
    hub.shutdown().await;
}

#[tokio::test]
async fn what_a_visitor_may_not_do_is_refused_with_a_reason_and_stores_nothing() {
    // Arrange
    let hub = TestHub::start().await;
    let (_, started) = session(&hub.inlet_url, json!({})).await;
    let token = started["token"].as_str().unwrap().to_string();
    let http = reqwest::Client::new();

    // Act + Assert: a forged token, a page the chat does not allow, a chat that is not
    // served, a profile that is not a few texts
    let forged = format!("{}x", &token[..token.len() - 1]);
    let (status, answer) = session(&hub.inlet_url, json!({"token": forged})).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("invalid_token"))
    );
    let refused = http
        .post(chat_url(&hub.inlet_url, "/session"))
        .header("origin", "https://evil.example.net")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    let unknown = http
        .get(format!("{}/webchat/v1/{ORG}/nope", hub.inlet_url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let (status, answer) = session(
        &hub.inlet_url,
        json!({"profile": {"firstName": {"nested": true}}}),
    )
    .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );

    // A forged token on the socket is closed with the code the widget starts again on.
    let url = chat_url(&hub.inlet_url.replace("http://", "ws://"), "/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}?token={forged}"))
        .await
        .unwrap();
    let closed = loop {
        match socket.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(4401));
    let mut evil = format!("{url}?token={token}")
        .into_client_request()
        .unwrap();
    evil.headers_mut()
        .insert("origin", "https://evil.example.net".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(evil).await.is_err(),
        "another site's page cannot open the socket"
    );

    // Too long, too fast, not a message: each refused on the frame it names.
    let mut socket = connect(&hub.inlet_url, &token, 0, WEBCHAT_ORIGIN).await;
    assert_eq!(next_frame(&mut socket).await["type"], "ready");
    write(&mut socket, "long", &"x".repeat(201)).await;
    let error = next_frame(&mut socket).await;
    assert_eq!(
        (error["code"].as_str(), error["clientId"].as_str()),
        (Some("too_large"), Some("long"))
    );
    socket
        .send(Message::Text(
            r#"{"type":"text","text":"hi","clientId":"c","as":"x"}"#.into(),
        ))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut socket).await["code"], "bad_frame");
    // 9 a minute: bursts of 3.
    for i in 0..4 {
        write(&mut socket, &format!("fast-{i}"), "hi").await;
    }
    // The refusal is answered at once, the echoes come through the mailbox: by id.
    let mut outcomes = std::collections::BTreeMap::new();
    while outcomes.len() < 4 {
        let frame = next_frame(&mut socket).await;
        let id = frame["clientId"].as_str().unwrap_or_default().to_string();
        match frame["type"].as_str() {
            Some("error") => outcomes.insert(id, frame["code"].as_str().unwrap().to_string()),
            Some("message") if frame["from"] == "visitor" => outcomes.insert(id, "accepted".into()),
            _ => None,
        };
    }
    let outcomes: Vec<_> = outcomes.values().map(String::as_str).collect();
    assert_eq!(
        outcomes,
        ["accepted", "accepted", "accepted", "rate_limited"]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut db = hub.db().await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages m JOIN members b ON b.id = m.member_id \
         WHERE b.channel_id = $1 AND m.author = 'customer'",
    )
    .bind(WEBCHAT)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(stored, 3, "only the accepted messages");
    hub.shutdown().await;
}

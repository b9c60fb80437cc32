//! The outlet-gateway's edges alone, over `oneshot`: the agents' Webhook API and Selarti's
//! webhook. What each request becomes, and every refusal, which must store nothing. The
//! hub is a recorder that answers look-ups from members it was told about; the system
//! tests run the same edges against NATS and the router.

use axum::Router;
use axum::body::Body as HttpBody;
use axum::http::{Request, StatusCode, header};
use handoff_bus::PublishError;
use handoff_config::Channels;
use handoff_platforms::Catalog;
use handoff_platforms::hub::{Edge, LookupReply, Recorder, Serving};
use handoff_proto::Body;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

const CHANNELS: &str = "
channels:
  - id: web
    org: acme
    platform: custom
    role: inlet
    accessToken: inlet-token
    info:
      sendResponseApi: http://127.0.0.1:9/send
    bot: ai
    outlet: desk
  - id: desk
    org: acme
    platform: custom
    role: outlet
    accessToken: desk-token
    info:
      livechatApi: http://127.0.0.1:9/livechat
      relayResponseApi: http://127.0.0.1:9/relay
      sendResponseApi: http://127.0.0.1:9/send
  - id: ai
    org: acme
    platform: selarti
    role: bot
    accessToken: selarti-secret
    apiKey: key
    info:
      apiBase: http://127.0.0.1:9
      taskId: task-1
";

const DESK: &str = "c=desk&a=acme&accessToken=desk-token";

fn edges() -> (Router, Recorder) {
    let catalog = Catalog::new(Channels::parse(CHANNELS).unwrap()).unwrap();
    let hub = Recorder::default();
    let edge = Edge {
        hub: hub.clone(),
        catalog,
        body_limit: 64 * 1024,
    };
    let router = crate::webhook::router(edge.clone()).merge(crate::selarti::router(edge));
    (router, hub)
}

async fn post(router: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let request = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(HttpBody::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn agent_reply(member: &str, text: &str) -> Value {
    json!({"externalId": "agent-1", "sendToInlet": {"memberId": member, "response": {"type": "TEXT", "text": text}}})
}

fn webhook(query: &str) -> String {
    format!("/v2.4/customWebhook?{query}")
}

fn live_with(outlet: &str) -> (String, Uuid, LookupReply) {
    let member = handoff_config::member_id("web", "ann");
    let conversation = Uuid::now_v7();
    let reply = LookupReply {
        found: true,
        member_id: Some(member),
        state: Serving::Live,
        conversation_id: Some(conversation),
        outlet_channel: outlet.into(),
        claimed: false,
        error: None,
    };
    (member.to_string(), conversation, reply)
}

#[tokio::test]
async fn an_agent_reply_to_a_member_live_with_this_outlet_becomes_one_agent_message() {
    let (router, hub) = edges();
    let (member, conversation, reply) = live_with("desk");
    hub.knows(&member, reply);

    let (status, answer) = post(&router, &webhook(DESK), agent_reply(&member, "Hello")).await;

    assert_eq!(status, StatusCode::OK, "{answer}");
    let stored = hub.accepted();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].member_id, member);
    assert_eq!(stored[0].conversation_id, conversation.to_string());
    assert_eq!(stored[0].channel, "desk");
    assert!(matches!(stored[0].body, Some(Body::AgentMessage(_))));
    // The look-up was asked behind the desk's wall.
    assert_eq!(hub.lookups()[0].caller.as_deref(), Some("desk"));
}

#[tokio::test]
async fn an_agent_reply_is_404_for_an_unknown_member_and_409_when_not_live_with_this_outlet() {
    let (router, hub) = edges();
    let (member, _, mut reply) = live_with("another-desk");
    hub.knows(&member, reply.clone());

    let unknown = post(
        &router,
        &webhook(DESK),
        agent_reply(&Uuid::now_v7().to_string(), "x"),
    )
    .await;
    let elsewhere = post(&router, &webhook(DESK), agent_reply(&member, "x")).await;
    reply.state = Serving::Pending;
    reply.outlet_channel = "desk".into();
    hub.knows(&member, reply);
    let pending = post(&router, &webhook(DESK), agent_reply(&member, "x")).await;

    assert_eq!(
        (unknown.0, unknown.1["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_member"))
    );
    assert_eq!(
        (elsewhere.0, elsewhere.1["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("member_not_live"))
    );
    assert_eq!(
        (pending.0, pending.1["error"]["code"].clone()),
        (StatusCode::CONFLICT, json!("member_not_live"))
    );
    assert!(hub.accepted().is_empty());
}

#[tokio::test]
async fn an_agent_command_must_name_its_conversation_and_an_unknown_one_is_404() {
    let (router, hub) = edges();
    let command = |to: Option<&str>| {
        let mut event =
            json!({"from": "agent-1", "type": "TEXT", "data": {"text": "/done"}, "timestamp": 1});
        if let Some(to) = to {
            event["to"] = json!(to);
        }
        json!({"externalId": "agent-1", "sendToBot": {"messageEvent": event}})
    };

    let unnamed = post(&router, &webhook(DESK), command(None)).await;
    let unknown = post(&router, &webhook(DESK), command(Some("ticket-9"))).await;

    assert_eq!(unnamed.0, StatusCode::BAD_REQUEST, "{}", unnamed.1);
    assert_eq!(
        unnamed.1["error"]["field"],
        json!("sendToBot.messageEvent.to")
    );
    assert_eq!(unknown.0, StatusCode::NOT_FOUND, "{}", unknown.1);
    assert_eq!(unknown.1["error"]["code"], json!("unknown_conversation"));
    assert!(hub.accepted().is_empty());
}

#[tokio::test]
async fn an_agent_with_another_channels_token_or_an_inlets_is_refused_before_any_look_up() {
    let (router, hub) = edges();
    let (member, _, reply) = live_with("desk");
    hub.knows(&member, reply);

    let wrong = post(
        &router,
        &webhook("c=desk&a=acme&accessToken=inlet-token"),
        agent_reply(&member, "x"),
    )
    .await;
    let inlet = post(
        &router,
        &webhook("c=web&a=acme&accessToken=inlet-token"),
        agent_reply(&member, "x"),
    )
    .await;

    assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    assert_eq!(inlet.0, StatusCode::NOT_FOUND);
    assert!(hub.lookups().is_empty());
    assert!(hub.accepted().is_empty());
}

fn selarti_says(member: &str, message_id: &str) -> Value {
    json!({"external_chat_id": member, "message_id": message_id, "message_type": "bot", "message_text": "Hi from the AI"})
}

#[tokio::test]
async fn a_selarti_answer_for_a_member_of_its_inlets_becomes_one_bot_reply_stored_once() {
    let (router, hub) = edges();
    let (member, _, mut reply) = live_with("");
    reply.state = Serving::Bot;
    reply.conversation_id = None;
    hub.knows(&member, reply);

    let first = post(
        &router,
        "/selarti/ai/selarti-secret",
        selarti_says(&member, "s-1"),
    )
    .await;
    let again = post(
        &router,
        "/selarti/ai/selarti-secret",
        selarti_says(&member, "s-1"),
    )
    .await;

    assert_eq!(first.0, StatusCode::OK, "{}", first.1);
    assert_eq!(again.1["duplicate"], json!(true));
    let stored = hub.accepted();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].channel.as_str(), stored[0].member_id.as_str()),
        ("ai", member.as_str())
    );
    assert!(matches!(stored[0].body, Some(Body::BotReply(_))));
}

#[tokio::test]
async fn selarti_refusals_are_specific_and_store_nothing() {
    let (router, hub) = edges();
    let (member, _, reply) = live_with("");
    hub.knows(&member, reply);
    let stranger = Uuid::now_v7().to_string();

    let wrong_secret = post(&router, "/selarti/ai/guess", selarti_says(&member, "s-1")).await;
    let unknown_chat = post(
        &router,
        "/selarti/ai/selarti-secret",
        selarti_says(&stranger, "s-2"),
    )
    .await;
    let no_id = post(
        &router,
        "/selarti/ai/selarti-secret",
        json!({"external_chat_id": member}),
    )
    .await;

    assert_eq!(
        (wrong_secret.0, wrong_secret.1["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    assert_eq!(
        (unknown_chat.0, unknown_chat.1["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, json!("unknown_chat"))
    );
    assert_eq!(
        (no_id.0, no_id.1["error"]["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("message_id"))
    );
    assert!(hub.accepted().is_empty());
}

#[tokio::test]
async fn an_unreachable_bus_is_503_on_both_edges_and_its_detail_stays_in_the_log() {
    let (router, hub) = edges();
    let (member, _, reply) = live_with("desk");
    hub.knows(&member, reply);
    hub.refuse_with(|| PublishError::Unavailable("nats://user:hunter2@10.0.0.7:4222".into()));

    let agent = post(&router, &webhook(DESK), agent_reply(&member, "x")).await;
    let selarti = post(
        &router,
        "/selarti/ai/selarti-secret",
        selarti_says(&member, "s-1"),
    )
    .await;

    for (status, answer) in [agent, selarti] {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
        assert!(!answer.to_string().contains("hunter2"), "{answer}");
        assert!(!answer.to_string().contains("10.0.0.7"), "{answer}");
    }
}

#[tokio::test]
async fn a_takeover_the_router_did_not_grant_is_409_member_taken_and_stores_nothing() {
    let (router, hub) = edges();
    // The member is already live with this desk: another agent was quicker.
    let (member, _, reply) = live_with("desk");
    hub.knows(&member, reply);
    let takeover = json!({"externalId": "agent-2", "sendToBot": {"messageEvent": {
        "from": "agent-2", "to": member, "type": "TEXT", "data": {"text": "Takeover"},
        "timestamp": 1}}});

    let (status, answer) = post(&router, &webhook(DESK), takeover).await;

    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_eq!(answer["error"]["code"], "member_taken");
    assert!(hub.accepted().is_empty());
    let asked = &hub.lookups()[0];
    assert!(asked.claim, "the look-up asked to claim the member");
    assert_eq!(asked.member_id.as_deref(), Some(member.as_str()));
}

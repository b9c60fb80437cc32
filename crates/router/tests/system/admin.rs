//! The admin API, driven the way operators drive it: through `handoffctl` against a
//! running router, with the gateways following the channels catalog live.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::Value;

use crate::helpers::*;

async fn ctl_json(hub: &TestHub, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out) = hub.handoffctl(&all).await;
    assert!(ok, "handoffctl {args:?} failed: {out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("handoffctl {args:?}: {e}: {out}"))
}

async fn ctl(hub: &TestHub, args: &[&str]) -> String {
    let (ok, out) = hub.handoffctl(args).await;
    assert!(ok, "handoffctl {args:?} failed: {out}");
    out
}

/// A second web inlet on the same customer platform, as an operator would add it.
fn new_inlet(hub: &TestHub) -> String {
    format!(
        r#"
channels:
  - id: web2
    org: {ORG}
    platform: custom
    role: inlet
    accessToken: web2-token-123
    info:
      sendResponseApi: {send}
    bot: demo-bot
    outlet: {OUTLET}
"#,
        send = hub.customer.url("/send"),
    )
}

async fn say_on_web2(hub: &TestHub, who: &str, text: &str) -> (u16, Value) {
    let body = WebhookClient::customer_text(who, "web2", text, handoff_bus::now_ms());
    hub.inlet
        .post("web2", ORG, "web2-token-123", &body, &[])
        .await
        .unwrap()
}

async fn wait_until<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_operator_adds_disables_and_enables_a_channel_and_the_running_gateways_follow() {
    let hub = TestHub::start().await;

    // The channels file is what runs at first.
    let list = ctl_json(&hub, &["channels"]).await;
    let ids: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&INLET) && ids.contains(&OUTLET), "{list}");
    let table = ctl(&hub, &["channels"]).await;
    assert!(table.starts_with("ID"), "a table by default: {table}");
    let web = ctl_json(&hub, &["channels", "get", INLET]).await;
    assert_eq!(web["enabled"], true);
    assert_eq!(web["outlet"], OUTLET);
    assert!(
        !web.to_string().contains(INLET_TOKEN),
        "no secret is shown: {web}"
    );

    // A dry run changes nothing; a bad document is refused whole.
    let file = std::env::temp_dir().join(format!("web2-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&file, new_inlet(&hub)).unwrap();
    let path = file.to_str().unwrap();
    let dry = ctl_json(&hub, &["apply", "-f", path, "--dry-run"]).await;
    assert_eq!(dry["created"], serde_json::json!(["web2"]));
    assert_eq!(say_on_web2(&hub, "carol", "hi").await.0, 404);
    let bad = std::env::temp_dir().join(format!("bad-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(
        &bad,
        new_inlet(&hub).replace("outlet: desk", "outlet: no-such-desk"),
    )
    .unwrap();
    let (ok, _) = hub
        .handoffctl(&["apply", "-f", bad.to_str().unwrap()])
        .await;
    assert!(!ok, "a document linking to a missing channel is refused");
    // The router's environment is not the operator's to read: `${…}` is refused whole.
    std::fs::write(
        &bad,
        new_inlet(&hub).replace("web2-token-123", "${HANDOFF_DATABASE__URL}"),
    )
    .unwrap();
    let (ok, _) = hub
        .handoffctl(&["apply", "-f", bad.to_str().unwrap()])
        .await;
    assert!(!ok, "a document with an environment reference is refused");
    assert_eq!(say_on_web2(&hub, "carol", "hi").await.0, 404);

    // Applied, the new channel takes customers at once: no restart.
    let applied = ctl_json(&hub, &["apply", "-f", path]).await;
    assert_eq!(applied["created"], serde_json::json!(["web2"]));
    let again = ctl_json(&hub, &["apply", "-f", path]).await;
    assert_eq!(again["unchanged"], serde_json::json!(["web2"]));
    wait_until("the inlet-gateway serves web2", async || {
        say_on_web2(&hub, "carol", "hello").await.0 == 200
    })
    .await;
    let answers = hub.wait_received("carol", 1).await;
    assert_eq!(text_of(&answers[0]), "You said: hello");

    // Disabled, it refuses new messages with a clear error; enabled, it takes them again.
    let disabled = ctl_json(&hub, &["channels", "disable", "web2"]).await;
    assert_eq!(disabled["enabled"], false);
    wait_until("web2 refuses", async || {
        say_on_web2(&hub, "carol", "are you there?").await.0 == 409
    })
    .await;
    let (status, body) = say_on_web2(&hub, "carol", "still?").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("channel_disabled"))
    );
    ctl(&hub, &["channels", "enable", "web2"]).await;
    wait_until("web2 takes messages again", async || {
        say_on_web2(&hub, "carol", "back").await.0 == 200
    })
    .await;
    let (ok, _) = hub.handoffctl(&["channels", "disable", "nope"]).await;
    assert!(!ok, "an unknown channel is refused");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_operator_finds_a_member_hands_them_off_reads_the_transcript_closes_and_traces_a_message()
 {
    let hub = TestHub::start().await;
    let (status, accepted) = hub.say("dora", "hello").await;
    assert_eq!(status, 200);
    let event_id = accepted["eventId"].as_str().unwrap().to_string();
    hub.wait_received("dora", 1).await;

    // Found by channel and external id, and by id: served by the bot.
    let member = ctl_json(
        &hub,
        &["member", "--channel", INLET, "--external-id", "dora"],
    )
    .await;
    let member_id = member["id"].as_str().unwrap().to_string();
    assert_eq!(member_id, crate::helpers::member_id("dora"));
    assert_eq!(member["state"], "bot");
    assert_eq!(
        ctl_json(&hub, &["member", "--id", &member_id]).await["externalId"],
        "dora"
    );

    // Handed off by the operator: the desk is asked, the member goes live.
    let handoff = ctl_json(&hub, &["handoff", &member_id, "--reason", "VIP customer"]).await;
    assert!(handoff["eventId"].as_str().is_some_and(|e| !e.is_empty()));
    let calls = hub.wait_desk(Api::Livechat, 1).await;
    assert!(
        calls[0].body.to_string().contains("VIP customer"),
        "{:?}",
        calls[0].body
    );
    hub.wait_conversation_state(member_id.parse().unwrap(), "live")
        .await;
    let (ok, _) = hub.handoffctl(&["handoff", &member_id]).await;
    assert!(
        !ok,
        "a member already with a human cannot be handed off again"
    );

    // Listed among the open conversations, and read with its transcript.
    let open = ctl_json(&hub, &["conversations", "--channel", INLET]).await;
    let conversation = open["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["memberId"] == member_id.as_str())
        .unwrap_or_else(|| panic!("{open}"))
        .clone();
    assert_eq!(conversation["state"], "live");
    let id = conversation["id"].as_str().unwrap().to_string();
    let table = ctl(&hub, &["conversations"]).await;
    assert!(table.contains(&id), "{table}");
    let detail = ctl_json(&hub, &["conversations", "get", &id]).await;
    assert_eq!(detail["conversation"]["outletChannel"], OUTLET);
    let texts: Vec<&str> = detail["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap_or_default())
        .collect();
    assert!(!texts.is_empty(), "{detail}");

    // Closed by the operator: the member is back with the bot, the reason is kept.
    ctl_json(&hub, &["close", &id, "--reason", "resolved by ops"]).await;
    let closed = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = ctl_json(&hub, &["conversations", "--state", "closed"]).await;
            if let Some(c) = list["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id.as_str())
            {
                break c.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never closed: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(closed["closeReason"], "resolved by ops");
    assert_eq!(
        ctl_json(&hub, &["member", "--id", &member_id]).await["state"],
        "bot"
    );
    let (ok, _) = hub.handoffctl(&["close", &id]).await;
    assert!(!ok, "a closed conversation cannot be closed again");

    // Where is my message: accepted, routed, the bot called, the answer delivered.
    let deadline = tokio::time::Instant::now() + WAIT;
    let trace = loop {
        let trace = ctl_json(&hub, &["trace", &event_id]).await;
        let steps: Vec<(String, String)> = trace["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["step"].as_str().unwrap_or_default().to_string(),
                    s["service"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let has = |step: &str, service: &str| steps.iter().any(|s| s.0 == step && s.1 == service);
        if has("routed", "router")
            && has("delivered", "outlet-gateway")
            && has("delivered", "inlet-gateway")
        {
            break trace;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "incomplete trace: {trace}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(trace["memberId"], member_id.as_str());
    assert_eq!(trace["steps"][0]["step"], "accepted");
    let table = ctl(&hub, &["trace", &event_id]).await;
    assert!(table.contains("delivered"), "{table}");
    let (ok, _) = hub.handoffctl(&["trace", "no-such-message"]).await;
    assert!(!ok);

    // Dead letters go through the same API (replay: see `poison`): one given up for good.
    let letters = ctl_json(&hub, &["dead-letters", "list"]).await;
    assert!(letters["deadLetters"].as_array().is_none_or(Vec::is_empty));
    hub.customer.set_failing_for("erin", Some(400));
    assert_eq!(hub.say("erin", "hello").await.0, 200);
    let parked = hub.wait_dead_letters(1).await;
    let id = parked[0]["id"].as_i64().unwrap().to_string();
    let dropped = ctl_json(&hub, &["dead-letters", "drop", &id]).await;
    assert_eq!(dropped["state"], "dropped");
    assert!(hub.wait_dead_letters(0).await.is_empty());
    let all = ctl_json(&hub, &["dead-letters", "list", "--all"]).await;
    assert_eq!(all["deadLetters"][0]["state"], "dropped");
    hub.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_refuses_a_wrong_token_and_answers_health_and_reflection_without_one() {
    let hub = TestHub::start().await;
    let url = hub.admin_url.clone().unwrap();
    let (ok, _) = hub.handoffctl(&["--token", "wrong", "channels"]).await;
    assert!(!ok, "a wrong token is refused");

    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "handoff.admin.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"handoff.admin.v1.Admin".to_string()),
        "{names:?}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn without_a_catalog_key_channels_come_from_the_file_and_cannot_change_at_runtime() {
    let hub = TestHub::start_with(HubOptions {
        shared_catalog: false,
        ..Default::default()
    })
    .await;
    let list = ctl_json(&hub, &["channels"]).await;
    assert!(list.to_string().contains(INLET), "{list}");
    let (ok, _) = hub.handoffctl(&["channels", "disable", INLET]).await;
    assert!(!ok, "refused: there is no shared catalog to change");
    assert_eq!(hub.say("fay", "hi").await.0, 200);
    hub.wait_received("fay", 1).await;
    hub.shutdown().await;
}

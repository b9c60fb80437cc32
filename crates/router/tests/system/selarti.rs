//! Selarti's AI as the bot of the `ai-web` inlet, against the simulator over real HTTP.

use std::time::{Duration, Instant};

use handoff_simulators::{Api, WebhookClient};
use serde_json::{Value, json};

use crate::helpers::*;

async fn authors(hub: &TestHub, member: &str) -> Vec<(String, String)> {
    let mut db = hub.db().await;
    sqlx::query_as(
        "SELECT author, coalesce(content->>'text', '') FROM messages
         WHERE member_id = $1::uuid ORDER BY id",
    )
    .bind(member)
    .fetch_all(&mut db)
    .await
    .unwrap()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_customer_chats_with_the_selarti_ai_and_its_answers_arrive_in_order() {
    // Arrange
    let hub = TestHub::start().await;
    let mut answers = Vec::new();

    // Act
    for (i, text) in ["hello", "what do you sell?", "thanks"].iter().enumerate() {
        let (status, body) = hub.say_to_ai("sel-1", text).await;
        assert_eq!(status, 200, "{body}");
        let got = hub.wait_received("sel-1", i + 1).await;
        answers = got.iter().map(text_of).collect::<Vec<_>>();
    }

    // Assert
    assert_eq!(
        answers,
        ["AI: hello", "AI: what do you sell?", "AI: thanks"]
    );
    let sends = hub.selarti.sends();
    assert_eq!(sends.len(), 3);
    assert_eq!(
        sends[0],
        json!({"task": "task-1", "chat_id": ai_member_id("sel-1"), "message": "hello"})
    );
    // The echoes of what Handoff sent are not delivered, nor recorded twice.
    let lines = authors(&hub, &ai_member_id("sel-1")).await;
    let who: Vec<&str> = lines.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        who,
        ["customer", "bot", "customer", "bot", "customer", "bot"]
    );
    // The AI's facts about the member are kept in its meta.
    let mut db = hub.db().await;
    let meta: Value = sqlx::query_scalar("SELECT meta FROM members WHERE id = $1::uuid")
        .bind(ai_member_id("sel-1"))
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        meta["threadId"],
        format!("thread-{}", ai_member_id("sel-1"))
    );
    assert_eq!(
        meta["isBot"], true,
        "`да` in the AI's answer is read as yes"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn the_ai_hands_the_customer_to_the_desk_with_its_links_and_done_gives_them_back() {
    // Arrange
    let hub = TestHub::start().await;
    hub.say_to_ai("sel-2", "my order is late").await;
    hub.wait_received("sel-2", 1).await;

    // Act: the AI calls an operator.
    hub.say_to_ai("sel-2", "I want a human").await;
    let livechat = hub.wait_desk(Api::Livechat, 1).await;

    // Assert: the desk gets the dialog and Selarti's links.
    let body = &livechat[0].body;
    let member = ai_member_id("sel-2");
    assert_eq!(
        body["meta"]["panelUrl"],
        format!("https://selarti.example/panel/{member}")
    );
    assert_eq!(
        body["meta"]["shareUrl"],
        format!("https://selarti.example/share/{member}")
    );
    let summary = body["assignmentDetails"]["summary"].as_str().unwrap();
    assert!(
        summary.contains("Customer: my order is late")
            && summary.contains("Bot: AI: my order is late"),
        "{summary}"
    );
    let got = hub.wait_received("sel-2", 2).await;
    assert_eq!(text_of(&got[1]), "I am calling a colleague for you.");

    // Act: the agent ends the chat; the customer writes again.
    wait_for("the member is live", async || {
        let mut db = hub.db().await;
        sqlx::query_scalar::<_, String>(
            "SELECT state FROM conversations WHERE member_id = $1::uuid AND state = 'live'",
        )
        .bind(&member)
        .fetch_optional(&mut db)
        .await
        .unwrap()
        .is_some()
    })
    .await;
    let done = WebhookClient::agent_command("T-1", "done", now_ms());
    let (status, answer) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &done, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let before = hub.selarti.sends().len();
    let ended = hub.received("sel-2").len() + 1;
    hub.wait_received("sel-2", ended).await;
    hub.say_to_ai("sel-2", "back again").await;

    // Assert: Selarti answers again.
    let got = hub.wait_received("sel-2", ended + 1).await;
    assert_eq!(text_of(got.last().unwrap()), "AI: back again");
    assert_eq!(hub.selarti.sends().len(), before + 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_message_still_goes_through() {
    // Arrange
    let hub = TestHub::start().await;
    hub.say_to_ai("sel-3", "first").await;
    hub.wait_received("sel-3", 1).await;
    assert_eq!(hub.selarti.auth_calls(), 1, "the token is cached");

    // Act
    hub.selarti.expire_tokens();
    hub.say_to_ai("sel-3", "second").await;

    // Assert
    let got = hub.wait_received("sel-3", 2).await;
    assert_eq!(text_of(&got[1]), "AI: second");
    assert_eq!(hub.selarti.auth_calls(), 2, "one refresh");
    hub.shutdown().await;
}

#[tokio::test]
async fn duplicate_out_of_order_and_malformed_webhooks_have_one_effect_or_a_clear_error() {
    // Arrange
    let hub = TestHub::start().await;
    hub.selarti.duplicate_webhooks(true);
    hub.selarti.reorder_webhooks(true);
    hub.say_to_ai("sel-4", "one").await;
    hub.wait_received("sel-4", 1).await;
    hub.say_to_ai("sel-4", "my phone is 5551234").await;
    hub.wait_received("sel-4", 2).await;
    let member = ai_member_id("sel-4");

    // Act
    let unknown = hub
        .selarti
        .post_webhook(
            &json!({"message_id": "x1", "external_chat_id": uuid::Uuid::new_v4().to_string(),
                              "message_type": "bot", "message_text": "hi"}),
        )
        .await
        .unwrap();
    let malformed = hub
        .selarti
        .post_webhook(&json!({"message_id": "x2", "external_chat_id": member,
                              "message_type": "bot", "operator": "perhaps"}))
        .await
        .unwrap();
    let no_chat = hub
        .selarti
        .post_webhook(&json!({"message_id": "x3", "message_type": "bot"}))
        .await
        .unwrap();
    let wrong_secret = reqwest::Client::new()
        .post(format!(
            "{}/selarti/{SELARTI}/not-the-secret",
            hub.outlet.base_url()
        ))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .status();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Assert: each answer once, though each webhook came twice and echoes came late.
    let got: Vec<String> = hub.received("sel-4").iter().map(text_of).collect();
    assert_eq!(got, ["AI: one", "Thank you, we will call you."]);
    assert_eq!(unknown.0, 404, "{}", unknown.1);
    assert_eq!(unknown.1["error"]["code"], "unknown_chat");
    assert_eq!(malformed.0, 400);
    assert_eq!(malformed.1["error"]["field"], "operator");
    assert_eq!(no_chat.0, 400);
    assert_eq!(no_chat.1["error"]["field"], "external_chat_id");
    assert_eq!(wrong_secret.as_u16(), 404);
    let statuses = hub.selarti.webhook_statuses();
    assert!(
        statuses.keys().all(|s| [200, 400, 404].contains(s)),
        "{statuses:?}"
    );
    // The contacts the AI collected are in the member's profile.
    let mut db = hub.db().await;
    let (profile, meta): (Value, Value) =
        sqlx::query_as("SELECT profile, meta FROM members WHERE id = $1::uuid")
            .bind(&member)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(profile["contacts"]["phone"], "my phone is 5551234");
    assert_eq!(profile["getContact"], true);
    assert_eq!(meta["interest"], "high");
    let lines = authors(&hub, &member).await;
    assert_eq!(lines.iter().filter(|(a, _)| a == "bot").count(), 2);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_ai_answering_after_two_seconds_serves_200_customers_at_once_not_one_after_another() {
    // Arrange
    let hub = TestHub::start().await;
    hub.selarti.set_think_time(Duration::from_secs(2));
    let mut arrivals = hub.customer.tap();

    // Act
    let sends = (0..200).map(|i| {
        let hub = &hub;
        async move {
            let sent = Instant::now();
            let (status, _) = hub.say_to_ai(&format!("crowd-{i}"), "hi").await;
            assert_eq!(status, 200);
            (format!("crowd-{i}"), sent)
        }
    });
    let sent: std::collections::HashMap<String, Instant> =
        futures::future::join_all(sends).await.into_iter().collect();
    let mut waited = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while waited.len() < sent.len() {
        let (at, call) = tokio::time::timeout_at(deadline, arrivals.recv())
            .await
            .expect("every customer answered")
            .expect("the platform is running");
        let who = call.body["member"]["externalId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(start) = sent.get(&who) {
            waited.entry(who).or_insert(at - *start);
        }
    }

    // Assert
    let mut waits: Vec<Duration> = waited.into_values().collect();
    waits.sort();
    let longest = waits.last().copied().unwrap_or_default();
    // One after another, the last would wait 400 s (a partition at a time, 100 s; even 34
    // calls at once would take 12 s). The 3-s target of a release build is the benchmark's
    // to show; this debug build shares 2 cores with its own Postgres, NATS and the other
    // tests, which on a slow machine stretched every answer (the fastest to 4.6 s), so the
    // bound tells "at once" from "a few at a time", not fast from slow.
    assert!(
        longest < Duration::from_secs(12),
        "the slowest waited {longest:?} (fastest {:?}, median {:?})",
        waits[0],
        waits[waits.len() / 2]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn the_api_key_its_tokens_and_the_webhook_secret_appear_in_no_log_line() {
    // Arrange: every log line of the services, at trace level. The simulated Selarti's own
    // HTTP client (in this process) is not captured: it must know the secret.
    let logs = ServiceLogs::default();
    let hub = TestHub::start_with(HubOptions {
        service_logs: Some(logs.clone()),
        ..Default::default()
    })
    .await;

    // Act: a chat, a refreshed token, a handoff with links, and a wrong secret in the URL
    hub.say_to_ai("sel-logs", "first").await;
    hub.wait_received("sel-logs", 1).await;
    hub.selarti.expire_tokens();
    hub.say_to_ai("sel-logs", "second").await;
    hub.wait_received("sel-logs", 2).await;
    hub.say_to_ai("sel-logs", "an operator please").await;
    hub.wait_desk(Api::Livechat, 1).await;
    let wrong = reqwest::Client::new()
        .post(format!(
            "{}/selarti/{SELARTI}/not-the-secret",
            hub.outlet.base_url()
        ))
        .json(&json!({"message_id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404, "a wrong secret is an unknown URL");

    // Assert (once the services' last lines are read)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = logs.lock().unwrap().join("\n");
    let tokens = hub.selarti.issued_tokens();
    assert_eq!(tokens.len(), 2, "one token, then one refresh");
    assert!(
        text.lines().count() > 100 && text.contains("/selarti/{channel}/{secret}"),
        "the capture saw the services at work, webhooks included: {} lines, route {}",
        text.lines().count(),
        text.contains("/selarti/{channel}/{secret}")
    );
    for (what, secret) in [("API key", SELARTI_KEY), ("webhook secret", SELARTI_SECRET)]
        .into_iter()
        .chain(tokens.iter().map(|t| ("token", t.as_str())))
    {
        let leaks: Vec<&str> = text.lines().filter(|l| l.contains(secret)).collect();
        assert!(leaks.is_empty(), "the {what} is in the logs: {leaks:?}");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_bot_cannot_grow_a_members_profile_past_its_bound_and_the_answer_still_arrives() {
    // Arrange: a customer of the AI, with a phone number in their profile.
    let hub = TestHub::start().await;
    hub.say_to_ai("sel-big", "my phone is 5551234").await;
    hub.wait_received("sel-big", 1).await;
    let member = ai_member_id("sel-big");

    // Act: the AI sends contacts of 100 KB with its answer.
    let (status, body) = hub
        .selarti
        .post_webhook(&json!({
            "message_id": "huge-contacts",
            "external_chat_id": member,
            "message_type": "bot",
            "message_text": "Noted.",
            "contacts": {"notes": "n".repeat(100 * 1024)},
        }))
        .await
        .unwrap();

    // Assert: the answer is delivered; the profile keeps what it had, under its bound.
    assert_eq!(status, 200, "{body}");
    let got = hub.wait_received("sel-big", 2).await;
    assert_eq!(text_of(&got[1]), "Noted.");
    let mut db = hub.db().await;
    let (profile, size): (Value, i32) = sqlx::query_as(
        "SELECT profile, octet_length(profile::text) FROM members WHERE id = $1::uuid",
    )
    .bind(&member)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(size < 64 * 1024, "the profile grew to {size} bytes");
    assert_eq!(
        profile["contacts"]["phone"], "my phone is 5551234",
        "{profile}"
    );
    hub.shutdown().await;
}

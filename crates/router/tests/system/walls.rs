//! Walls between tenants: a channel acts only on the members behind its own links, and no
//! secret in a channel URL travels to a third party or a log. Org `acme` and org `globex`
//! share the simulators; ids are public, so the tests use the real ones.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_selarti_webhook_cannot_reach_a_customer_its_bot_does_not_answer() {
    // Arrange: globex's customer, and acme's customer of an inlet answered by another bot.
    let hub = TestHub::start().await;
    hub.say_elsewhere("gx-1", "hello").await;
    hub.say("acme-1", "hello").await;
    assert_eq!(hub.wait_received_elsewhere("gx-1", 1).await.len(), 1);
    assert_eq!(hub.wait_received("acme-1", 1).await.len(), 1);

    // Act: acme's Selarti webhook, with its right secret, names each of them.
    let mut answers = Vec::new();
    for (i, member) in [other_member_id("gx-1"), member_id("acme-1")]
        .iter()
        .enumerate()
    {
        answers.push(
            hub.selarti
                .post_webhook(&json!({
                    "message_id": format!("inject-{i}"),
                    "external_chat_id": member,
                    "message_type": "bot",
                    "message_text": "Injected: your password please",
                    "operator": "yes",
                    "panel_url": "https://evil.example/panel",
                }))
                .await
                .unwrap(),
        );
    }
    // A customer the AI does answer is reached the same way (the wall is not a closed door).
    hub.say_to_ai("ai-1", "hello").await;
    let own = hub.wait_received("ai-1", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert
    for (status, body) in &answers {
        assert_eq!(*status, 404, "{body}");
        assert_eq!(body["error"]["code"], "unknown_chat", "{body}");
    }
    assert_eq!(text_of(&own[0]), "AI: hello");
    for (customer, got) in [
        ("gx-1", hub.received_elsewhere("gx-1")),
        ("acme-1", hub.received("acme-1")),
    ] {
        let got: Vec<String> = got.iter().map(text_of).collect();
        assert_eq!(got.len(), 1, "{customer} got {got:?}");
        assert!(!got[0].contains("Injected"), "{customer} got {got:?}");
    }
    assert!(
        hub.desk.calls(Api::Livechat).is_empty(),
        "no desk was asked to take anyone"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn an_outlet_cannot_answer_or_command_another_orgs_customer() {
    // Arrange: globex's customer is live with globex's desk.
    let hub = TestHub::start().await;
    hub.say_elsewhere("gx-2", "talk to a human").await;
    let member = other_member_id("gx-2");
    hub.wait_conversation_state(member.parse().unwrap(), "live")
        .await;
    let conversation: String = {
        let mut db = hub.db().await;
        sqlx::query_scalar(
            "SELECT id::text FROM conversations WHERE member_id = $1::uuid AND state = 'live'",
        )
        .bind(&member)
        .fetch_one(&mut db)
        .await
        .unwrap()
    };
    let before = hub.received_elsewhere("gx-2").len();

    // Act: acme's desk, with its right token, answers and commands globex's customer.
    let reply = hub
        .outlet
        .post(
            OUTLET,
            ORG,
            OUTLET_TOKEN,
            &WebhookClient::agent_reply(&member, "Injected: pay here"),
            &[],
        )
        .await
        .unwrap();
    let command = hub
        .outlet
        .post(
            OUTLET,
            ORG,
            OUTLET_TOKEN,
            &WebhookClient::agent_command(&conversation, "done", now_ms()),
            &[],
        )
        .await
        .unwrap();
    // globex's own desk is heard.
    let own = hub
        .outlet
        .post(
            OTHER_OUTLET,
            OTHER_ORG,
            OTHER_OUTLET_TOKEN,
            &WebhookClient::agent_reply(&member, "Hello from globex"),
            &[],
        )
        .await
        .unwrap();
    let got = hub.wait_received_elsewhere("gx-2", before + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert
    assert_eq!(reply.0, 404, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], "unknown_member", "{}", reply.1);
    assert_eq!(command.0, 404, "{}", command.1);
    assert_eq!(own.0, 200, "{}", own.1);
    let texts: Vec<String> = hub.received_elsewhere("gx-2").iter().map(text_of).collect();
    assert_eq!(texts.len(), before + 1, "{texts:?}");
    assert_eq!(text_of(&got[before]), "Hello from globex");
    assert!(!texts.iter().any(|t| t.contains("Injected")), "{texts:?}");
    hub.wait_conversation_state(member.parse().unwrap(), "live")
        .await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_token_in_a_failing_desk_url_reaches_no_log_bot_transcript_or_dead_letter() {
    // Arrange: acme's desk authenticates by a token in its URLs, and cannot be reached.
    const TOKEN: &str = "desk-url-token-5ecr3t";
    let logs = ServiceLogs::default();
    let hub = TestHub::start_with(HubOptions {
        unreachable_desk_token: Some(TOKEN),
        service_logs: Some(logs.clone()),
        ..Default::default()
    })
    .await;

    // Act: a customer asks for a human; the Livechat API fails until its horizon.
    hub.say("tok-1", "talk to a human").await;
    let failed = hub.wait_bot(|call| !call["handoffError"].is_null()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert: the bot is told why, naming the endpoint, without its token.
    let told = failed["handoffError"].to_string();
    assert!(told.contains("127.0.0.1:9/livechat"), "{told}");
    assert!(!told.contains(TOKEN), "{told}");
    let mut db = hub.db().await;
    let mut stored: Vec<String> = sqlx::query_scalar("SELECT content::text FROM messages")
        .fetch_all(&mut db)
        .await
        .unwrap();
    stored.extend(
        sqlx::query_scalar::<_, String>("SELECT to_jsonb(d)::text FROM dead_letters d")
            .fetch_all(&mut db)
            .await
            .unwrap(),
    );
    assert!(
        stored.iter().any(|s| s.contains("HANDOFF_FAILED")),
        "the failure is in the transcript: {stored:?}"
    );
    let leaks: Vec<&String> = stored.iter().filter(|s| s.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "stored: {leaks:?}");
    let bot_calls = serde_json::to_string(&hub.bot.calls()).unwrap();
    assert!(!bot_calls.contains(TOKEN), "a bot call carries the token");
    let text = logs.lock().unwrap().join("\n");
    assert!(
        text.contains("livechat"),
        "the capture saw the Livechat failures"
    );
    let leaks: Vec<&str> = text.lines().filter(|l| l.contains(TOKEN)).collect();
    assert!(leaks.is_empty(), "logged: {leaks:?}");
    hub.shutdown().await;
}

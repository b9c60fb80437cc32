//! The customer can step out of a handoff with a word, and rate a live chat after it.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};

use crate::helpers::*;
use crate::live_chat::hand_off;

async fn agent_done(hub: &TestHub, ticket: &str) {
    let body = WebhookClient::agent_command(ticket, "done", now_ms());
    let (status, _) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
}

async fn close_reason(hub: &TestHub, who: &str) -> Vec<String> {
    let mut db = hub.db().await;
    sqlx::query_scalar(
        "SELECT close_reason FROM conversations WHERE member_id = $1::uuid AND state = 'closed'
         ORDER BY opened_at",
    )
    .bind(member_id(who))
    .fetch_all(&mut db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_word_cancels_a_waiting_handoff_and_another_ends_a_live_chat() {
    // Arrange: the desk's Livechat API is failing (retried for 30 s), so the handoff waits
    let hub = TestHub::start_with(HubOptions {
        handoff_horizon_secs: 30,
        inlet_handoff: "cancelKeywords: [never mind], endKeywords: [end chat]",
        ..Default::default()
    })
    .await;
    hub.desk.set_failing(Api::Livechat, Some(503));
    hub.say("una", "talk to a human").await;
    let member = member_id("una").parse().unwrap();
    assert!(
        hub.wait_conversation_state(member, "pending")
            .await
            .is_none()
    );
    hub.say("una", "are you there?").await;

    // Act: she cancels while waiting
    hub.say("una", "Never mind").await;

    // Assert: told it worked, the bot has her back (and her held message), the desk is
    // told once it answers again
    let got = hub.wait_received("una", 2).await;
    assert_eq!(
        got.iter().map(text_of).collect::<Vec<_>>(),
        [
            "OK, I've cancelled your request. You're talking to our assistant again.",
            "You said: are you there?",
        ]
    );
    assert_eq!(close_reason(&hub, "una").await, ["customer_cancelled"]);
    hub.desk.set_failing(Api::Livechat, None);
    let relays = hub.wait_desk(Api::Relay, 1).await;
    assert_eq!(relays[0].body["response"]["event"], "HANDOFF_CANCELLED");
    assert!(
        !hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "Never mind"),
        "the word is not the bot's"
    );

    // Act: a live chat this time, which she ends herself
    hub.say("una", "talk to a human").await;
    assert!(hub.wait_conversation_state(member, "live").await.is_some());
    hub.say("una", "end chat").await;

    // Assert: the desk hears it ended, the customer gets the end text
    let relays = hub.wait_desk(Api::Relay, 2).await;
    assert_eq!(relays[1].body["response"]["event"], "LIVE_CHAT_ENDED");
    assert_eq!(relays[1].body["response"]["reason"], "customer_ended");
    let got = hub.wait_received("una", 3).await;
    assert_eq!(
        text_of(&got[2]),
        "The agent has left. The assistant is back."
    );
    assert_eq!(
        close_reason(&hub, "una").await,
        ["customer_cancelled", "customer_ended"]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_rating_after_a_live_chat_is_stored_shown_and_thanked_and_later_words_go_to_the_bot() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        csat: Some("{thanks: Thanks!}"),
        ..Default::default()
    })
    .await;
    hand_off(&hub, "cal", 1).await;
    let before = hub.received("cal").len();

    // Act: the agent ends the chat; the customer picks 4, then says 5
    agent_done(&hub, "T-1").await;
    let got = hub.wait_received("cal", before + 2).await;
    let question = &got[before + 1].body["response"];
    assert_eq!(question["type"], "TEXT");
    assert_eq!(
        question["text"],
        "How would you rate the help you got? (1 = poor, 5 = great)"
    );
    let picks: Vec<&str> = question["quickReplies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["payload"].as_str().unwrap())
        .collect();
    assert_eq!(picks, ["1", "2", "3", "4", "5"]);
    hub.say("cal", "4").await;
    hub.wait_received("cal", before + 3).await;
    hub.say("cal", "5").await;

    // Assert
    let got = hub.wait_received("cal", before + 4).await;
    assert_eq!(text_of(&got[before + 2]), "Thanks!");
    assert_eq!(
        text_of(&got[before + 3]),
        "You said: 5",
        "one answer per question"
    );
    let mut db = hub.db().await;
    let answer: Option<String> =
        sqlx::query_scalar("SELECT csat_answer FROM conversations WHERE member_id = $1::uuid")
            .bind(member_id("cal"))
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(answer.as_deref(), Some("4"));
    let (ok, out) = hub
        .handoffctl(&["conversations", "--state", "closed"])
        .await;
    assert!(ok && out.contains("CSAT"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("closed") && l.trim_end().ends_with(" 4")),
        "{out}"
    );
    assert_eq!(hub.transcript_events("CSAT").await, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_rating_is_counted_for_prometheus_by_inlet_and_answer() {
    // Arrange: the services as processes, each with its metrics exporter
    let hub = TestHub::start_with(HubOptions {
        csat: Some("{}"),
        service_logs: Some(ServiceLogs::default()),
        ..Default::default()
    })
    .await;
    hand_off(&hub, "dot", 1).await;
    let before = hub.received("dot").len();
    agent_done(&hub, "T-1").await;
    hub.wait_received("dot", before + 2).await;

    // Act
    hub.say("dot", "4").await;

    // Assert
    hub.wait_received("dot", before + 3).await;
    let counted = |metrics: &str| {
        metrics.lines().any(|l| {
            l.starts_with("handoff_csat_answers_total")
                && l.contains(r#"answer="4""#)
                && l.contains(r#"inlet="web""#)
                && l.ends_with(" 1")
        })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = reqwest::get(format!("{}/metrics", hub.router_ops.as_deref().unwrap()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if counted(&metrics) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await;
}

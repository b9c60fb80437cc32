//! Deliveries that keep failing are told in seconds, not at the retry horizon: a desk that
//! refuses relays, a bot that is down. Nothing is lost meanwhile and nothing loops.

use std::time::{Duration, Instant};

use handoff_simulators::Api;

use crate::helpers::*;
use crate::live_chat::hand_off;

const TROUBLE: &str =
    "We're having trouble passing on your message. It will be delivered as soon as we can.";

#[tokio::test]
async fn a_desk_answering_500_gives_the_bot_relay_message_error_in_seconds_and_later_gets_every_message_in_order()
 {
    // Arrange: a live chat; relays are retried for two minutes (the default notice delay
    // of 10 s applies)
    let hub = TestHub::start_with(HubOptions {
        retry_horizon_secs: 120,
        ..Default::default()
    })
    .await;
    hand_off(&hub, "rex", 1).await;
    let before = hub.received_once("rex").len();

    // Act: the desk fails while the customer writes three messages
    hub.desk.set_failing(Api::Relay, Some(500));
    let failing_since = Instant::now();
    for text in ["m1", "m2", "m3"] {
        assert_eq!(hub.say("rex", text).await.0, 200);
    }
    let told = hub
        .wait_bot(|c| c["event"] == "relay_failed" && c["member"]["externalId"] == "rex")
        .await;
    let told_after = failing_since.elapsed();
    let got = hub.wait_received("rex", before + 2).await;
    hub.desk.set_failing(Api::Relay, None);

    // Assert: the bot heard of the first message within 15 s, the customer was told once
    assert!(told_after < Duration::from_secs(15), "{told_after:?}");
    assert_eq!(told["message"]["text"], "m1");
    assert_eq!(told["relayMessageError"]["status"], 500, "{told}");
    let texts: Vec<String> = got.iter().map(text_of).collect();
    assert!(texts.contains(&TROUBLE.to_string()), "{texts:?}");
    // …and the desk, back, gets every message once, in order
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut seen = std::collections::HashSet::new();
        let delivered: Vec<String> = hub
            .desk
            .calls(Api::Relay)
            .into_iter()
            .filter(|r| seen.insert(r.webhook_id.clone()))
            .filter_map(|r| r.body["response"]["text"].as_str().map(str::to_string))
            .collect();
        if delivered.len() >= 3 {
            assert_eq!(delivered, ["m1", "m2", "m3"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{delivered:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relay_failed = hub
        .bot
        .calls()
        .iter()
        .filter(|c| c["event"] == "relay_failed")
        .count();
    assert_eq!(relay_failed, 1, "the bot heard once");
    let trouble = hub
        .received_once("rex")
        .iter()
        .filter(|t| *t == TROUBLE)
        .count();
    assert_eq!(trouble, 1, "the customer was told once");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_bot_that_is_down_gets_the_customer_one_notice_and_answers_in_order_once_back() {
    // Arrange: the bot counts as down after 2 s of failed calls
    let hub = TestHub::start_with(HubOptions {
        retry_horizon_secs: 120,
        inlet_handoff: "botDownSecs: 2",
        ..Default::default()
    })
    .await;
    hub.bot.set_failing_for("sam", Some(503));

    // Act: two messages while the bot is down for about 5 s
    hub.say("sam", "first").await;
    hub.say("sam", "second").await;
    let got = hub.wait_received("sam", 1).await;
    assert_eq!(text_of(&got[0]), TROUBLE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hub.received("sam").len(),
        1,
        "one notice, however long it lasts"
    );
    hub.bot.set_failing_for("sam", None);

    // Assert: the bot answers both, in order, after the notice
    hub.wait_received("sam", 3).await;
    assert_eq!(
        hub.received_once("sam"),
        [TROUBLE, "You said: first", "You said: second"]
    );
    assert_eq!(hub.transcript_events("BOT_DOWN").await, 1);
    assert_eq!(hub.transcript_events("BOT_BACK").await, 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_bot_down_hands_the_customer_over_and_with_the_desk_down_too_tells_them_once_without_looping()
 {
    // Arrange: the inlet hands members over when its bot is down; the desk cannot be
    // reached either (the Livechat request gives up after 2 s)
    let hub = TestHub::start_with(HubOptions {
        retry_horizon_secs: 120,
        inlet_handoff: "botDownSecs: 2, onBotDown: handoff",
        unreachable_desk_token: Some("desk-secret"),
        notices: None,
        ..Default::default()
    })
    .await;
    hub.bot.set_failing_for("ivy", Some(500));

    // Act
    hub.say("ivy", "help").await;
    let got = hub.wait_received("ivy", 2).await;
    hub.say("ivy", "hello??").await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Assert: handed over (with the reason), told nobody came, once, and nothing looped
    let texts: Vec<String> = got.iter().map(text_of).collect();
    assert_eq!(
        texts,
        [
            "I'm connecting you with a person. One moment, please.",
            "No one from our team is available right now. Our assistant will keep helping you.",
        ]
    );
    assert_eq!(
        hub.received("ivy").len(),
        2,
        "nothing more while both are down"
    );
    let mut db = hub.db().await;
    let handoffs: Vec<(String, String)> =
        sqlx::query_as("SELECT trigger, summary FROM conversations WHERE member_id = $1::uuid")
            .bind(member_id("ivy"))
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(handoffs.len(), 1, "{handoffs:?}");
    assert_eq!(handoffs[0].0, "bot_down");
    assert!(
        handoffs[0].1.contains("503") || handoffs[0].1.contains("500"),
        "{handoffs:?}"
    );

    // And once the bot is back, it answers what waited, in order
    hub.bot.set_failing_for("ivy", None);
    hub.wait_received("ivy", 5).await;
    let got = hub.received_once("ivy");
    assert_eq!(got[2], "You said: help", "{got:?}");
    assert!(
        got[3..].contains(&"You said: hello??".to_string()),
        "{got:?}"
    );
    hub.shutdown().await;
}

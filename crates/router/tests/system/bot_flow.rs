use std::time::Duration;

use handoff_platforms::Signer;
use handoff_simulators::{Api, WebhookClient};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_customer_message_is_answered_by_the_bot_through_the_send_api() {
    // Arrange
    let hub = TestHub::start().await;

    // Act
    let (status, body) = hub.say("ada", "hello").await;

    // Assert
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["memberId"], member_id("ada"));
    let got = hub.wait_received("ada", 1).await;
    assert_eq!(got.len(), 1, "one answer");
    let call = &got[0];
    assert_eq!(
        call.body["response"],
        json!({"type": "TEXT", "text": "You said: hello"})
    );
    assert_eq!(call.body["member"]["externalId"], "ada");
    assert_eq!(
        call.body["member"]["profile"],
        json!({"firstName": "Test", "lastName": "ada"})
    );
    assert_eq!(call.body["member"]["botMeta"]["liveChat"], false);
    assert!(call.body["member"]["meta"].is_object());
    assert_eq!(
        call.body["channel"]["info"]["theme"], "blue",
        "channel.info is passed through"
    );
    assert_eq!(
        call.body["channel"]["info"]["sendResponseApi"],
        hub.customer.url("/send")
    );
    // The call is signed (Standard Webhooks) because the inlet has a secret.
    let signature = call.signature.clone().expect("signed");
    assert!(!call.webhook_id.is_empty());
    let bot_calls = hub.bot.calls();
    assert_eq!(bot_calls.len(), 1);
    assert_eq!(bot_calls[0]["member"]["_id"], member_id("ada"));
    assert_eq!(
        bot_calls[0]["message"],
        json!({"type": "TEXT", "text": "hello"})
    );
    assert!(signature.starts_with("v1,"));
    let _ = Signer::new(INLET_SECRET);
    // The transcript holds both turns.
    let mut db = hub.db().await;
    let authors: Vec<String> = sqlx::query_scalar("SELECT author FROM messages ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(authors, ["customer", "bot"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn the_same_message_posted_twice_is_answered_once() {
    // Arrange
    let hub = TestHub::start().await;
    let same_body = WebhookClient::customer_text("bob", INLET, "same body", now_ms());
    let with_id = |ts: i64| {
        let mut b = WebhookClient::customer_text("bob", INLET, "same id", ts);
        b["sendToBot"]["messageEvent"]["messageId"] = json!("m-42");
        b
    };

    // Act: a body re-posted, and one message id re-sent with a different body.
    for body in [&same_body, &same_body, &with_id(1), &with_id(2)] {
        let (status, _) = hub
            .inlet
            .post(INLET, ORG, INLET_TOKEN, body, &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    // A later message: per-member order means any duplicate answer would arrive before it.
    hub.say("bob", "sentinel").await;

    // Assert
    let got = hub.wait_received("bob", 3).await;
    let texts: Vec<String> = got.iter().map(text_of).collect();
    assert_eq!(
        texts,
        [
            "You said: same body",
            "You said: same id",
            "You said: sentinel"
        ]
    );
    assert_eq!(hub.bot.calls().len(), 3);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_message_id_seen_before_has_no_effect_after_the_inbox_was_pruned() {
    // Arrange: the bus recognises a repeat for 1 s, the inbox until retention prunes it;
    // after both, the transcript still knows each platform message id.
    let hub = TestHub::start_with(HubOptions {
        duplicate_window_secs: 1,
        ..HubOptions::default()
    })
    .await;
    let with_id = |who: &str, ts: i64| {
        let mut b = WebhookClient::customer_text(who, INLET, "same id", ts);
        b["sendToBot"]["messageEvent"]["messageId"] = json!(format!("m-{who}"));
        b
    };
    let customers = ["ann", "bob", "cy"];
    for who in customers {
        let (status, _) = hub
            .inlet
            .post(INLET, ORG, INLET_TOKEN, &with_id(who, 1), &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
        hub.wait_received(who, 1).await;
    }
    let pool = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(
        &hub.settings.database.url,
    ))
    .await
    .unwrap();
    let retention = handoff_config::RetentionSettings {
        processed_events_days: 0,
        transcript_days: 30,
        resolved_dead_letters_days: 30,
        prune_interval_secs: 1,
    };
    let pruned = router::retention::prune(&pool, &retention).await.unwrap();
    assert!(pruned.processed_events >= 6, "{pruned:?}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Act: the same messages again, all at once so the router meets them in one batch,
    // then a sentinel each.
    let posts = customers.map(|who| {
        let body = with_id(who, 1);
        let hub = &hub;
        async move {
            let (status, _) = hub
                .inlet
                .post(INLET, ORG, INLET_TOKEN, &body, &[])
                .await
                .unwrap();
            status
        }
    });
    assert_eq!(futures::future::join_all(posts).await, [200, 200, 200]);
    for who in customers {
        hub.say(who, "sentinel").await;
    }

    // Assert: each answered for the first post and the sentinel, never for the repeat.
    for who in customers {
        let texts: Vec<String> = hub
            .wait_received(who, 2)
            .await
            .iter()
            .map(text_of)
            .collect();
        assert_eq!(texts, ["You said: same id", "You said: sentinel"], "{who}");
    }
    assert_eq!(hub.bot.calls().len(), 6);
    hub.shutdown().await;
}

#[tokio::test]
async fn every_response_of_a_bot_answer_is_delivered_once_in_order_for_each_customer() {
    // Arrange
    let hub = TestHub::start().await;
    let customers = ["c1", "c2", "c3", "c4", "c5"];

    // Act
    for i in 0..10 {
        for c in customers {
            let (status, _) = hub.say(c, &format!("{c}-{i}")).await;
            assert_eq!(status, 200);
        }
    }

    // Assert
    for c in customers {
        let got = hub.wait_received(c, 10).await;
        let texts: Vec<String> = got.iter().map(text_of).collect();
        let expected: Vec<String> = (0..10).map(|i| format!("You said: {c}-{i}")).collect();
        assert_eq!(texts, expected);
    }
    assert_eq!(hub.customer.calls(Api::Send).len(), 50);
    hub.shutdown().await;
}

//! Zendesk Chat visitors served by zendesk-agent, against the simulated Conversations API
//! over a real WebSocket.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

fn texts(sent: &[Value]) -> Vec<String> {
    sent.iter()
        .map(|m| m["msg"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn a_zendesk_visitor_chats_with_the_bot_and_its_answers_arrive_in_order() {
    // Arrange
    let hub = TestHub::start().await;
    assert!(
        hub.zendesk.wait_until_listening(WAIT).await,
        "the agent went online"
    );
    let chat = hub.zendesk.visitor_join("Visitor 1");

    // Act
    for text in ["one", "two \"quoted\"\nand a new line", "three"] {
        hub.zendesk.visitor_says(&chat, text);
    }

    // Assert
    let sent = hub.zendesk.wait_for_sent(&chat, 3, WAIT).await;
    assert_eq!(
        texts(&sent),
        [
            "You said: one",
            "You said: two \"quoted\"\nand a new line",
            "You said: three"
        ]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_dropped_socket_and_an_end_of_session_are_survived_with_nothing_lost_or_doubled() {
    // Arrange
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 2");
    hub.zendesk.visitor_says(&chat, "before");
    hub.zendesk.wait_for_sent(&chat, 1, WAIT).await;

    // Act: the socket drops (1006), then the session ends (EOS)
    hub.zendesk.drop_sockets();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        hub.zendesk.wait_until_listening(WAIT).await,
        "back online after the drop"
    );
    hub.zendesk.visitor_says(&chat, "after the drop");
    hub.zendesk.wait_for_sent(&chat, 2, WAIT).await;
    hub.zendesk.send_eos();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        hub.zendesk.wait_until_listening(WAIT).await,
        "back online after EOS"
    );
    hub.zendesk.visitor_says(&chat, "after the end of session");

    // Assert
    let sent = hub.zendesk.wait_for_sent(&chat, 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        texts(&hub.zendesk.sent_to(&chat)),
        [
            "You said: before",
            "You said: after the drop",
            "You said: after the end of session"
        ],
        "{sent:?}"
    );
    assert!(
        hub.zendesk.sessions_started() >= 2,
        "a new session after EOS"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn quick_replies_reach_the_visitor_with_a_fallback_and_a_pick_returns_as_its_payload() {
    // Arrange
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 3");
    hub.zendesk.visitor_says(&chat, "menu");
    let offered = hub.zendesk.wait_for_sent(&chat, 1, WAIT).await;
    assert_eq!(offered[0]["mutation"], "sendQuickReplies", "{offered:?}");
    assert_eq!(
        offered[0]["fallback"]["options"],
        serde_json::json!(["Tea", "Coffee"])
    );

    // Act: the visitor taps "Coffee"; the widget sends its text
    hub.zendesk.visitor_picks(&chat, "Coffee").unwrap();

    // Assert: the bot got the payload, not the words
    let sent = hub.zendesk.wait_for_sent(&chat, 2, WAIT).await;
    assert_eq!(sent[1]["msg"], "You chose: COFFEE", "{sent:?}");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_visitor_handed_to_the_desk_who_leaves_ends_the_live_chat_and_the_agent_is_told() {
    // Arrange: the visitor asks for a human and the desk accepts
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 4");
    hub.zendesk.visitor_says(&chat, "agent");
    hub.wait_desk(handoff_simulators::Api::Livechat, 1).await;
    hub.zendesk.visitor_says(&chat, "are you there?");
    let relayed = hub.wait_desk(handoff_simulators::Api::Relay, 1).await;
    assert_eq!(relayed[0].body["response"]["text"], "are you there?");

    // Act
    hub.zendesk.visitor_leaves(&chat);

    // Assert: the desk hears the chat ended, the conversation is closed as customer_left
    let relays = hub.wait_desk(handoff_simulators::Api::Relay, 2).await;
    assert_eq!(
        relays[1].body["response"]["event"], "LIVE_CHAT_ENDED",
        "{:?}",
        relays[1].body
    );
    let member = handoff_config::member_id(ZENDESK, &chat);
    let mut db = hub.db().await;
    let reason: Option<String> = sqlx::query_scalar(
        "SELECT close_reason FROM conversations WHERE member_id = $1 AND state = 'closed'",
    )
    .bind(member)
    .fetch_optional(&mut db)
    .await
    .unwrap();
    assert_eq!(reason.as_deref(), Some("customer_left"));
    let to_visitor = texts(&hub.zendesk.sent_to(&chat));
    assert_eq!(
        to_visitor,
        ["Connecting you to a human agent…"],
        "nothing after they left"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_subscription_that_fails_to_start_is_retried_and_the_visitor_is_answered() {
    // Arrange: the next session's first two subscription starts fail
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    hub.zendesk.fail_next_subscriptions(2);

    // Act
    hub.zendesk.drop_sockets();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        hub.zendesk.wait_until_listening(WAIT).await,
        "subscribed in the end"
    );
    let chat = hub.zendesk.visitor_join("Visitor 5");
    hub.zendesk.visitor_says(&chat, "hello");

    // Assert
    let sent = hub.zendesk.wait_for_sent(&chat, 1, WAIT).await;
    assert_eq!(texts(&sent), ["You said: hello"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_rate_limited_burst_is_backed_off_and_every_visitor_is_answered_in_order_once() {
    // Arrange: Zendesk allows 10 requests at once, then 20 a second
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    hub.zendesk.rate_limit(10, 20.0);
    let chats: Vec<String> = (0..30)
        .map(|i| hub.zendesk.visitor_join(&format!("Visitor {i}")))
        .collect();

    // Act: everyone writes twice at once
    for chat in &chats {
        hub.zendesk.visitor_says(chat, "first");
        hub.zendesk.visitor_says(chat, "second");
    }

    // Assert
    for chat in &chats {
        hub.zendesk.wait_for_sent(chat, 2, WAIT).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hub.zendesk.rate_limited() > 0, "the burst was limited");
    for chat in &chats {
        assert_eq!(
            texts(&hub.zendesk.sent_to(chat)),
            ["You said: first", "You said: second"],
            "chat {chat}"
        );
    }
    hub.shutdown().await;
}

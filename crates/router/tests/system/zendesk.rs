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

use std::time::Duration;

use handoff_simulators::Api;

use crate::helpers::*;

#[tokio::test]
async fn messages_accepted_before_the_router_is_killed_are_answered_once_after_restart() {
    // Arrange: the router runs as its own process.
    let mut hub = TestHub::start_with(HubOptions {
        router_process: true,
        ..Default::default()
    })
    .await;

    // Act: accepted messages, then SIGKILL while they are being processed.
    for i in 0..20 {
        let (status, _) = hub.say("kim", &format!("m{i}")).await;
        assert_eq!(status, 200);
    }
    hub.kill_router().await;
    let before = hub.received("kim").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.start_router().await;

    // Assert: every answer arrives, in order, exactly once — including any whose
    // processing was cut short (redelivered after the ack wait).
    let got = hub.wait_received("kim", 20).await;
    let texts: Vec<String> = got.iter().map(text_of).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("You said: m{i}")).collect();
    assert_eq!(texts, expected, "{before} had arrived before the kill");
    // Past the ack wait, nothing more arrives.
    tokio::time::sleep(Duration::from_secs(hub.settings.nats.ack_wait_secs + 1)).await;
    assert_eq!(hub.customer.calls(Api::Send).len(), 20);
    assert_eq!(hub.bot.calls().len(), 20);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_message_accepted_while_the_router_is_down_is_answered_when_it_starts() {
    // Arrange
    let mut hub = TestHub::start_with(HubOptions {
        router_process: true,
        router: false,
        ..Default::default()
    })
    .await;

    // Act
    let (status, _) = hub.say("lee", "are you there?").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(hub.received("lee").is_empty());
    hub.start_router().await;

    // Assert
    let got = hub.wait_received("lee", 1).await;
    assert_eq!(
        got.iter().map(text_of).collect::<Vec<_>>(),
        ["You said: are you there?"]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_router_killed_mid_handoff_resumes_in_one_consistent_state_losing_nothing() {
    // Arrange
    let mut hub = TestHub::start_with(HubOptions {
        router_process: true,
        ..Default::default()
    })
    .await;
    hub.say("max", "agent").await;
    hub.wait_desk(Api::Livechat, 1).await;

    // Act: killed while the acceptance is in flight; the customer keeps writing.
    hub.kill_router().await;
    for i in 0..3 {
        hub.say("max", &format!("while down {i}")).await;
    }
    hub.start_router().await;

    // Assert: one live conversation, every message relayed once and in order.
    let relays = hub.wait_desk(Api::Relay, 3).await;
    let texts: Vec<&str> = relays
        .iter()
        .map(|r| r.body["response"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["while down 0", "while down 1", "while down 2"]);
    let mut db = hub.db().await;
    let states: Vec<String> = sqlx::query_scalar("SELECT state FROM conversations")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(states, ["live"]);
    tokio::time::sleep(Duration::from_secs(hub.settings.nats.ack_wait_secs + 1)).await;
    assert_eq!(hub.desk.calls(Api::Livechat).len(), 1);
    assert_eq!(hub.desk.calls(Api::Relay).len(), 3);
    hub.shutdown().await;
}

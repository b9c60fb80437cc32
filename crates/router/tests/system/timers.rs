//! Live-chat timers that mean something: no first reply (the customer is told, the request
//! goes again, then the bot takes over) and an agent gone quiet while the customer waits.
//! Each fires once per state, and not once the agent has written.

use std::time::Duration;

use handoff_simulators::Api;

use crate::helpers::*;
use crate::live_chat::{agent_says, hand_off};

const STILL_WAITING: &str = "Thanks for waiting. An agent will be with you as soon as possible.";

fn count(texts: &[String], text: &str) -> usize {
    texts.iter().filter(|t| *t == text).count()
}

async fn close_reason(hub: &TestHub, who: &str) -> Option<String> {
    let member = member_id(who).parse().unwrap();
    hub.wait_conversation_state(member, "closed").await;
    let mut db = hub.db().await;
    sqlx::query_scalar(
        "SELECT close_reason FROM conversations WHERE member_id = $1::uuid AND state = 'closed'",
    )
    .bind(member_id(who))
    .fetch_one(&mut db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_desk_that_accepts_and_never_answers_gets_the_request_once_more_and_then_the_bot_takes_over()
 {
    // Arrange: a first reply is expected within 1 s, the request goes again after 2 s,
    // once
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "firstReplySecs: 1, requeueSecs: 2, maxRequeues: 1",
        notices: None,
        ..Default::default()
    })
    .await;

    // Act
    hand_off(&hub, "quin", 1).await;
    let reason = close_reason(&hub, "quin").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // Assert: asked twice, the second time marked; told once per wait; then given back
    let asked = hub.desk.calls(Api::Livechat);
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].body["meta"]["requeued"], 1);
    assert_eq!(reason.as_deref(), Some("no_agent_reply"));
    let texts = hub.received_once("quin");
    assert_eq!(count(&texts, STILL_WAITING), 2, "{texts:?}");
    assert!(
        texts.contains(
            &"No one from our team is available right now. Our assistant will keep helping you."
                .to_string()
        ),
        "{texts:?}"
    );
    let relays = hub.desk.calls(Api::Relay);
    assert!(
        relays
            .iter()
            .any(|r| r.body["response"]["reason"] == "no_agent_reply"),
        "the desk heard it ended"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn an_agent_gone_quiet_while_the_customer_waits_is_covered_for_and_the_chat_closes_after_a_grace()
 {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "firstReplySecs: 1, agentIdleSecs: 1, agentIdleGraceSecs: 1",
        notices: None,
        ..Default::default()
    })
    .await;
    hand_off(&hub, "ria", 1).await;
    assert_eq!(agent_says(&hub, "ria", "Hi, Ria here").await.0, 200);

    // Act: the customer answers; the agent says nothing more
    hub.wait_received("ria", 5).await;
    hub.say("ria", "I have a question").await;
    let reason = close_reason(&hub, "ria").await;

    // Assert: no still-waiting (the agent had answered), one idle notice, then closed
    let texts = hub.received_once("ria");
    assert_eq!(count(&texts, STILL_WAITING), 0, "{texts:?}");
    assert_eq!(
        count(
            &texts,
            "Sorry for the wait. If nobody answers soon, our assistant will take over again."
        ),
        1,
        "{texts:?}"
    );
    assert_eq!(reason.as_deref(), Some("agent_idle_close"));
    let relays = hub.desk.calls(Api::Relay);
    assert!(
        relays
            .iter()
            .any(|r| r.body["response"]["event"] == "LIVE_CHAT_ENDED"),
        "{relays:?}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn handoffctl_conversations_says_which_timer_of_a_live_chat_fires_next() {
    // Arrange: a first reply is expected within 60 s, an idle agent is covered for after 30
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "firstReplySecs: 60, requeueSecs: 600, agentIdleSecs: 30",
        ..Default::default()
    })
    .await;
    hand_off(&hub, "nia", 1).await;
    let next = async |hub: &TestHub| {
        let (ok, out) = hub.handoffctl(&["conversations", "--json"]).await;
        assert!(ok, "{out}");
        let list: serde_json::Value = serde_json::from_str(&out).unwrap();
        let c = list["conversations"][0].clone();
        (
            c["nextTimer"].as_str().unwrap_or_default().to_string(),
            c["nextTimerAt"].as_str().unwrap_or_default().to_string(),
        )
    };

    // Act + Assert: before any agent message, the first-reply clock; once the agent
    // answered and the customer wrote, the idle agent's
    hub.wait_conversation_state(member_id("nia").parse().unwrap(), "live")
        .await;
    let (timer, at) = next(&hub).await;
    assert_eq!(timer, "first_reply");
    let at = time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
        .expect("an RFC 3339 time");
    let in_secs = (at - time::OffsetDateTime::now_utc()).as_seconds_f64();
    assert!((50.0..=61.0).contains(&in_secs), "{in_secs}");

    agent_says(&hub, "nia", "hello").await;
    hub.wait_received("nia", 1).await;
    hub.say("nia", "my order?").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if next(&hub).await.0 == "agent_idle" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            next(&hub).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await;
}

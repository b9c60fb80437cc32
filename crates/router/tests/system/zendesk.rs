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
async fn two_hundred_visitors_writing_at_once_under_a_rate_limit_are_all_answered_in_order_once() {
    // Arrange: Zendesk allows 20 requests at once, then 50 a second
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    hub.zendesk.rate_limit(20, 50.0);
    let chats: Vec<String> = (0..200)
        .map(|i| hub.zendesk.visitor_join(&format!("Visitor {i}")))
        .collect();

    // Act: everyone writes twice at once
    for chat in &chats {
        hub.zendesk.visitor_says(chat, "first");
        hub.zendesk.visitor_says(chat, "second");
    }

    // Assert: 400 answers at 50 a second take 8 s or more
    for chat in &chats {
        hub.zendesk.wait_for_sent(chat, 2, 4 * WAIT).await;
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

#[tokio::test]
async fn an_answer_whose_request_zendesk_never_answered_is_sent_again_and_shown_once() {
    // Arrange: the next request is swallowed without being run or answered; the answer's
    // ten-second wait stays well inside the delivery's horizon.
    let hub = TestHub::start_with(HubOptions {
        retry_horizon_secs: 60,
        ..Default::default()
    })
    .await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 6");
    hub.zendesk.ignore_next_requests(1);

    // Act
    hub.zendesk.visitor_says(&chat, "one");
    hub.zendesk.visitor_says(&chat, "two");

    // Assert: after the answer's timeout the first is sent again, and the second waits
    let sent = hub.zendesk.wait_for_sent(&chat, 2, 2 * WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        texts(&hub.zendesk.sent_to(&chat)),
        ["You said: one", "You said: two"],
        "{sent:?}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_handoff_transfers_the_chat_to_the_configured_zendesk_department_and_the_bot_stops_answering()
 {
    // Arrange: the inlet hands off inside Zendesk, to "Support" (ONLINE, besides an
    // offline "Billing")
    let hub = TestHub::start_with(HubOptions {
        zendesk_department: Some("Support"),
        ..Default::default()
    })
    .await;
    hub.zendesk
        .set_departments(&[("D-2", "Billing", "OFFLINE"), ("D-1", "Support", "ONLINE")]);
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 7");

    // Act
    hub.zendesk.visitor_says(&chat, "human");
    let member = handoff_config::member_id(ZENDESK, &chat);
    let live = hub.wait_conversation_state(member, "live").await;
    hub.zendesk.visitor_says(&chat, "hello? anyone?");
    hub.zendesk.visitor_leaves(&chat);

    // Assert: transferred to Support; the bot said nothing after its "connecting" line
    assert_eq!(hub.zendesk.transfers(), [(chat.clone(), "D-1".to_string())]);
    assert_eq!(live.as_deref(), Some("D-1"), "the department is the ticket");
    let closed = hub.wait_conversation_state(member, "closed").await;
    assert!(closed.is_some());
    assert_eq!(
        texts(&hub.zendesk.sent_to(&chat)),
        ["Connecting you to a human agent…"]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_handoff_with_no_department_online_leaves_the_visitor_with_the_bot_which_says_so() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        zendesk_department: Some("Support"),
        ..Default::default()
    })
    .await;
    hub.zendesk.set_departments(&[("D-1", "Support", "AWAY")]);
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 8");

    // Act
    hub.zendesk.visitor_says(&chat, "human");

    // Assert
    let sent = hub.zendesk.wait_for_sent(&chat, 2, WAIT).await;
    assert_eq!(
        texts(&sent),
        [
            "Connecting you to a human agent…",
            "No agent is available right now (no_department_online). I'm still here to help."
        ]
    );
    assert!(hub.zendesk.transfers().is_empty());
    hub.zendesk.visitor_says(&chat, "ok then");
    let sent = hub.zendesk.wait_for_sent(&chat, 3, WAIT).await;
    assert_eq!(sent[2]["msg"], "You said: ok then", "the bot answers again");
    hub.shutdown().await;
}

#[tokio::test]
async fn two_agent_processes_keep_one_session_and_a_killed_holder_hands_the_account_over() {
    // Arrange: two zendesk-agent processes for one account, the first holding it
    let hub = TestHub::start_with(HubOptions {
        zendesk_agent: false,
        ..Default::default()
    })
    .await;
    let mut holder = hub.spawn_zendesk_agent().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let _standby = hub.spawn_zendesk_agent().await;
    // Two lease lifetimes with both running: a second login would have ended the first,
    // and the partitions are shared out between the two by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(hub.zendesk.sessions_started(), 1, "one session at a time");
    // Visitors spread over all partitions, so some answers are sent by the replica without
    // the session, through the one with it.
    let others: Vec<String> = (0..8)
        .map(|i| hub.zendesk.visitor_join(&format!("Visitor 10{i}")))
        .collect();
    let chat = hub.zendesk.visitor_join("Visitor 9");
    for visitor in others.iter().chain([&chat]) {
        hub.zendesk.visitor_says(visitor, "before");
    }
    for visitor in others.iter().chain([&chat]) {
        let sent = hub.zendesk.wait_for_sent(visitor, 1, WAIT).await;
        assert_eq!(texts(&sent), ["You said: before"], "chat {visitor}");
    }
    assert_eq!(hub.zendesk.sessions_started(), 1);
    assert_eq!(hub.zendesk.live_sessions(), 1);

    // Act: the bot thinks for 1.5 s about the next message (the hub's calls time out at
    // 2 s); the holder is killed meanwhile, so the answer comes while nobody holds it
    hub.bot
        .set_think_time_for(&chat, Duration::from_millis(1500));
    hub.zendesk.visitor_says(&chat, "during");
    wait_for(|| {
        hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "during")
    })
    .await;
    holder.start_kill().unwrap();
    holder.wait().await.unwrap();
    let killed = tokio::time::Instant::now();
    wait_for(|| hub.zendesk.sessions_started() == 2 && hub.zendesk.open_sockets() == 1).await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let handed_over = killed.elapsed();
    hub.zendesk.visitor_says(&chat, "after");

    // Assert: the answer made during the hand-over arrives, nothing is lost or doubled
    let sent = hub.zendesk.wait_for_sent(&chat, 3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        texts(&hub.zendesk.sent_to(&chat)),
        ["You said: before", "You said: during", "You said: after"],
        "{sent:?}"
    );
    assert!(
        handed_over < Duration::from_secs(10),
        "the account moved in {handed_over:?}"
    );
    hub.shutdown().await;
}

/// Polls `done` until it holds, for at most `WAIT`.
async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_answer_zendesk_never_takes_is_parked_at_its_horizon_and_the_visitor_moves_on() {
    // Arrange: every request is swallowed (a session that never answers); two seconds of
    // horizon.
    let hub = TestHub::start().await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 9");
    hub.zendesk.ignore_next_requests(1_000);

    // Act
    hub.zendesk.visitor_says(&chat, "anyone?");

    // Assert: once its horizon has passed the answer is parked (it was retried for ever),
    // replayable, and the failure is in the transcript.
    let letters = hub.wait_dead_letters(1).await;
    assert_eq!(letters[0]["service"], "zendesk-agent", "{letters:?}");
    assert_eq!(letters[0]["kind"], "deliver_to_member", "{letters:?}");
    let failed = hub.transcript_events("DELIVERY_FAILED").await;
    assert_eq!(failed, 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_zendesk_visitor_sees_each_notice_and_never_a_bot_answer_given_after_the_handoff() {
    // Arrange: every notice at its default; the bot takes 1.5 s over the first question
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        ..Default::default()
    })
    .await;
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 9");
    hub.bot
        .set_think_time_for(&chat, Duration::from_millis(1_500));
    let member = handoff_config::member_id(ZENDESK, &chat);

    // Act: the visitor asks for a human while the bot thinks; the desk's Alice answers
    hub.zendesk.visitor_says(&chat, "where is my parcel");
    hub.wait_bot(|c| c["member"]["externalId"] == chat.as_str())
        .await;
    hub.zendesk.visitor_says(&chat, "talk to a human");
    assert!(hub.wait_conversation_state(member, "live").await.is_some());
    let reply = serde_json::json!({
        "profile": {},
        "externalId": "agent-1",
        "sendToInlet": {"response": {"type": "TEXT", "text": "Alice here"},
                        "memberId": member.to_string(), "agentName": "Alice"}
    });
    let (status, _) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &reply, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);

    // Assert: the visitor saw the notices and the agent, not the bot's late answer
    let sent = hub.zendesk.wait_for_sent(&chat, 4, WAIT).await;
    assert_eq!(
        texts(&sent),
        [
            "I'm connecting you with a person. One moment, please.",
            "You're in the queue. An agent will be with you shortly.",
            "Alice has joined the chat.",
            "Alice here",
        ]
    );
    let relays = hub.wait_desk(handoff_simulators::Api::Relay, 1).await;
    assert_eq!(relays[0].body["response"]["event"], "BOT_ANSWER_WITHHELD");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_agent_at_the_desk_moves_a_zendesk_visitor_into_a_department_of_their_zendesk() {
    // Arrange: a visitor live with the desk; the account has an online "Second line"
    let hub = TestHub::start().await;
    hub.zendesk.set_departments(&[
        ("D-1", "Support", "ONLINE"),
        ("D-2", "Second line", "ONLINE"),
    ]);
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 9");
    hub.zendesk.visitor_says(&chat, "agent");
    hub.wait_desk(handoff_simulators::Api::Livechat, 1).await;
    let member = handoff_config::member_id(ZENDESK, &chat);
    assert_eq!(
        hub.wait_conversation_state(member, "live").await.as_deref(),
        Some("T-1")
    );

    // Act: the agent transfers it by the department's name (a name with a space)
    let (status, answer) = hub.desk_command("T-1", "transfer Second line").await;
    assert_eq!(status, 200, "{answer}");

    // Assert: Zendesk moved the chat to D-2, which is now the live chat's ticket; the
    // desk heard it was transferred; the visitor was told and is not answered by the bot
    let mut db = hub.db().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ticket: Option<Option<String>> = sqlx::query_scalar(
            "SELECT external_id FROM conversations WHERE member_id = $1 AND state = 'live'",
        )
        .bind(member)
        .fetch_optional(&mut db)
        .await
        .unwrap();
        if ticket.flatten().as_deref() == Some("D-2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never live with D-2"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.zendesk.transfers(), [(chat.clone(), "D-2".to_string())]);
    assert!(
        hub.desk
            .calls(handoff_simulators::Api::Relay)
            .iter()
            .any(|r| r.body["response"]["event"] == "LIVE_CHAT_ENDED"
                && r.body["response"]["reason"] == "transferred"),
        "the desk heard the chat was transferred"
    );
    hub.zendesk.visitor_says(&chat, "hello, second line?");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let said = texts(&hub.zendesk.sent_to(&chat));
    assert!(
        said.contains(&"You're being transferred to another team. One moment, please.".into()),
        "{said:?}"
    );
    assert!(
        !said.iter().any(|t| t.contains("second line?")),
        "the bot stays silent: {said:?}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_transfer_to_a_department_nobody_staffs_leaves_the_visitor_with_the_desk_which_is_told() {
    // Arrange: a visitor live with the desk; "Second line" is away
    let hub = TestHub::start().await;
    hub.zendesk
        .set_departments(&[("D-2", "Second line", "AWAY")]);
    assert!(hub.zendesk.wait_until_listening(WAIT).await);
    let chat = hub.zendesk.visitor_join("Visitor 10");
    hub.zendesk.visitor_says(&chat, "agent");
    hub.wait_desk(handoff_simulators::Api::Livechat, 1).await;
    let member = handoff_config::member_id(ZENDESK, &chat);
    hub.wait_conversation_state(member, "live").await;

    // Act
    let (status, _) = hub.desk_command("T-1", "transfer Second line").await;
    assert_eq!(status, 200);

    // Assert: the desk hears why, and the visitor's next words still reach it
    let deadline = tokio::time::Instant::now() + WAIT;
    while !hub
        .desk
        .calls(handoff_simulators::Api::Relay)
        .iter()
        .any(|r| {
            r.body["response"]["event"] == "TRANSFER_FAILED"
                && r.body["response"]["reason"] == "no_department_online"
        })
    {
        assert!(tokio::time::Instant::now() < deadline, "never told");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.zendesk.visitor_says(&chat, "hello?");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !hub
        .desk
        .calls(handoff_simulators::Api::Relay)
        .iter()
        .any(|r| r.body["response"]["text"] == "hello?")
    {
        assert!(tokio::time::Instant::now() < deadline, "not relayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hub.zendesk.transfers().is_empty());
    assert_eq!(
        hub.wait_conversation_state(member, "live").await.as_deref(),
        Some("T-1")
    );
    hub.shutdown().await;
}

//! Agents take a member over without being asked: the first to write (or to send the
//! takeover command) gets the live chat, the bot falls silent, the customer is told.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::json;

use crate::helpers::*;

async fn agent_writes(hub: &TestHub, who: &str, text: &str) -> (u16, serde_json::Value) {
    let mut body = WebhookClient::agent_reply(&member_id(who), text);
    body["sendToInlet"]["agentName"] = json!("Ann");
    hub.outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap()
}

async fn takeover(hub: &TestHub, who: &str) -> (u16, serde_json::Value) {
    let body = WebhookClient::agent_command(&member_id(who), "takeover", now_ms());
    hub.outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap()
}

#[tokio::test]
async fn an_agent_writing_to_a_member_the_bot_holds_takes_them_over_and_the_bot_falls_silent() {
    // Arrange: the customer is with the bot
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        ..Default::default()
    })
    .await;
    hub.say("kim", "my order is late").await;
    hub.wait_received("kim", 1).await;

    // Act
    let (status, body) = agent_writes(&hub, "kim", "Hi Kim, I can help with that").await;

    // Assert: the chat is live with the desk, the customer is told who joined, the bot
    // heard it should be silent, and the customer's next words go to the agent
    assert_eq!(status, 200, "{body}");
    let got = hub.wait_received("kim", 3).await;
    assert_eq!(
        got.iter().map(text_of).collect::<Vec<_>>(),
        [
            "You said: my order is late",
            "Ann has joined the chat.",
            "Hi Kim, I can help with that"
        ]
    );
    let told = hub
        .wait_bot(|c| c["event"] == "live_chat_started" && c["member"]["externalId"] == "kim")
        .await;
    assert_eq!(told["liveChatStarted"]["reason"], "agent_takeover");
    hub.say("kim", "thanks, order 12").await;
    let relays = hub.wait_desk(Api::Relay, 1).await;
    assert_eq!(relays[0].body["response"]["text"], "thanks, order 12");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "thanks, order 12"),
        "the bot did not get it"
    );
    let member = member_id("kim").parse().unwrap();
    assert!(hub.wait_conversation_state(member, "live").await.is_none());
    hub.shutdown().await;
}

#[tokio::test]
async fn a_watching_desk_sees_the_bot_conversation_as_it_happens_and_an_agent_who_answers_takes_over()
 {
    // Arrange: the desk watches its inlets' bot conversations
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        outlet_live_chat: "monitor: true",
        ..Default::default()
    })
    .await;

    // Act: the customer talks to the bot
    hub.say("mia", "where is my order?").await;
    hub.say("mia", "it is late").await;
    hub.wait_received("mia", 2).await;

    // Assert: the desk got each line, in order, marked read-only and with no live chat
    let watched = hub.wait_desk(Api::Relay, 4).await;
    let lines: Vec<(String, String)> = watched
        .iter()
        .map(|r| {
            assert_eq!(r.body["mode"], "bot", "{}", r.body);
            assert!(r.body.get("conversationId").is_none(), "{}", r.body);
            assert_eq!(r.body["member"]["_id"], member_id("mia").as_str());
            (
                r.body["author"].as_str().unwrap_or_default().to_string(),
                r.body["response"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    let customer: Vec<_> = lines.iter().filter(|(a, _)| a == "customer").collect();
    let bot: Vec<_> = lines.iter().filter(|(a, _)| a == "bot").collect();
    assert_eq!(
        customer.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["where is my order?", "it is late"]
    );
    assert_eq!(
        bot.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["You said: where is my order?", "You said: it is late"]
    );
    let first_answer = lines.iter().position(|(a, _)| a == "bot").unwrap();
    assert_eq!(
        lines[0].0, "customer",
        "the question before its answer: {lines:?}"
    );
    assert!(first_answer >= 1);

    // … and an agent who answers takes the member over: from then on, the live chat's relays
    let (status, body) = agent_writes(&hub, "mia", "Hi Mia, let me look").await;
    assert_eq!(status, 200, "{body}");
    hub.say("mia", "order 77").await;
    let relays = hub.wait_desk(Api::Relay, 5).await;
    assert_eq!(relays[4].body["response"]["text"], "order 77");
    assert!(relays[4].body.get("mode").is_none(), "{}", relays[4].body);
    assert!(relays[4].body["conversationId"].is_string());
    hub.shutdown().await;
}

#[tokio::test]
async fn an_unwatched_desk_gets_nothing_of_the_bot_conversations() {
    // Arrange: the default desk (no `monitor`)
    let hub = TestHub::start().await;

    // Act
    hub.say("ned", "hello").await;
    hub.wait_received("ned", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Assert
    assert!(hub.desk.calls(Api::Relay).is_empty());
    hub.shutdown().await;
}

#[tokio::test]
async fn of_two_agents_racing_to_take_a_member_over_one_gets_the_chat_and_the_other_409() {
    // Arrange
    let hub = TestHub::start().await;
    hub.say("lee", "hello").await;
    hub.wait_received("lee", 1).await;

    // Act: two takeover commands at once, then a third after
    let (a, b) = tokio::join!(takeover(&hub, "lee"), takeover(&hub, "lee"));
    let late = takeover(&hub, "lee").await;

    // Assert
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{a:?} {b:?}");
    let loser = if a.0 == 409 { &a.1 } else { &b.1 };
    assert_eq!(loser["error"]["code"], "member_taken");
    assert_eq!(late.0, 409);
    let mut db = hub.db().await;
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversations WHERE member_id = $1::uuid AND state = 'live'
           AND trigger = 'agent_takeover'",
    )
    .bind(member_id("lee"))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(open, 1);
    hub.wait_bot(|c| c["event"] == "live_chat_started" && c["member"]["externalId"] == "lee")
        .await;
    hub.shutdown().await;
}

#[tokio::test]
async fn an_outlet_that_does_not_take_over_gets_409_for_a_member_the_bot_holds() {
    // Arrange: the desk's agents may not take members over
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "agentTakeover: false",
        ..Default::default()
    })
    .await;
    hub.say("mo", "hello").await;
    hub.wait_received("mo", 1).await;

    // Act
    let (status, body) = agent_writes(&hub, "mo", "hi").await;
    let (command, _) = takeover(&hub, "mo").await;

    // Assert
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "member_not_live");
    assert_eq!(
        command, 404,
        "`takeover` is just an unknown conversation here"
    );
    hub.shutdown().await;
}

async fn agent_named(hub: &TestHub, who: &str, agent: &str, text: &str) {
    let mut body = WebhookClient::agent_reply(&member_id(who), text);
    body["sendToInlet"]["agentName"] = json!(agent);
    let (status, _) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
}

async fn done(hub: &TestHub, ticket: &str) {
    assert_eq!(hub.desk_command(ticket, "done").await.0, 200);
}

#[tokio::test]
async fn a_returning_customers_handoff_names_the_previous_chat_group_and_agent() {
    // Arrange: a live chat with Alice, ended
    let hub = TestHub::start().await;
    let first = crate::live_chat::hand_off(&hub, "val", 1).await;
    agent_named(&hub, "val", "Alice", "Alice here").await;
    done(&hub, "T-1").await;
    let member = member_id("val").parse().unwrap();
    assert!(
        hub.wait_conversation_state(member, "closed")
            .await
            .is_some()
    );

    // Act: back within the hour
    hub.say("val", "talk to a human").await;

    // Assert
    let asked = hub.wait_desk(Api::Livechat, 2).await;
    let meta = &asked[1].body["meta"];
    assert_eq!(
        meta["previousConversationId"],
        first["meta"]["conversationId"]
    );
    assert_eq!(meta["previousGroupName"], "support");
    assert_eq!(meta["previousAgentName"], "Alice");
    hub.shutdown().await;
}

#[tokio::test]
async fn an_outlet_that_reopens_takes_the_returning_customers_next_message_back_into_the_chat() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "reopen: true",
        ..Default::default()
    })
    .await;
    let first = crate::live_chat::hand_off(&hub, "wyn", 1).await;
    agent_named(&hub, "wyn", "Bo", "Bo here").await;
    done(&hub, "T-1").await;
    let member = member_id("wyn").parse().unwrap();
    assert!(
        hub.wait_conversation_state(member, "closed")
            .await
            .is_some()
    );

    // Act
    hub.say("wyn", "one more thing").await;

    // Assert: relayed in the same conversation, which is live again; the bot is silent
    let relays = hub.wait_desk(Api::Relay, 1).await;
    assert_eq!(relays[0].body["response"]["text"], "one more thing");
    assert_eq!(
        relays[0].body["conversationId"],
        first["meta"]["conversationId"]
    );
    assert!(hub.wait_conversation_state(member, "live").await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "one more thing")
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_transfer_moves_a_live_chat_to_another_team_and_every_later_message_goes_there_in_order()
{
    // Arrange: a live chat with the first team
    let hub = TestHub::start_with(HubOptions {
        notices: None,
        ..Default::default()
    })
    .await;
    crate::live_chat::hand_off(&hub, "xia", 1).await;
    hub.say("xia", "before").await;
    hub.wait_desk(Api::Relay, 1).await;

    // Act: the agent moves it to team b, with a group
    let body = WebhookClient::agent_command("T-1", "transfer desk-b billing", now_ms());
    let (status, _) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
    for i in 0..5 {
        hub.say("xia", &format!("after {i}")).await;
    }

    // Assert: team b was asked (with the group), the first team heard it ended, and
    // everything after went to team b, in order, once
    let asked = hub.wait_desk(Api::Livechat, 2).await;
    assert_eq!(asked[1].body["meta"]["trigger"], "transfer");
    assert_eq!(asked[1].body["assignmentDetails"]["groupName"], "billing");
    let deadline = tokio::time::Instant::now() + WAIT;
    let (to_b, ended) = loop {
        let relays = hub.desk.calls(Api::Relay);
        let to_b: Vec<String> = relays
            .iter()
            .filter(|r| r.body["channel"]["info"]["team"] == "b")
            .filter_map(|r| r.body["response"]["text"].as_str().map(str::to_string))
            .collect();
        if to_b.len() >= 5 {
            let ended = relays
                .iter()
                .any(|r| r.body["response"]["reason"] == "transferred");
            break (to_b, ended);
        }
        assert!(tokio::time::Instant::now() < deadline, "{to_b:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        to_b,
        (0..5).map(|i| format!("after {i}")).collect::<Vec<_>>()
    );
    assert!(ended, "the first team heard the chat was transferred");
    let texts = hub.received_once("xia");
    assert!(
        texts
            .contains(&"You're being transferred to another team. One moment, please.".to_string()),
        "{texts:?}"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_transfer_the_other_team_refuses_leaves_the_chat_with_the_first_team_which_is_told() {
    // Arrange: a live chat with the first team; the other team's desk will refuse
    let hub = TestHub::start().await;
    crate::live_chat::hand_off(&hub, "yan", 1).await;
    let member: uuid::Uuid = member_id("yan").parse().unwrap();
    let mut db = hub.db().await;
    let first: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM conversations WHERE member_id = $1 AND state = 'live'")
            .bind(member)
            .fetch_one(&mut db)
            .await
            .unwrap();
    hub.desk.fail_next(Api::Livechat, 1, 400);

    // Act: the agent transfers; the customer writes meanwhile
    let (status, _) = hub.desk_command("T-1", "transfer desk-b billing").await;
    assert_eq!(status, 200);
    hub.say("yan", "still there?").await;

    // Assert: the first chat is live again; its desk heard the transfer failed and got
    // the customer's message in that chat; the bot got nothing
    let deadline = tokio::time::Instant::now() + WAIT;
    let relays = loop {
        let relays: Vec<_> = hub
            .desk
            .calls(Api::Relay)
            .into_iter()
            .filter(|r| r.body["channel"]["info"]["team"] != "b")
            .collect();
        if relays
            .iter()
            .any(|r| r.body["response"]["text"] == "still there?")
            && relays
                .iter()
                .any(|r| r.body["response"]["event"] == "TRANSFER_FAILED")
        {
            break relays;
        }
        assert!(tokio::time::Instant::now() < deadline, "{relays:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let into_first =
        |r: &handoff_simulators::Recorded| r.body["conversationId"] == first.to_string().as_str();
    assert!(relays.iter().all(into_first), "{relays:?}");
    let live: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM conversations WHERE member_id = $1 AND state = 'live'")
            .bind(member)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(live, first);
    assert!(
        !hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "still there?"),
        "the bot did not get it"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_subscribed_url_hears_each_lifecycle_event_of_a_handoff_once_in_order_and_signed() {
    // Arrange: the org's CRM subscribes
    let hub = TestHub::start_with(HubOptions {
        subscriber: true,
        ..Default::default()
    })
    .await;

    // Act: a handoff, accepted, answered twice, ended
    crate::live_chat::hand_off(&hub, "yan", 1).await;
    agent_named(&hub, "yan", "Cy", "Cy here").await;
    agent_named(&hub, "yan", "Cy", "anything else?").await;
    done(&hub, "T-1").await;

    // Assert
    let deadline = tokio::time::Instant::now() + WAIT;
    let events = loop {
        let mut seen = std::collections::HashSet::new();
        let events: Vec<_> = hub
            .other_customer
            .calls(Api::Relay)
            .into_iter()
            .filter(|c| seen.insert(c.webhook_id.clone()))
            .collect();
        if events.len() >= 4 {
            break events;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e.body["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "handoff_requested",
            "accepted",
            "first_agent_reply",
            "ended"
        ]
    );
    assert_eq!(events[0].body["outlet"], OUTLET);
    assert_eq!(events[0].body["memberId"], member_id("yan"));
    assert_eq!(events[1].body["outlet"], OUTLET, "{}", events[1].body);
    assert!(events[1].body["seconds"].as_f64().is_some());
    assert_eq!(events[2].body["agentName"], "Cy");
    assert_eq!(events[3].body["reason"], "agent_ended");
    let signer = handoff_platforms::Signer::new(INLET_SECRET);
    for e in &events {
        let expected = signer.sign(
            &e.webhook_id,
            e.timestamp.expect("timestamped"),
            e.body.to_string().as_bytes(),
        );
        assert_eq!(
            e.signature.as_deref(),
            Some(expected.as_str()),
            "{}",
            e.body
        );
    }
    let relays = hub.other_customer.calls(Api::Relay).len();
    assert_eq!(relays, 4, "each once");
    hub.shutdown().await;
}

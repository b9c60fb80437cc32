use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::{Value, json};

use crate::helpers::*;

/// Customer asks for an agent; the desk accepts. Returns the Livechat API body.
pub(crate) async fn hand_off(hub: &TestHub, who: &str, cycle: usize) -> Value {
    let (status, _) = hub.say(who, "agent").await;
    assert_eq!(status, 200);
    let calls = hub.wait_desk(Api::Livechat, cycle).await;
    assert_eq!(calls.len(), cycle, "livechat requested");
    let body = calls[cycle - 1].body.clone();
    // Wait until the router has seen the acceptance (the member is LIVE).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut db = hub.db().await;
        let live: Option<String> = sqlx::query_scalar(
            "SELECT state FROM conversations WHERE member_id = $1::uuid AND state = 'live'",
        )
        .bind(member_id(who))
        .fetch_optional(&mut db)
        .await
        .unwrap();
        if live.is_some() {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "never became live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn agent_says(hub: &TestHub, who: &str, text: &str) -> (u16, Value) {
    hub.outlet
        .post(
            OUTLET,
            ORG,
            OUTLET_TOKEN,
            &WebhookClient::agent_reply(&member_id(who), text),
            &[],
        )
        .await
        .unwrap()
}

async fn agent_command(hub: &TestHub, conversation: &str, text: &str) -> (u16, Value) {
    let body = WebhookClient::agent_command(conversation, text, now_ms());
    hub.outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap()
}

#[tokio::test]
async fn a_member_goes_to_a_human_and_back_to_the_bot_twice() {
    // Arrange
    let hub = TestHub::start().await;
    let mut relayed = 0;
    let mut received = 0;

    for cycle in 1..=2 {
        // Act: bot, handoff, five relayed messages, agent replies, done, bot again.
        hub.say("ann", &format!("hello {cycle}")).await;
        received += 2; // bot answer, then "Connecting you…"
        let livechat = hand_off(&hub, "ann", cycle).await;
        assert_eq!(livechat["member"]["_id"], member_id("ann"));
        assert_eq!(livechat["assignmentDetails"]["groupName"], "support");
        assert_eq!(
            livechat["assignmentDetails"]["summary"],
            "Customer asked for an agent"
        );
        assert_eq!(livechat["meta"]["source"], "demo-bot");
        let conversation = livechat["meta"]["conversationId"]
            .as_str()
            .unwrap()
            .to_string();
        let history = livechat["chatHistoryURL"].as_str().unwrap().to_string();
        for i in 0..5 {
            hub.say("ann", &format!("c{cycle} question {i}")).await;
        }
        relayed += 5;
        let relays = hub.wait_desk(Api::Relay, relayed).await;
        let texts: Vec<&str> = relays[relayed - 5..]
            .iter()
            .map(|r| r.body["response"]["text"].as_str().unwrap())
            .collect();
        let expected: Vec<String> = (0..5).map(|i| format!("c{cycle} question {i}")).collect();
        assert_eq!(texts, expected);
        assert_eq!(
            relays[relayed - 1].body["member"]["botMeta"]["liveChat"],
            true
        );
        assert_eq!(relays[relayed - 1].body["member"]["_id"], member_id("ann"));
        assert_eq!(
            agent_says(&hub, "ann", &format!("agent answer {cycle}"))
                .await
                .0,
            200
        );
        received += 1;
        hub.wait_received("ann", received).await;
        // The ticket id the desk returned names the conversation too.
        let ticket = format!("T-{cycle}");
        assert_eq!(agent_command(&hub, &ticket, "done").await.0, 200);
        received += 1; // end text
        hub.say("ann", &format!("back {cycle}")).await;
        received += 1;
        let got = hub.wait_received("ann", received).await;

        // Assert
        let texts: Vec<String> = got.iter().map(text_of).collect();
        assert_eq!(
            texts[texts.len() - 3..],
            [
                format!("agent answer {cycle}"),
                "The agent has left. The assistant is back.".to_string(),
                format!("You said: back {cycle}"),
            ]
        );
        assert_eq!(
            hub.desk.calls(Api::Relay).len(),
            relayed,
            "nothing relayed after done"
        );
        let transcript: Value = reqwest::Client::new()
            .get(history.replace("http://127.0.0.1:8090", hub.router_url.as_deref().unwrap()))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let lines = transcript["messages"].as_array().unwrap();
        let has = |author: &str, text: &str| {
            lines
                .iter()
                .any(|l| l["author"] == author && l["content"]["text"] == text)
        };
        assert!(has("customer", &format!("hello {cycle}")));
        assert!(has("bot", &format!("You said: hello {cycle}")));
        assert!(has("customer", &format!("c{cycle} question 4")));
        assert!(has("agent", &format!("agent answer {cycle}")));
        // The link is for this conversation: not what came after it, nor an earlier chat.
        assert!(!has("bot", &format!("You said: back {cycle}")));
        if cycle == 2 {
            assert!(!has("agent", "agent answer 1"));
        }
        let _ = conversation;
    }
    let html = reqwest::get(format!(
        "{}/history/not-a-token",
        hub.router_url.as_deref().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(html.status(), 404);
    hub.shutdown().await;
}

#[tokio::test]
async fn two_hundred_quick_messages_reach_the_outlet_in_order_once() {
    // Arrange
    let hub = TestHub::start().await;
    hand_off(&hub, "zed", 1).await;

    // Act
    for i in 0..200 {
        let (status, _) = hub.say("zed", &format!("n{i}")).await;
        assert_eq!(status, 200);
    }

    // Assert
    let relays = hub.wait_desk(Api::Relay, 200).await;
    let texts: Vec<String> = relays
        .iter()
        .map(|r| r.body["response"]["text"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
    assert_eq!(texts, expected);
    // Nothing went to the bot while LIVE ("agent" was its last message).
    assert_eq!(hub.bot.calls().len(), 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_message_the_outlet_cannot_take_goes_to_the_bot_flagged_and_is_answered() {
    // Arrange
    let hub = TestHub::start().await;
    hand_off(&hub, "rio", 1).await;
    hub.desk.set_failing(Api::Relay, Some(503));

    // Act
    hub.say("rio", "anyone there?").await;

    // Assert
    let got = hub.wait_received("rio", 2).await;
    assert_eq!(
        text_of(&got[1]),
        "Sorry, your message \"anyone there?\" could not reach the agent. I'm here meanwhile."
    );
    let flagged = hub
        .bot
        .calls()
        .into_iter()
        .find(|c| c["event"] == "relay_failed")
        .unwrap();
    assert_eq!(flagged["message"]["text"], "anyone there?");
    assert_eq!(flagged["message"]["relayMessageError"]["status"], 503);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_failing_livechat_api_leaves_the_member_with_the_bot_which_is_told_why() {
    // Arrange
    let hub = TestHub::start().await;
    hub.desk.set_failing(Api::Livechat, Some(422));

    // Act
    hub.say("sam", "agent").await;
    let got = hub.wait_received("sam", 2).await;
    hub.say("sam", "still there?").await;

    // Assert
    let got2 = hub.wait_received("sam", 3).await;
    assert!(
        text_of(&got[1]).starts_with("No agent is available right now"),
        "{}",
        text_of(&got[1])
    );
    assert_eq!(text_of(&got2[2]), "You said: still there?");
    let told = hub
        .bot
        .calls()
        .into_iter()
        .find(|c| c["event"] == "handoff_failed")
        .unwrap();
    assert_eq!(told["handoffError"]["reason"], "livechat_failed");
    assert_eq!(told["handoffError"]["status"], 422);
    assert!(hub.desk.calls(Api::Relay).is_empty());
    hub.shutdown().await;
}

#[tokio::test]
async fn an_agent_reply_posted_twice_reaches_the_customer_once() {
    // Arrange
    let hub = TestHub::start().await;
    hand_off(&hub, "ivy", 1).await;
    let body = WebhookClient::agent_reply(&member_id("ivy"), "only once");

    // Act
    for _ in 0..2 {
        let (status, _) = hub
            .outlet
            .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[("webhook-id", "msg_1")])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }
    agent_says(&hub, "ivy", "sentinel").await;

    // Assert
    let got = hub.wait_received("ivy", 3).await;
    let texts: Vec<String> = got.iter().map(text_of).collect();
    assert_eq!(
        texts,
        ["Connecting you to a human agent…", "only once", "sentinel"]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn agents_get_404_for_unknown_members_and_409_for_members_not_live() {
    // Arrange: a desk whose agents do not take members over (takeover.rs has those)
    let hub = TestHub::start_with(HubOptions {
        outlet_live_chat: "agentTakeover: false",
        ..Default::default()
    })
    .await;
    hub.say("pat", "hi").await;
    hub.wait_received("pat", 1).await;

    // Act
    let (unknown, e1) = agent_says(&hub, "nobody", "hello?").await;
    let (not_live, e2) = agent_says(&hub, "pat", "hello?").await;
    let (no_conv, e3) = agent_command(&hub, "T-999", "done").await;

    // Assert
    assert_eq!(
        (unknown, e1["error"]["code"].as_str()),
        (404, Some("unknown_member"))
    );
    assert_eq!(
        (not_live, e2["error"]["code"].as_str()),
        (409, Some("member_not_live"))
    );
    assert_eq!(
        (no_conv, e3["error"]["code"].as_str()),
        (404, Some("unknown_conversation"))
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn an_agent_command_goes_to_the_bot_and_its_answer_back_to_the_outlet() {
    // Arrange
    let hub = TestHub::start().await;
    hand_off(&hub, "ola", 1).await;

    // Act
    assert_eq!(agent_command(&hub, "T-1", "status").await.0, 200);

    // Assert
    let sent = hub.wait_desk(Api::Send, 1).await;
    assert_eq!(sent[0].body["conversationId"], "T-1");
    assert_eq!(
        sent[0].body["response"]["text"],
        "Bot received command: status"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn pending_and_live_timeouts_return_the_member_to_the_bot_with_their_reason() {
    // Arrange: the desk never answers in time; LIVE chats idle out quickly.
    let hub = TestHub::start_with(HubOptions {
        pending_timeout_secs: 1,
        live_idle_timeout_secs: 1,
        ..Default::default()
    })
    .await;
    hub.desk.stall(Api::Livechat, Duration::from_secs(4));

    // Act / Assert: PENDING times out.
    hub.say("tom", "agent").await;
    let got = hub.wait_received("tom", 2).await;
    assert!(
        text_of(&got[1]).contains("pending_timeout"),
        "{}",
        text_of(&got[1])
    );
    let mut db = hub.db().await;
    let reason: String = sqlx::query_scalar("SELECT close_reason FROM conversations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(reason, "pending_timeout");

    // LIVE idles out.
    hub.desk.stall(Api::Livechat, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(4)).await; // the stalled call finishes, late
    hand_off(&hub, "uma", 1 + hub.desk.calls(Api::Livechat).len()).await;
    let got = hub.wait_received("uma", 2).await;
    assert_eq!(
        text_of(&got[1]),
        "The agent has left. The assistant is back."
    );
    let ended = hub
        .wait_bot(|c| c["event"] == "live_chat_ended" && c["member"]["externalId"] == "uma")
        .await;
    assert_eq!(
        ended["liveChatEnded"],
        json!({"reason": "live_idle_timeout"})
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_configured_keyword_hands_the_customer_over_without_asking_the_bot() {
    // Arrange
    let hub = TestHub::start().await;

    // Act
    hub.say("kay", "Talk to a human").await;

    // Assert
    let calls = hub.wait_desk(Api::Livechat, 1).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["meta"]["trigger"], "keyword");
    assert_eq!(calls[0].body["member"]["_id"], member_id("kay"));
    assert!(
        hub.bot.calls().is_empty(),
        "the keyword is not the bot's to answer"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_message_of_an_unknown_shape_held_while_pending_is_relayed_and_the_chat_goes_live() {
    // Arrange: the desk takes a moment to accept.
    let hub = TestHub::start().await;
    hub.desk.stall(Api::Livechat, Duration::from_millis(1500));
    hub.say("odd", "agent").await;
    hub.wait_conversation_state(member_id("odd").parse().unwrap(), "pending")
        .await;

    // Act: while pending, the customer sends something the model has no form for.
    let mut odd = WebhookClient::customer_text("odd", INLET, "", now_ms());
    odd["sendToBot"]["messageEvent"]["type"] = json!("SHAPE");
    odd["sendToBot"]["messageEvent"]["data"] = json!({"type": 42, "shape": "unknown"});
    let (status, body) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &odd, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");

    // Assert: the acceptance lands, the message is relayed as sent, the agent is heard.
    hub.wait_conversation_state(member_id("odd").parse().unwrap(), "live")
        .await;
    let relays = hub.wait_desk(Api::Relay, 1).await;
    assert_eq!(relays.len(), 1);
    assert_eq!(
        relays[0].body["response"]["shape"], "unknown",
        "{}",
        relays[0].body
    );
    let (status, body) = agent_says(&hub, "odd", "Hello, how can I help?").await;
    assert_eq!(status, 200, "{body}");
    assert!(hub.wait_dead_letters(0).await.is_empty(), "nothing parked");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_heavy_transcript_is_served_as_its_newest_megabyte_saying_how_much_is_left_out() {
    // Arrange: a customer writes eight messages of 200 KB each, then asks for a human.
    let hub = TestHub::start().await;
    let big = "x".repeat(200 * 1024);
    for i in 0..8 {
        assert_eq!(hub.say("heavy", &format!("{i}{big}")).await.0, 200);
    }
    hub.wait_received("heavy", 8).await;
    let livechat = hand_off(&hub, "heavy", 1).await;
    let history = livechat["chatHistoryURL"]
        .as_str()
        .unwrap()
        .replace("http://127.0.0.1:8090", hub.router_url.as_deref().unwrap());

    // Act
    let response = reqwest::Client::new()
        .get(&history)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let bytes = response.bytes().await.unwrap();
    let html = reqwest::get(&history).await.unwrap().text().await.unwrap();

    // Assert: the page holds the newest lines up to about a megabyte, and says so.
    assert!(bytes.len() < 1_600_000, "{} bytes", bytes.len());
    let page: Value = serde_json::from_slice(&bytes).unwrap();
    let lines = page["messages"].as_array().unwrap();
    let omitted = page["omittedOlder"].as_i64().unwrap();
    // Sixteen lines of 200 KB (the customer's and the bot's echo): about five fit.
    assert!(omitted >= 8, "{omitted} older lines left out");
    assert!(lines.len() as i64 + omitted >= 17, "{} lines", lines.len());
    assert!(
        lines.iter().any(|l| l["content"]["text"] == "agent"),
        "the newest lines are kept"
    );
    assert!(html.contains(&format!("{omitted} older lines are not shown")));
    hub.shutdown().await;
}

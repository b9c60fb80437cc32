//! The customer knows what is happening: a notice at each move of a handoff, in their
//! inlet's words and in order with everything else they receive; and a bot that never
//! talks over a human.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::live_chat::hand_off;

/// Every notice at its default text.
fn defaults() -> HubOptions {
    HubOptions {
        notices: None,
        ..Default::default()
    }
}

async fn say_as(hub: &TestHub, who: &str, profile: Value, text: &str) -> u16 {
    let mut body = WebhookClient::customer_text(who, INLET, text, now_ms());
    body["profile"] = profile;
    hub.inlet
        .post(INLET, ORG, INLET_TOKEN, &body, &[])
        .await
        .unwrap()
        .0
}

async fn agent_says_as(hub: &TestHub, who: &str, agent: Option<&str>, text: &str) -> u16 {
    let mut body = WebhookClient::agent_reply(&member_id(who), text);
    if let Some(agent) = agent {
        body["sendToInlet"]["agentName"] = json!(agent);
    }
    hub.outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap()
        .0
}

async fn agent_done(hub: &TestHub, ticket: &str) {
    let body = WebhookClient::agent_command(ticket, "done", now_ms());
    let (status, _) = hub
        .outlet
        .post(OUTLET, ORG, OUTLET_TOKEN, &body, &[])
        .await
        .unwrap();
    assert_eq!(status, 200);
}

async fn texts_received(hub: &TestHub, who: &str, n: usize) -> Vec<String> {
    hub.wait_received(who, n).await;
    hub.received_once(who)
}

#[tokio::test]
async fn each_notice_reaches_the_customer_at_its_moment_and_in_order_with_the_chat() {
    // Arrange
    let hub = TestHub::start_with(defaults()).await;

    // Act: the bot hands over, the desk queues it, Alice answers twice and ends the chat
    hub.say("nia", "hello").await;
    hand_off(&hub, "nia", 1).await;
    assert_eq!(
        agent_says_as(&hub, "nia", Some("Alice"), "Hi, Alice here").await,
        200
    );
    assert_eq!(
        agent_says_as(&hub, "nia", Some("Alice"), "How can I help?").await,
        200
    );
    hub.wait_received("nia", 7).await;
    agent_done(&hub, "T-1").await;

    // Assert
    let got = texts_received(&hub, "nia", 8).await;
    assert_eq!(
        got,
        [
            "You said: hello",
            "Connecting you to a human agent…",
            "I'm connecting you with a person. One moment, please.",
            "You're in the queue. An agent will be with you shortly.",
            "Alice has joined the chat.",
            "Hi, Alice here",
            "How can I help?",
            "The agent has left. The assistant is back.",
        ]
    );
    let notices = hub.transcript_events("NOTICE").await;
    assert_eq!(notices, 4, "each notice is in the transcript");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_desk_that_names_the_agent_on_acceptance_has_them_join_at_once_and_only_once() {
    // Arrange
    let hub = TestHub::start_with(defaults()).await;
    hub.desk.set_livechat_agent(Some("Bob"));

    // Act
    hub.say("odo", "talk to a human").await;
    hand_off_by_keyword(&hub, "odo").await;
    assert_eq!(agent_says_as(&hub, "odo", None, "Bob speaking").await, 200);

    // Assert: no queue notice, one join notice with the desk's name
    let got = texts_received(&hub, "odo", 3).await;
    assert_eq!(
        got,
        [
            "I'm connecting you with a person. One moment, please.",
            "Bob has joined the chat.",
            "Bob speaking",
        ]
    );
    hub.shutdown().await;
}

/// Waits until the member is LIVE (the customer asked with the keyword already).
async fn hand_off_by_keyword(hub: &TestHub, who: &str) {
    let member = member_id(who).parse().unwrap();
    assert!(
        hub.wait_conversation_state(member, "live").await.is_some(),
        "never became live"
    );
}

#[tokio::test]
async fn a_silenced_notice_is_not_sent_and_the_profiles_locale_picks_a_translation() {
    // Arrange
    let hub = TestHub::start_with(HubOptions {
        notices: Some(
            "{queued: ~, agentJoined: '{agentName|Someone} is here for you, {profile.firstName}', \
             translations: {de: {handoffRequested: 'Einen Moment bitte'}}}",
        ),
        ..Default::default()
    })
    .await;
    let german = json!({"firstName": "Uta", "locale": "de-DE"});
    let english = json!({"firstName": "Ed", "locale": "en"});

    // Act
    for (who, profile) in [("uta", german), ("ed", english)] {
        assert_eq!(say_as(&hub, who, profile, "talk to a human").await, 200);
        hand_off_by_keyword(&hub, who).await;
        assert_eq!(agent_says_as(&hub, who, None, "hello").await, 200);
    }

    // Assert
    assert_eq!(
        texts_received(&hub, "uta", 3).await,
        [
            "Einen Moment bitte",
            "Someone is here for you, Uta",
            "hello"
        ]
    );
    assert_eq!(
        texts_received(&hub, "ed", 3).await,
        [
            "I'm connecting you with a person. One moment, please.",
            "Someone is here for you, Ed",
            "hello"
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hub.received("uta").len(),
        3,
        "nothing else, no queue notice"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_handoff_nobody_can_take_tells_the_customer_once_and_returns_them_to_the_bot() {
    // Arrange: the desk cannot be reached (the handoff horizon is 2 s)
    let hub = TestHub::start_with(HubOptions {
        unreachable_desk_token: Some("desk-secret"),
        notices: None,
        ..Default::default()
    })
    .await;

    // Act
    hub.say("pia", "talk to a human").await;
    let got = texts_received(&hub, "pia", 3).await;

    // Assert: asked, then told nobody is there (the demo bot says so too, in its words)
    assert_eq!(
        got[0],
        "I'm connecting you with a person. One moment, please."
    );
    assert!(
        got[1..].contains(
            &"No one from our team is available right now. Our assistant will keep helping you."
                .to_string()
        ),
        "{got:?}"
    );
    hub.say("pia", "still there?").await;
    let got = texts_received(&hub, "pia", 4).await;
    assert_eq!(got[3], "You said: still there?", "the bot answers again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.received("pia").len(), 4, "no notice loops");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_bot_answer_arriving_after_the_handoff_is_withheld_and_reaches_the_desk_as_context() {
    // Arrange: the bot takes 1.5 s over this customer's first message
    let hub = TestHub::start().await;
    hub.bot
        .set_think_time_for("wes", Duration::from_millis(1_500));

    // Act: the customer asks for a human while the bot thinks
    hub.say("wes", "where is my parcel").await;
    hub.wait_bot(|c| c["member"]["externalId"] == "wes").await;
    hub.say("wes", "talk to a human").await;
    hand_off_by_keyword(&hub, "wes").await;

    // Assert: the desk gets the answer as context; the customer never sees it
    let relays = hub.wait_desk(Api::Relay, 1).await;
    let context = &relays[0].body["response"];
    assert_eq!(context["type"], "EVENT", "{context}");
    assert_eq!(context["event"], "BOT_ANSWER_WITHHELD");
    assert_eq!(
        context["text"],
        "The bot would have answered: You said: where is my parcel"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        hub.received_once("wes").is_empty(),
        "{:?}",
        hub.received_once("wes")
    );
    let mut db = hub.db().await;
    let withheld: Vec<String> = sqlx::query_scalar(
        "SELECT content->>'text' FROM messages WHERE member_id = $1::uuid AND withheld",
    )
    .bind(member_id("wes"))
    .fetch_all(&mut db)
    .await
    .unwrap();
    assert_eq!(withheld, ["You said: where is my parcel"]);

    // And once the live chat is over, the bot talks to the customer again
    agent_done(&hub, "T-1").await;
    hub.bot.set_think_time_for("wes", Duration::ZERO);
    hub.say("wes", "thanks").await;
    let got = texts_received(&hub, "wes", 2).await;
    assert_eq!(
        got,
        [
            "The agent has left. The assistant is back.",
            "You said: thanks"
        ]
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn a_burst_within_the_bots_window_is_one_turn_and_a_handoff_word_still_acts_at_once() {
    // Arrange: the bot takes bursts within 600 ms as one turn
    let hub = TestHub::start_with(HubOptions {
        coalesce_ms: 600,
        ..Default::default()
    })
    .await;

    // Act: three fragments at once, each with its platform message id
    for (i, text) in ["hi", "I need", "to change my order"]
        .into_iter()
        .enumerate()
    {
        let mut body = WebhookClient::customer_text("bea", INLET, text, now_ms());
        body["sendToBot"]["messageEvent"]["messageId"] = json!(format!("m-{i}"));
        let (status, _) = hub
            .inlet
            .post(INLET, ORG, INLET_TOKEN, &body, &[])
            .await
            .unwrap();
        assert_eq!(status, 200);
    }

    // Assert: one call, one answer, every id kept in order
    let got = texts_received(&hub, "bea", 1).await;
    assert_eq!(got, ["You said: hi\nI need\nto change my order"]);
    let calls: Vec<Value> = hub
        .bot
        .calls()
        .into_iter()
        .filter(|c| c["member"]["externalId"] == "bea")
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["messageIds"], json!(["m-0", "m-1", "m-2"]));

    // Act: a fragment, then the handoff word within the window
    hub.say("bea", "my parcel").await;
    hub.say("bea", "talk to a human").await;
    hand_off_by_keyword(&hub, "bea").await;

    // Assert: the fragment went to the desk with the handoff, never to the bot
    let relays = hub.wait_desk(Api::Relay, 1).await;
    assert_eq!(relays[0].body["response"]["text"], "my parcel");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !hub.bot
            .calls()
            .iter()
            .any(|c| c["message"]["text"] == "my parcel"),
        "the bot never got it"
    );
    hub.shutdown().await;
}

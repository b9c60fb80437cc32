//! Nothing poisons, nothing is silently dropped: what can never be handled is parked and
//! replayable, outages delay and never drop, ids mean what they say, and a service whose
//! consumers die says so.

use std::time::Duration;

use handoff_simulators::{Api, WebhookClient};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::independence::{late, others_answer_times};
use crate::live_chat::{agent_says, hand_off};

fn texts(hub: &TestHub, who: &str) -> Vec<String> {
    hub.received(who).iter().map(text_of).collect()
}

#[tokio::test]
async fn a_bot_answer_the_store_refuses_and_one_too_large_are_parked_while_fifty_others_are_answered_on_time()
 {
    // Arrange: one customer's bot answers with NUL (Postgres refuses it), another's with
    // 1 MiB of text (over the answer size limit).
    let hub = TestHub::start().await;
    hub.bot.set_answer_for(
        "nul",
        json!({"responses": [{"type": "TEXT", "text": "a\u{0}b"}]}),
    );
    hub.bot.set_answer_for(
        "huge",
        json!({"responses": [{"type": "TEXT", "text": "x".repeat(1024 * 1024)}]}),
    );
    for who in ["nul", "huge", "nul"] {
        assert_eq!(hub.say(who, "hello").await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    let waited = others_answer_times(&hub).await;

    // Assert: nobody waits; each poisoned answer is parked with its reason and bytes, and
    // the NUL customer's second message was handled too (their lane moved on).
    assert!(late(&waited).is_empty(), "late: {:?}", late(&waited));
    let letters = hub.wait_dead_letters(3).await;
    let nul: Vec<&Value> = letters
        .iter()
        .filter(|l| l["memberId"] == member_id("nul"))
        .collect();
    assert_eq!(nul.len(), 2, "{letters:?}");
    assert!(
        nul.iter()
            .all(|l| l["service"] == "router" && l["kind"] == "bot_reply")
    );
    let huge: Vec<&Value> = letters
        .iter()
        .filter(|l| l["memberId"] == member_id("huge"))
        .collect();
    assert_eq!(huge.len(), 1, "{letters:?}");
    assert_eq!(huge[0]["kind"], "send_to_bot");
    assert!(
        huge[0]["reason"].as_str().unwrap().contains("larger than"),
        "{}",
        huge[0]["reason"]
    );
    assert!(huge[0]["size"].as_u64().unwrap() > 0);
    hub.shutdown().await;
}

#[tokio::test]
async fn undecodable_bytes_on_the_bus_are_parked_and_the_partition_flows_on() {
    // Arrange: bytes no Handoff service wrote, on the router's subjects.
    let hub = TestHub::start().await;
    let client = async_nats::connect(&hub.settings.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subject = format!("{}.events.p0.inbound_message", hub.settings.nats.prefix);
    js.publish(subject.clone(), "\u{ff}not protobuf".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // Act
    assert_eq!(hub.say("after", "hi").await.0, 200);

    // Assert
    assert_eq!(hub.wait_received("after", 1).await.len(), 1);
    let letters = hub.wait_dead_letters(1).await;
    assert_eq!(letters[0]["subject"], subject);
    assert_eq!(letters[0]["service"], "router");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("undecodable")
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn customers_with_empty_message_ids_or_the_same_message_id_are_each_answered() {
    // Arrange: three platforms send `messageId: ""`; two number messages per conversation.
    let hub = TestHub::start().await;
    let with_id = |who: &str, id: &str| {
        let mut body = WebhookClient::customer_text(who, INLET, "hi", now_ms());
        body["sendToBot"]["messageEvent"]["messageId"] = json!(id);
        body
    };
    let sent = [
        ("empty-1", ""),
        ("empty-2", ""),
        ("empty-3", ""),
        ("one-1", "1"),
        ("one-2", "1"),
    ];

    // Act
    for (who, id) in sent {
        let (status, body) = hub
            .inlet
            .post(INLET, ORG, INLET_TOKEN, &with_id(who, id), &[])
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_ne!(body["duplicate"], true, "{who}: {body}");
    }

    // Assert: each is answered once; the same id from the same customer is still one message.
    for (who, _) in sent {
        assert_eq!(hub.wait_received(who, 1).await.len(), 1, "{who}");
    }
    let (_, again) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &with_id("one-1", "1"), &[])
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&hub, "one-1"), ["You said: hi"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_twenty_second_send_api_outage_delays_every_answer_and_loses_none() {
    // Arrange: deliveries are retried for two minutes; the customers' platform is down.
    let hub = TestHub::start_with(HubOptions {
        retry_horizon_secs: 120,
        ..HubOptions::default()
    })
    .await;
    hub.customer.set_failing(Api::Send, Some(503));

    // Act: three customers write during the outage; it ends 20 s later.
    for i in 1..=3 {
        for who in ["ola", "ben", "kim"] {
            assert_eq!(hub.say(who, &format!("m{i}")).await.0, 200);
        }
    }
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(hub.received("ola").is_empty(), "the platform was down");
    hub.customer.set_failing(Api::Send, None);

    // Assert: every answer arrives, in order, once; nothing was parked or marked failed.
    for who in ["ola", "ben", "kim"] {
        hub.wait_received(who, 3).await;
        assert_eq!(
            texts(&hub, who),
            ["You said: m1", "You said: m2", "You said: m3"],
            "{who}"
        );
    }
    let failed = hub.transcript_events("DELIVERY_FAILED").await;
    assert_eq!(failed, 0);
    assert!(hub.wait_dead_letters(0).await.is_empty());
    hub.shutdown().await;
}

#[tokio::test]
async fn a_delivery_the_platform_refused_is_parked_and_delivered_when_replayed_with_handoffctl() {
    // Arrange: the platform refuses this customer's messages (400) until it is fixed.
    let hub = TestHub::start().await;
    hub.customer.set_failing_for("rex", Some(400));
    assert_eq!(hub.say("rex", "hello").await.0, 200);
    let letters = hub.wait_dead_letters(1).await;
    assert_eq!(letters[0]["service"], "inlet-gateway");
    assert_eq!(letters[0]["kind"], "deliver_to_member");
    assert!(letters[0]["reason"].as_str().unwrap().contains("400"));
    let id = letters[0]["id"].as_i64().unwrap().to_string();
    let metrics = reqwest::get(format!("{}/metrics", hub.router_ops.as_deref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"handoff_dead_letters{state="parked",service="inlet-gateway"} 1"#),
        "{metrics}"
    );

    // Act
    hub.customer.set_failing_for("rex", None);
    let (ok, out) = hub.handoffctl(&["dead-letters", "replay", &id]).await;

    // Assert
    assert!(ok, "{out}");
    assert_eq!(hub.wait_received("rex", 1).await.len(), 1);
    assert_eq!(texts(&hub, "rex"), ["You said: hello"]);
    assert!(
        hub.wait_dead_letters(0).await.is_empty(),
        "no longer parked"
    );
    let (ok, _) = hub.handoffctl(&["dead-letters", "replay", &id]).await;
    assert!(!ok, "a replayed letter cannot be replayed again");
    hub.shutdown().await;
}

#[tokio::test]
async fn a_bot_call_parked_for_an_unreadable_answer_reaches_the_customer_when_replayed() {
    // Arrange: the bot answers this customer with something that is not an answer.
    let hub = TestHub::start().await;
    hub.bot.set_answer_for("ray", json!({"responses": 42}));
    assert_eq!(hub.say("ray", "hello").await.0, 200);
    let letters = hub.wait_dead_letters(1).await;
    assert_eq!(letters[0]["service"], "outlet-gateway", "{letters:?}");
    let id = letters[0]["id"].as_i64().unwrap().to_string();

    // Act: the bot is mended; an operator replays its call.
    hub.bot.set_answer_for(
        "ray",
        json!({"responses": [{"type": "TEXT", "text": "Sorry, here it is"}]}),
    );
    let (ok, out) = hub.handoffctl(&["dead-letters", "replay", &id]).await;

    // Assert: the answer of the replayed call reaches the customer, once.
    assert!(ok, "{out}");
    assert_eq!(hub.wait_received("ray", 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&hub, "ray"), ["Sorry, here it is"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn an_agent_message_the_customer_never_gets_is_parked_and_the_agent_is_told() {
    // Arrange: a live chat, and the customer's platform refusing this customer.
    let hub = TestHub::start().await;
    assert_eq!(hub.say("liv", "hi").await.0, 200);
    hand_off(&hub, "liv", 1).await;
    hub.wait_received("liv", 2).await;
    hub.customer.set_failing_for("liv", Some(410));

    // Act
    assert_eq!(agent_says(&hub, "liv", "Are you there?").await.0, 200);

    // Assert: the desk hears of it through the relay, with the message that failed.
    let relays = hub.wait_desk(Api::Relay, 1).await;
    let notice = &relays[0].body["response"];
    assert_eq!(notice["event"], "DELIVERY_FAILED", "{notice}");
    assert_eq!(notice["status"], 410);
    assert_eq!(notice["message"]["text"], "Are you there?");
    assert_eq!(hub.wait_dead_letters(1).await.len(), 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn the_same_agent_words_are_one_message_within_the_duplicate_window_and_a_new_one_after() {
    // Arrange: bodies without any id are recognised for 2 s.
    let hub = TestHub::start_with(HubOptions {
        duplicate_window_secs: 2,
        ..HubOptions::default()
    })
    .await;
    assert_eq!(hub.say("ann", "hi").await.0, 200);
    hand_off(&hub, "ann", 1).await;
    let before = hub.wait_received("ann", 2).await.len();

    // Act: the same reply posted twice at once, then again after the window.
    assert_eq!(agent_says(&hub, "ann", "On it.").await.0, 200);
    assert_eq!(agent_says(&hub, "ann", "On it.").await.0, 200);
    hub.wait_received("ann", before + 1).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        hub.received("ann").len(),
        before + 1,
        "the re-post was one message"
    );
    assert_eq!(agent_says(&hub, "ann", "On it.").await.0, 200);

    // Assert
    let got = hub.wait_received("ann", before + 2).await;
    assert_eq!(got.len(), before + 2);
    assert_eq!(text_of(&got[before + 1]), "On it.");
    hub.shutdown().await;
}

#[tokio::test]
async fn consumers_deleted_under_the_services_are_restarted_and_a_lost_stream_turns_readyz_to_not_ready()
 {
    // Arrange
    let hub = TestHub::start().await;
    assert_eq!(hub.say("pat", "one").await.0, 200);
    hub.wait_received("pat", 1).await;
    let js = async_nats::jetstream::new(async_nats::connect(&hub.settings.nats.url).await.unwrap());
    let stream_name = hub.settings.nats.prefix.to_uppercase();

    // Act 1: every consumer of every service is deleted behind its back, in both streams.
    for name in [
        stream_name.clone(),
        handoff_bus::commands_stream(&hub.settings.nats.prefix),
    ] {
        let stream = js.get_stream(&name).await.unwrap();
        let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumer_names())
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert!(!names.is_empty(), "{name} has consumers");
        for consumer in &names {
            stream.delete_consumer(consumer).await.unwrap();
        }
    }

    // Assert 1: they come back by themselves, and messages flow within seconds.
    let started = std::time::Instant::now();
    assert_eq!(hub.say("pat", "two").await.0, 200);
    assert_eq!(hub.wait_received("pat", 2).await.len(), 2);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    // Act 2: the stream inlet-gateway consumes is gone; it cannot consume.
    js.delete_stream(handoff_bus::commands_stream(&hub.settings.nats.prefix))
        .await
        .unwrap();

    // Assert 2: readiness says so instead of answering 200 while consuming nothing.
    // Why, on the ops port; the public port says only "not ready".
    let readyz = format!("{}/readyz", hub.inlet_ops);
    let public = format!("{}/readyz", hub.inlet.base_url());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let resp = reqwest::get(&readyz).await.unwrap();
        if resp.status() == 503 {
            let why = resp.text().await.unwrap();
            assert!(why.contains("not consuming"), "{why}");
            let public = reqwest::get(&public).await.unwrap();
            assert_eq!(public.status(), 503);
            assert_eq!(public.text().await.unwrap(), "not ready");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn retention_prunes_old_inbox_ids_and_transcripts_but_keeps_parked_messages() {
    // Arrange: some traffic, and one parked delivery.
    let hub = TestHub::start().await;
    hub.customer.set_failing_for("rex", Some(400));
    for who in ["a", "b", "rex"] {
        assert_eq!(hub.say(who, "hello").await.0, 200);
    }
    hub.wait_received("a", 1).await;
    hub.wait_received("b", 1).await;
    hub.wait_dead_letters(1).await;
    let pool = sqlx::PgPool::connect(secrecy::ExposeSecret::expose_secret(
        &hub.settings.database.url,
    ))
    .await
    .unwrap();

    // Act: everything is older than a zero-day retention.
    let pruned = router::retention::prune(
        &pool,
        &handoff_config::RetentionSettings {
            processed_events_days: 0,
            transcript_days: 0,
            resolved_dead_letters_days: 0,
            prune_interval_secs: 1,
        },
    )
    .await
    .unwrap();

    // Assert
    assert!(pruned.processed_events >= 6, "{pruned:?}");
    assert!(pruned.messages >= 4, "{pruned:?}");
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("processed_events").await, 0);
    assert_eq!(count("dead_letters").await, 1, "parked messages are kept");
    pool.close().await;
    hub.shutdown().await;
}

#[tokio::test]
async fn a_stream_filled_while_the_router_is_down_drains_when_it_returns_and_answers_every_accepted_message()
 {
    // Arrange: a small events stream, and no router.
    let mut hub = TestHub::start_with(HubOptions {
        router: false,
        stream_max_bytes: 256 * 1024,
        ..Default::default()
    })
    .await;

    // Act: fifty customers write until the hub refuses.
    let customers: Vec<String> = (0..50).map(|i| format!("full-{i}")).collect();
    let mut accepted: std::collections::HashMap<&str, usize> = Default::default();
    let mut refusal = None;
    'fill: for round in 0.. {
        for c in &customers {
            let body = WebhookClient::customer_text(c, INLET, &format!("m{round}"), now_ms());
            let (status, answer) = hub
                .inlet
                .post(INLET, ORG, INLET_TOKEN, &body, &[])
                .await
                .unwrap();
            match status {
                200 => *accepted.entry(c.as_str()).or_default() += 1,
                _ => {
                    refusal = Some((status, answer));
                    break 'fill;
                }
            }
        }
    }
    let total: usize = accepted.values().sum();
    let (status, answer) = refusal.unwrap();
    hub.start_router().await;

    // Assert: refused with a clear "come back later" before the stream was full; then
    // every accepted message is answered, once, in order.
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (503, Some("busy")),
        "{answer}"
    );
    assert!(total > 100, "only {total} accepted before the refusal");
    for (c, n) in &accepted {
        let got = hub.wait_received(c, *n).await;
        let expected: Vec<String> = (0..*n).map(|i| format!("You said: m{i}")).collect();
        assert_eq!(got.iter().map(text_of).collect::<Vec<_>>(), expected, "{c}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hub.customer.calls(Api::Send).len(),
        total,
        "each answered once"
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn what_can_never_fit_a_bus_message_is_refused_at_the_edge_or_parked_and_the_member_moves_on()
{
    // Arrange: a bus whose messages are at most 64 KiB, and a live customer with a 40 KB
    // profile.
    let nats = OwnNats::start_with(Some(64 * 1024)).await;
    let hub = TestHub::start_with(HubOptions {
        nats_url: Some(nats.url.clone()),
        ..Default::default()
    })
    .await;
    let note = "p".repeat(40 * 1024);
    let mut ask = WebhookClient::customer_text("wide", INLET, "talk to a human", now_ms());
    ask["profile"]["note"] = json!(note);
    let (status, body) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &ask, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    hub.wait_conversation_state(member_id("wide").parse().unwrap(), "live")
        .await;

    // Act: the customer sends what cannot fit with their profile; an agent sends what
    // cannot reach the customer with it; then a short answer.
    let mut wide = WebhookClient::customer_text("wide", INLET, &"t".repeat(30 * 1024), now_ms());
    wide["profile"]["note"] = json!(note);
    let (refused, error) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &wide, &[])
        .await
        .unwrap();
    let (status, body) = agent_says(&hub, "wide", &"a".repeat(25 * 1024)).await;
    assert_eq!(status, 200, "{body}");
    let letters = hub.wait_dead_letters(1).await;
    let (status, body) = agent_says(&hub, "wide", "Are you still there?").await;
    assert_eq!(status, 200, "{body}");

    // Assert: the edge says 413 at once (not 503 for ever); the agent's message is parked
    // with its reason; the next one reaches the customer.
    assert_eq!(refused, 413, "{error}");
    assert_eq!(error["error"]["code"], "payload_too_large");
    assert_eq!(letters[0]["service"], "router", "{letters:?}");
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("larger than a bus message"),
        "{letters:?}"
    );
    let got = hub.wait_received("wide", 1).await;
    assert_eq!(
        got.iter().map(text_of).collect::<Vec<_>>(),
        ["Are you still there?"]
    );
    hub.shutdown().await;
    drop(nats);
}

#[tokio::test]
async fn a_router_whose_events_stop_getting_through_says_so_and_recovers_when_they_do() {
    // Arrange: two seconds without an applied event, while events are tried, is a stall.
    let hub = TestHub::start_with(HubOptions {
        stalled_after_secs: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(hub.say("stuck", "one").await.0, 200);
    hub.wait_received("stuck", 1).await;
    let readyz = format!("{}/readyz", hub.router_ops.as_deref().unwrap());
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    // Act: someone holds the inbox table locked; the customer writes again.
    let mut blocker = hub.db().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    assert_eq!(hub.say("stuck", "two").await.0, 200);

    // Assert: readiness says so within the stall time and some; then, with the lock
    // gone, the message is applied and readiness comes back.
    let deadline = tokio::time::Instant::now() + WAIT;
    let why = loop {
        let resp = reqwest::get(&readyz).await.unwrap();
        if resp.status() == 503 {
            break resp.text().await.unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "readyz stayed 200");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(why.contains("none has been applied"), "{why}");
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    let got = hub.wait_received("stuck", 2).await;
    assert_eq!(text_of(&got[1]), "You said: two");
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(&readyz).await.unwrap().status() != 200 {
        assert!(tokio::time::Instant::now() < deadline, "readyz stayed 503");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    hub.shutdown().await;
}

//! No customer waits for another: a slow bot, a failing endpoint, a killed router or a
//! rebalancing replica delays only the members it concerns.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use handoff_simulators::{Api, Recorded};

use crate::helpers::*;

const OTHERS: usize = 50;
/// Under what the held-up party costs (a 1.8-s bot, a failing endpoint, a parked
/// message), so a lane shared with it could not be this quick; and, in a debug build on
/// 2 cores running other tests at once, not a bound that noise crosses (0.5 s was).
const ON_TIME: Duration = Duration::from_millis(1_200);

/// Sends one message for each of `OTHERS` customers at once and returns how long each
/// waited for its answer (request sent → answer at the customer's platform).
pub(crate) async fn others_answer_times(hub: &TestHub) -> Vec<(String, Duration)> {
    let mut tap = hub.customer.tap();
    let sent: HashMap<String, Instant> = futures::future::join_all((0..OTHERS).map(|i| {
        let who = format!("other-{i}");
        async move {
            let at = Instant::now();
            let (status, body) = hub.say(&who, "hi").await;
            assert_eq!(status, 200, "{body}");
            (who, at)
        }
    }))
    .await
    .into_iter()
    .collect();
    let mut waited = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while waited.len() < OTHERS {
        let (arrived, call): (Instant, Recorded) = tokio::time::timeout_at(deadline, tap.recv())
            .await
            .expect("every other customer is answered")
            .expect("tap open");
        let who = call.body["member"]["externalId"]
            .as_str()
            .unwrap_or_default();
        if let Some(at) = sent.get(who) {
            waited.push((who.to_string(), arrived - *at));
        }
    }
    waited
}

pub(crate) fn late(waited: &[(String, Duration)]) -> Vec<&(String, Duration)> {
    waited.iter().filter(|(_, d)| *d > ON_TIME).collect()
}

#[tokio::test]
async fn a_bot_thinking_for_seconds_about_one_customer_leaves_fifty_others_answered_on_time() {
    // Arrange: the bot takes 1.8 s (within the call timeout) for one customer, who has two messages waiting.
    let hub = TestHub::start().await;
    hub.bot
        .set_think_time_for("slow", Duration::from_millis(1_800));
    for text in ["first", "second"] {
        assert_eq!(hub.say("slow", text).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Act
    let waited = others_answer_times(&hub).await;

    // Assert: nobody else waits; the slow customer's answers come, in order.
    assert!(late(&waited).is_empty(), "late: {:?}", late(&waited));
    let slow: Vec<String> = hub
        .wait_received("slow", 2)
        .await
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(slow, ["You said: first", "You said: second"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_customer_whose_deliveries_fail_holds_back_only_their_own_answers() {
    // Arrange: deliveries are retried for seconds; this customer's platform answers 503.
    let hub = TestHub::start_with(HubOptions {
        delivery_attempts: 40,
        backoff_ms: (100, 100),
        ..Default::default()
    })
    .await;
    hub.customer.set_failing_for("unlucky", Some(503));
    for text in ["one", "two", "three"] {
        assert_eq!(hub.say("unlucky", text).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Act
    let waited = others_answer_times(&hub).await;
    hub.customer.set_failing_for("unlucky", None);

    // Assert: the others were on time; the unlucky customer gets all three, in order,
    // once the platform recovers.
    assert!(late(&waited).is_empty(), "late: {:?}", late(&waited));
    let got: Vec<String> = hub
        .wait_received("unlucky", 3)
        .await
        .iter()
        .map(text_of)
        .collect();
    assert_eq!(got, ["You said: one", "You said: two", "You said: three"]);
    hub.shutdown().await;
}

#[tokio::test]
async fn every_customer_flows_within_five_seconds_of_a_killed_router_restarting() {
    // Arrange: a redelivery timeout far longer than the promise, so only a takeover that
    // does not wait for it can keep the promise.
    let mut hub = TestHub::start_with(HubOptions {
        router_process: true,
        ack_wait_secs: 60,
        ..Default::default()
    })
    .await;
    let members: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for round in 0..3 {
        for m in &members {
            assert_eq!(hub.say(m, &format!("before {round}")).await.0, 200);
        }
    }

    // Act: SIGKILL while those are in flight, messages keep coming, then a restart.
    hub.kill_router().await;
    for m in &members {
        assert_eq!(hub.say(m, "while down").await.0, 200);
    }
    let restarted = Instant::now();
    hub.start_router().await;
    for m in &members {
        assert_eq!(hub.say(m, "after").await.0, 200);
    }

    // Assert: every member has all five answers within 5 s of the restart, in order, once.
    for m in &members {
        let got = hub.wait_received(m, 5).await;
        let texts: Vec<String> = got.iter().map(text_of).collect();
        assert_eq!(
            texts,
            [
                "You said: before 0",
                "You said: before 1",
                "You said: before 2",
                "You said: while down",
                "You said: after"
            ],
            "{m}"
        );
    }
    assert!(
        restarted.elapsed() <= Duration::from_secs(5),
        "the last member flowed {:?} after the restart",
        restarted.elapsed()
    );
    hub.shutdown().await;
}

#[tokio::test]
async fn two_routers_and_two_outlet_gateways_joining_and_leaving_keep_every_members_order() {
    // Arrange
    let mut hub = TestHub::start().await;
    let members: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    const N: usize = 15;

    // Act: replicas join while customers write, then the first ones leave.
    let writers = futures::future::join_all(members.iter().map(|m| {
        let inlet = hub.inlet.clone();
        let m = m.clone();
        async move {
            for i in 0..N {
                let body = handoff_simulators::WebhookClient::customer_text(
                    &m,
                    INLET,
                    &format!("m{i}"),
                    now_ms(),
                );
                let (status, _) = inlet
                    .post(INLET, ORG, INLET_TOKEN, &body, &[])
                    .await
                    .unwrap();
                assert_eq!(status, 200);
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
    }));
    let churn = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        hub.add_router_replica().await;
        hub.add_outlet_replica().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second_router = hub.add_router_replica().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.stop_replica(second_router).await;
    };
    tokio::join!(writers, churn);

    // Assert: every member's answers arrived once each, in the order they wrote.
    for m in &members {
        let texts: Vec<String> = hub.wait_received(m, N).await.iter().map(text_of).collect();
        let expected: Vec<String> = (0..N).map(|i| format!("You said: m{i}")).collect();
        assert_eq!(texts, expected, "{m}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.customer.calls(Api::Send).len(), members.len() * N);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_tenant_whose_send_api_is_down_delays_only_its_own_customers_and_loses_nothing() {
    // Arrange: four partitions with small acknowledgement windows (compressed time), an
    // hour-like horizon, and failing deliveries held after one second.
    let mut hub = TestHub::start_with(HubOptions {
        partitions: 4,
        max_ack_pending: 10,
        hold_after_secs: 1,
        retry_horizon_secs: 300,
        ..Default::default()
    })
    .await;
    hub.customer.set_failing(Api::Send, Some(503));

    // Act: acme's Send API is down while thirty of its customers write twice; then
    // globex's customers write.
    let down: Vec<String> = (0..30).map(|i| format!("down-{i}")).collect();
    for round in 0..2 {
        for c in &down {
            assert_eq!(hub.say(c, &format!("m{round}")).await.0, 200);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for i in 0..5 {
        assert_eq!(hub.say_elsewhere(&format!("up-{i}"), "hello").await.0, 200);
    }

    // Assert: globex is answered at once, whatever acme's backlog.
    for i in 0..5 {
        let got = hub.wait_received_elsewhere(&format!("up-{i}"), 1).await;
        assert_eq!(got.len(), 1, "up-{i} not answered");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(5), "globex waited {waited:?}");
    // A second inlet-gateway joins and takes partitions over, held members with them.
    hub.add_inlet_replica().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // acme recovers: every message arrives, in order, each once (a retry that got through
    // after all comes under the same webhook-id).
    hub.customer.set_failing(Api::Send, None);
    for c in &down {
        let deadline = tokio::time::Instant::now() + WAIT;
        let distinct = || hub.received_once(c);
        while distinct().len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(distinct(), ["You said: m0", "You said: m1"], "{c}");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_service_holds_a_bounded_number_of_bytes_however_much_waits_for_it() {
    // Arrange: each process may hold 512 KiB in its lanes; the customers' Send API takes
    // 1.5 s per call, so one customer's answers queue behind each other.
    let hub = TestHub::start_with(HubOptions {
        max_held_bytes: 512 * 1024,
        ..Default::default()
    })
    .await;
    hub.customer.stall(Api::Send, Duration::from_millis(1500));

    // Act: a hundred messages of 100 KB from one customer (10 MB of answers to deliver).
    let big = "y".repeat(100 * 1024);
    for i in 0..100 {
        assert_eq!(hub.say("flood", &format!("{i} {big}")).await.0, 200);
    }

    // Assert: while the answers pile up, inlet-gateway has fetched a bounded share of
    // them; the rest wait in the stream, and all arrive, in order, once the platform is
    // fast again.
    let client = async_nats::connect(&hub.settings.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(handoff_bus::commands_stream(&hub.settings.nats.prefix))
        .await
        .unwrap();
    let (mut most_fetched, mut most_waiting) = (0, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while most_waiting < 60 && tokio::time::Instant::now() < deadline {
        let mut fetched = 0;
        let mut consumers = stream.consumers();
        while let Some(info) = futures::TryStreamExt::try_next(&mut consumers)
            .await
            .unwrap()
        {
            if info
                .config
                .filter_subject
                .contains(".deliver.inlet-gateway.")
            {
                fetched += info.num_ack_pending;
            }
        }
        most_fetched = most_fetched.max(fetched);
        most_waiting = most_waiting.max(stream.info().await.unwrap().state.messages);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        most_waiting >= 60,
        "only {most_waiting} answers were ever waiting"
    );
    assert!(
        most_fetched <= 40,
        "inlet-gateway held {most_fetched} answers of 100 KB"
    );
    hub.customer.stall(Api::Send, Duration::ZERO);
    let got = hub.wait_received("flood", 100).await;
    let firsts: Vec<String> = got
        .iter()
        .map(|r| text_of(r).split(' ').take(3).collect::<Vec<_>>().join(" "))
        .collect();
    let expected: Vec<String> = (0..100).map(|i| format!("You said: {i}")).collect();
    assert_eq!(firsts, expected);
    hub.shutdown().await;
}

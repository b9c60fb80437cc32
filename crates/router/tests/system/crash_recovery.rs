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

fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {pid}");
}

#[tokio::test]
async fn a_frozen_router_holds_no_customer_of_the_other_and_resumes_without_doubling() {
    // Arrange: two router processes share the partitions; twenty customers write.
    let hub = TestHub::start_with(HubOptions {
        router_process: true,
        router: false,
        ..Default::default()
    })
    .await;
    let mut routers = Vec::new();
    for _ in 0..2 {
        routers.push(hub.spawn_router(&[]).await);
    }
    let customers: Vec<String> = (0..20).map(|i| format!("frz-{i}")).collect();
    let say_all = async |round: usize| {
        let text = format!("m{round}");
        let posts = customers.iter().map(|c| hub.say(c, &text));
        for (status, body) in futures::future::join_all(posts).await {
            assert_eq!(status, 200, "{body}");
        }
    };
    say_all(0).await;
    for c in &customers {
        hub.wait_received(c, 1).await;
    }

    // Act: one router is frozen (SIGSTOP) in the middle of a burst, holding whatever it
    // held: leases, a transaction, members' locks. The customers keep writing.
    let burst = async {
        for round in 1..4 {
            say_all(round).await;
        }
    };
    let freeze = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        signal(&routers[0], "-STOP");
    };
    tokio::join!(burst, freeze);
    let frozen_at = tokio::time::Instant::now();

    // Assert: every customer is answered by the other router while the first stays frozen.
    for c in &customers {
        let got = hub.wait_received(c, 4).await;
        let texts: Vec<String> = got.iter().map(text_of).collect();
        assert_eq!(got.len(), 4, "{c} got {texts:?} while a router was frozen");
    }
    let answered_in = frozen_at.elapsed();
    println!("answered {answered_in:?} after the freeze");
    assert!(
        answered_in < Duration::from_secs(10),
        "answered {answered_in:?} after the freeze"
    );
    // Thawed, the first router finds its work done by its successor: nothing twice.
    signal(&routers[0], "-CONT");
    tokio::time::sleep(Duration::from_secs(hub.settings.nats.ack_wait_secs + 2)).await;
    for c in &customers {
        let texts: Vec<String> = hub.received(c).iter().map(text_of).collect();
        let expected: Vec<String> = (0..4).map(|i| format!("You said: m{i}")).collect();
        assert_eq!(texts, expected, "{c}");
    }
    for mut router in routers {
        let _ = router.start_kill();
        let _ = router.wait().await;
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn after_a_nats_server_restart_every_customer_is_answered_again_with_no_service_restarted() {
    // Arrange: the hub on a NATS server of this test's own.
    let mut nats = OwnNats::start().await;
    let hub = TestHub::start_with(HubOptions {
        nats_url: Some(nats.url.clone()),
        // Its account lease would declare the lease bucket again for everyone.
        zendesk_agent: false,
        ..Default::default()
    })
    .await;
    let customers: Vec<String> = (0..5).map(|i| format!("nrs-{i}")).collect();
    for c in &customers {
        assert_eq!(hub.say(c, "before").await.0, 200);
    }
    for c in &customers {
        assert_eq!(hub.wait_received(c, 1).await.len(), 1);
    }
    let router = hub.router_url.clone().unwrap();
    let inlet_ready = format!("{}/readyz", hub.inlet.base_url());

    // Act: the server restarts; the services keep running.
    nats.kill().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.up().await;
    let restarted = tokio::time::Instant::now();
    // Customers write as soon as the edge takes messages again.
    let deadline = restarted + WAIT;
    for c in &customers {
        let body = handoff_simulators::WebhookClient::customer_text(c, INLET, "after", now_ms());
        loop {
            let mut with_id = body.clone();
            with_id["sendToBot"]["messageEvent"]["messageId"] =
                serde_json::json!(format!("{c}-after"));
            let (status, _) = hub
                .inlet
                .post(INLET, ORG, INLET_TOKEN, &with_id, &[])
                .await
                .unwrap();
            if status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the edge never took messages again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Assert: all answered within 10 s of the restart, once; a re-post with the same
    // message id is one message.
    // A server killed with -9 forgets acknowledgements it had not written: a delivery may
    // come again, always under the same `webhook-id`, which is how a receiver drops it.
    let distinct = |c: &str| hub.received_once(c);
    for c in &customers {
        let deadline = tokio::time::Instant::now() + WAIT;
        while distinct(c).len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(distinct(c), ["You said: before", "You said: after"], "{c}");
    }
    let answered_in = restarted.elapsed();
    assert!(
        answered_in < Duration::from_secs(10),
        "answered {answered_in:?} after the restart"
    );
    let mut again =
        handoff_simulators::WebhookClient::customer_text(&customers[0], INLET, "after", now_ms());
    again["sendToBot"]["messageEvent"]["messageId"] =
        serde_json::json!(format!("{}-after", customers[0]));
    let (status, body) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &again, &[])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        distinct(&customers[0]).len(),
        2,
        "the re-post was answered again"
    );
    for url in [format!("{router}/readyz"), inlet_ready] {
        let status = reqwest::get(&url).await.unwrap().status();
        assert_eq!(status, 200, "{url} after the restart");
    }
    hub.shutdown().await;
}

#[tokio::test]
async fn a_delivery_lost_on_its_way_to_the_router_is_handled_before_the_members_later_messages() {
    // Arrange: a stranger pulls one message from the router's consumer of lee's partition
    // and never answers — what a pull abandoned with messages in flight, or a connection
    // cut by a dying NATS node, leaves behind: JetStream counts it delivered and sends it
    // again only after the ack wait.
    let hub = TestHub::start().await;
    assert_eq!(hub.say("lee", "m0").await.0, 200);
    hub.wait_received("lee", 1).await;
    let prefix = &hub.settings.nats.prefix;
    let partition = handoff_bus::partition_of(&member_id("lee"), hub.settings.nats.partitions);
    let filter = format!("{prefix}.events.p{partition}.>");
    let js = async_nats::jetstream::new(async_nats::connect(&hub.settings.nats.url).await.unwrap());
    let stream = js.get_stream(prefix.to_uppercase()).await.unwrap();
    let mut infos = stream.consumers();
    let mut name = None;
    while let Some(info) = futures::StreamExt::next(&mut infos).await {
        let info = info.unwrap();
        if info.config.filter_subject == filter {
            name = Some(info.name);
        }
    }
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer(&name.expect("the router consumes lee's partition"))
        .await
        .unwrap();
    let mut stranger = consumer
        .batch()
        .max_messages(1)
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .unwrap();

    // Act: lee writes until the stranger has taken one of lee's messages (or the bot's
    // answer to one), then three more.
    let mut sent = 1;
    loop {
        assert_eq!(hub.say("lee", &format!("m{sent}")).await.0, 200);
        sent += 1;
        let taken = tokio::time::timeout(
            Duration::from_millis(300),
            futures::StreamExt::next(&mut stranger),
        )
        .await;
        if let Ok(Some(Ok(_))) = taken {
            break;
        }
        assert!(sent < 20, "the stranger never got a message");
    }
    for _ in 0..3 {
        assert_eq!(hub.say("lee", &format!("m{sent}")).await.0, 200);
        sent += 1;
    }

    // Assert: every answer, once, in order — the lost one did not wait out the ack wait
    // behind lee's later messages.
    let got = hub.wait_received("lee", sent).await;
    let expected: Vec<String> = (0..sent).map(|i| format!("You said: m{i}")).collect();
    assert_eq!(got.iter().map(text_of).collect::<Vec<_>>(), expected);
    tokio::time::sleep(Duration::from_secs(hub.settings.nats.ack_wait_secs + 1)).await;
    assert_eq!(hub.received("lee").len(), sent);
    hub.shutdown().await;
}

use handoff_simulators::WebhookClient;
use serde_json::{Value, json};

use crate::helpers::*;

async fn stream_messages(hub: &TestHub) -> u64 {
    let client = async_nats::connect(&hub.settings.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(hub.settings.nats.prefix.to_uppercase())
        .await
        .unwrap();
    stream.info().await.unwrap().state.messages
}

fn good() -> Value {
    WebhookClient::customer_text("eve", INLET, "hi", now_ms())
}

#[tokio::test]
async fn bad_requests_get_a_specific_status_and_error_and_store_nothing() {
    // Arrange: no router, so whatever inlet-gateway publishes stays in the stream.
    let hub = TestHub::start_with(HubOptions {
        router: false,
        ..Default::default()
    })
    .await;
    let mut no_external = good();
    no_external.as_object_mut().unwrap().remove("externalId");
    let mut no_from = good();
    no_from["sendToBot"]["messageEvent"]
        .as_object_mut()
        .unwrap()
        .remove("from");
    let mut no_text = good();
    no_text["sendToBot"]["messageEvent"]["data"] = json!({});
    let mut bad_ts = good();
    bad_ts["sendToBot"]["messageEvent"]["timestamp"] = json!(true);
    let mut nul = good();
    nul["sendToBot"]["messageEvent"]["data"]["text"] = json!("a\u{0}b");
    let huge = json!({"profile": {}, "externalId": "eve", "sendToBot": {"messageEvent": {
        "from": "eve", "type": "TEXT", "data": {"text": "x".repeat(300 * 1024)}, "timestamp": 1}}});

    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<u8>,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            INLET,
            INLET_TOKEN,
            b"{not json".to_vec(),
            400,
            "malformed_json",
            None,
        ),
        (
            "missing externalId",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&no_external).unwrap(),
            400,
            "invalid_field",
            Some("externalId"),
        ),
        (
            "missing from",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&no_from).unwrap(),
            400,
            "invalid_field",
            Some("sendToBot.messageEvent.from"),
        ),
        (
            "TEXT without text",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&no_text).unwrap(),
            400,
            "invalid_field",
            Some("sendToBot.messageEvent.data.text"),
        ),
        (
            "bad timestamp",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&bad_ts).unwrap(),
            400,
            "invalid_field",
            Some("sendToBot.messageEvent.timestamp"),
        ),
        (
            "text Postgres cannot store (NUL)",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&nul).unwrap(),
            400,
            "invalid_field",
            Some("sendToBot.messageEvent.data.text"),
        ),
        (
            "wrong token",
            INLET,
            "inlet-token-12X",
            serde_json::to_vec(&good()).unwrap(),
            401,
            "unauthorized",
            None,
        ),
        (
            // The token is checked before the body is read: no 413, no buffering.
            "wrong token with a body over the limit",
            INLET,
            "inlet-token-12X",
            serde_json::to_vec(&huge).unwrap(),
            401,
            "unauthorized",
            None,
        ),
        (
            "unknown channel",
            "nope",
            INLET_TOKEN,
            serde_json::to_vec(&good()).unwrap(),
            404,
            "unknown_channel",
            None,
        ),
        (
            "outlet channel on the inlet gateway",
            OUTLET,
            OUTLET_TOKEN,
            serde_json::to_vec(&good()).unwrap(),
            404,
            "unknown_channel",
            None,
        ),
        (
            "body over 256 KiB",
            INLET,
            INLET_TOKEN,
            serde_json::to_vec(&huge).unwrap(),
            413,
            "payload_too_large",
            None,
        ),
    ];

    // Act / Assert
    for (name, channel, token, body, status, code, field) in cases {
        let (got, err) = hub
            .inlet
            .post_raw(channel, ORG, token, body, &[])
            .await
            .unwrap();
        assert_eq!(got, status, "{name}: {err}");
        assert_eq!(err["error"]["code"], code, "{name}: {err}");
        assert!(
            err["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        if let Some(field) = field {
            assert_eq!(err["error"]["field"], field, "{name}: {err}");
        }
    }
    let (got, err) = hub
        .inlet
        .post(INLET, "other-org", INLET_TOKEN, &good(), &[])
        .await
        .unwrap();
    assert_eq!(
        (got, err["error"]["code"].as_str()),
        (404, Some("unknown_channel")),
        "wrong org"
    );
    assert_eq!(stream_messages(&hub).await, 0, "nothing was published");

    // The same gateway does publish a good request, so the count above could have moved.
    let (got, _) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &good(), &[])
        .await
        .unwrap();
    assert_eq!(got, 200);
    assert_eq!(stream_messages(&hub).await, 1);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_message_is_refused_with_503_when_jetstream_cannot_store_it() {
    // Arrange: the stream disappears under the running gateway.
    let hub = TestHub::start_with(HubOptions {
        router: false,
        ..Default::default()
    })
    .await;
    let client = async_nats::connect(&hub.settings.nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.delete_stream(hub.settings.nats.prefix.to_uppercase())
        .await
        .unwrap();

    // Act
    let (status, err) = hub
        .inlet
        .post(INLET, ORG, INLET_TOKEN, &good(), &[])
        .await
        .unwrap();

    // Assert
    assert_eq!(status, 503, "{err}");
    assert_eq!(err["error"]["code"], "unavailable");
    hub.shutdown().await;
}

/// How long until the server closes `stream` (it reads nothing but the end), or `None`
/// if it is still open after `limit`. `trickle` sends one more header line every 200 ms.
async fn closed_within(
    mut stream: tokio::net::TcpStream,
    trickle: bool,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while started.elapsed() < limit {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                // A 408 before the close is fine; wait for the close itself.
                Ok(_) => {}
            },
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if trickle {
                    n += 1;
                    if stream.write_all(format!("X-Slow-{n}: a\r\n").as_bytes()).await.is_err() {
                        return Some(started.elapsed());
                    }
                }
            }
        }
    }
    None
}

/// A second inlet-gateway beside the hub's, with its HTTP settings changed by `edit`: its
/// address, and the token that stops it.
async fn inlet_gateway_with(
    hub: &TestHub,
    edit: impl FnOnce(&mut handoff_config::HttpSettings),
) -> (String, tokio_util::sync::CancellationToken) {
    let mut settings = hub.settings.clone();
    edit(&mut settings.http);
    let channels = handoff_config::Channels::load(&settings.channels).unwrap();
    let gateway = inlet_gateway::Application::build(&settings, channels)
        .await
        .unwrap();
    let address = format!("127.0.0.1:{}", gateway.port());
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(gateway.run_until_stopped(stop.clone()));
    (address, stop)
}

#[tokio::test]
async fn a_client_trickling_its_headers_or_saying_nothing_is_cut_off_while_others_are_served() {
    // Arrange: an inlet-gateway that gives a request head one second.
    use tokio::io::AsyncWriteExt as _;
    let hub = TestHub::start().await;
    let (address, stop) =
        inlet_gateway_with(&hub, |http| http.header_read_timeout_ms = 1_000).await;

    // Act: a slowloris client sends a head one line at a time, another nothing at all,
    // while a customer writes.
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        format!("POST /v2.4/customWebhook?accessToken={INLET_TOKEN}&c={INLET}&a={ORG} HTTP/1.1\r\nHost: x\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let silent = tokio::net::TcpStream::connect(&address).await.unwrap();
    let limit = std::time::Duration::from_secs(6);
    let client = WebhookClient::new(format!("http://{address}"));
    let body = good();
    let (slow, silent, customer) = tokio::join!(
        closed_within(slow, true, limit),
        closed_within(silent, false, limit),
        client.post(INLET, ORG, INLET_TOKEN, &body, &[]),
    );

    // Assert
    let slow = slow.expect("the trickling client is still connected after 6 s");
    let silent = silent.expect("the silent client is still connected after 6 s");
    assert!(
        slow < std::time::Duration::from_secs(4),
        "cut off after {slow:?}"
    );
    assert!(
        silent < std::time::Duration::from_secs(4),
        "cut off after {silent:?}"
    );
    assert_eq!(customer.unwrap().0, 200);
    stop.cancel();
    hub.shutdown().await;
}

#[tokio::test]
async fn a_burst_of_connections_past_the_limit_waits_in_the_backlog_and_none_is_dropped() {
    // Arrange: an inlet-gateway serving two connections at once, both taken.
    let hub = TestHub::start().await;
    let (address, stop) = inlet_gateway_with(&hub, |http| http.max_connections = 2).await;
    let holders = [
        tokio::net::TcpStream::connect(&address).await.unwrap(),
        tokio::net::TcpStream::connect(&address).await.unwrap(),
    ];

    // Act: hundreds of customers connect at once while it accepts none of them.
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(4096);
    let burst = somaxconn.min(600) - 1;
    assert!(
        burst > 128,
        "net.core.somaxconn is {somaxconn}: too small to tell"
    );
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..burst {
        let address = address.clone();
        connects.spawn(tokio::time::timeout(
            std::time::Duration::from_millis(800),
            async move { tokio::net::TcpStream::connect(address).await },
        ));
    }
    let waiting: Vec<_> = connects
        .join_all()
        .await
        .into_iter()
        .filter_map(|r| r.ok().and_then(Result::ok))
        .collect();

    // Assert: every handshake completed at once (a dropped one is sent again only after a
    // second); once the queue is gone, a customer is served.
    assert_eq!(
        waiting.len(),
        burst,
        "{} of {burst} were queued",
        waiting.len()
    );
    drop(waiting);
    drop(holders);
    let client = WebhookClient::new(format!("http://{address}"));
    assert_eq!(
        client
            .post(INLET, ORG, INLET_TOKEN, &good(), &[])
            .await
            .unwrap()
            .0,
        200
    );
    stop.cancel();
    hub.shutdown().await;
}

#[tokio::test]
async fn every_binary_answers_help_and_version_and_starts_nothing() {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_router"))
        .parent()
        .unwrap()
        .to_path_buf();
    for binary in [
        "router",
        "inlet-gateway",
        "outlet-gateway",
        "zendesk-agent",
        "handoffctl",
        "handoff-sim",
    ] {
        let path = dir.join(binary);
        assert!(
            path.exists(),
            "{} is missing: run scripts/test, or `cargo build --bins` first",
            path.display()
        );
        for (flag, expect) in [("--help", "Usage"), ("--version", "0.1.0")] {
            // Nothing may start: no server, no connection; it answers and exits at once,
            // with no configuration and no servers to talk to.
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::process::Command::new(&path)
                    .arg(flag)
                    .env("HANDOFF_NATS__URL", "nats://127.0.0.1:1")
                    .env(
                        "HANDOFF_DATABASE__URL",
                        "postgres://nobody@127.0.0.1:1/none",
                    )
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .unwrap_or_else(|_| panic!("{binary} {flag} did not exit"))
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{binary} {flag}: {:?} {text}",
                out.status
            );
            assert!(text.contains(expect), "{binary} {flag}: {text}");
            if flag == "--help" && binary != "handoffctl" && binary != "handoff-sim" {
                assert!(text.contains("HANDOFF_NATS__URL"), "{binary}: {text}");
            }
        }
    }
}

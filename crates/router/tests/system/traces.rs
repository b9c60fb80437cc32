//! One customer message is one trace: the services run as processes, each with its own
//! tracer, exporting over OTLP/HTTP to a receiver this test runs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use prost::Message as _;

use crate::helpers::*;

/// The parts of OTLP's `ExportTraceServiceRequest` this test reads (field numbers from
/// opentelemetry-proto's `trace/v1/trace.proto`); everything else is skipped on decode.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }

    /// Only `string_value` (1) of the `value` oneof.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(string, tag = "1")]
        pub string_value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
    }
}

#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP trace receiver on a port of its own.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    /// Raw OTLP metric exports (their instrument names are plain bytes in the protobuf).
    metrics: Arc<Mutex<Vec<Bytes>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
            .route(
                "/v1/metrics",
                post(|State(r): State<Receiver>, body: Bytes| async move {
                    r.metrics.lock().unwrap().push(body);
                    ""
                }),
            )
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://127.0.0.1:{port}")
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

async fn receive(State(receiver): State<Receiver>, body: Bytes) -> &'static str {
    let request = otlp::ExportTraceServiceRequest::decode(body).expect("an OTLP export");
    let mut spans = receiver.spans.lock().unwrap();
    for resource in request.resource_spans {
        let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
        let service = text_attributes(attributes)
            .remove("service.name")
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(Received {
                service: service.clone(),
                trace_id: hex(&span.trace_id),
                attributes: text_attributes(span.attributes),
            });
        }
    }
    ""
}

fn text_attributes(attributes: Vec<otlp::KeyValue>) -> HashMap<String, String> {
    attributes
        .into_iter()
        .map(|kv| (kv.key, kv.value.map(|v| v.string_value).unwrap_or_default()))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_customer_message_is_one_trace_through_every_service_it_crosses() {
    // Arrange: router, inlet-gateway and outlet-gateway as processes, tracing to us
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let hub = TestHub::start_with(HubOptions {
        otlp_endpoint: Some(endpoint),
        ..Default::default()
    })
    .await;

    // Act: a customer writes; the bot answers through the customer's Send API
    let (status, _) = hub.say("trace-1", "hello").await;
    assert_eq!(status, 200);
    hub.wait_received("trace-1", 1).await;

    // Assert: one trace holds spans of all three services, and the bot was called in it
    let wanted: BTreeSet<&str> = ["inlet-gateway", "outlet-gateway", "router"].into();
    let deadline = tokio::time::Instant::now() + WAIT;
    let (trace, services) = loop {
        let mut by_trace: HashMap<String, BTreeSet<String>> = HashMap::new();
        for span in receiver.spans() {
            by_trace
                .entry(span.trace_id)
                .or_default()
                .insert(span.service);
        }
        let complete = by_trace
            .into_iter()
            .find(|(_, services)| wanted.iter().all(|w| services.contains(*w)));
        if let Some(found) = complete {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no trace covers {wanted:?}: {:#?}",
            receiver.spans()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(services.len() >= 3, "{services:?}");
    let traceparent = hub.bot.traceparents().pop().unwrap_or_default();
    assert!(
        traceparent.contains(&trace),
        "the bot's call carries the trace: `{traceparent}` vs {trace}"
    );
    let member = member_id("trace-1");
    let spans = receiver.spans();
    let in_trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace).collect();
    assert!(
        in_trace
            .iter()
            .any(|s| s.attributes.get("member_id") == Some(&member)),
        "spans name the member: {in_trace:#?}"
    );
    assert!(
        in_trace
            .iter()
            .any(|s| s.attributes.get("external_id").map(String::as_str) == Some("trace-1")),
        "the accepting span names the platform's customer id: {in_trace:#?}"
    );
    for span in &spans {
        for value in span.attributes.values() {
            assert!(
                !value.contains(INLET_TOKEN) && !value.contains("hello"),
                "no token and no message text in a span: {span:?}"
            );
        }
    }
    hub.shutdown().await;
}

/// The value of the first sample of `name` carrying every label in `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .next()
}

async fn scrape(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `base`'s `/metrics` until `name{labels}` is at least `min`.
async fn wait_for_sample(base: &str, name: &str, labels: &[(&str, &str)], min: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(base).await;
        match sample(&text, name, labels) {
            Some(v) if v >= min => return v,
            _ if tokio::time::Instant::now() > deadline => {
                panic!("{base}: no {name}{labels:?} >= {min} in\n{text}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn every_service_counts_its_messages_and_times_each_hop_for_prometheus_and_otlp() {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await;
    let hub = TestHub::start_with(HubOptions {
        otlp_endpoint: Some(endpoint),
        ..Default::default()
    })
    .await;
    let (status, _) = hub.say("metrics-1", "hello").await;
    assert_eq!(status, 200);
    hub.wait_received("metrics-1", 1).await;

    // Metrics name channels: they are on each service's ops port, not its public one.
    let inlet = hub.inlet_ops.as_str();
    let outlet = hub.outlet_ops.as_str();
    let router = hub.router_ops.clone().unwrap();
    let public = reqwest::get(format!("{}/metrics", hub.inlet.base_url()))
        .await
        .unwrap()
        .status();
    assert_eq!(public, 404, "no metrics on the public port");
    let customer = [("channel", INLET), ("platform", "custom")];
    assert_eq!(
        wait_for_sample(inlet, "handoff_messages_in_total", &customer, 1.0).await,
        1.0
    );
    // The bot was called once, and its answer reached the customer.
    let bot = [("channel", "demo-bot"), ("platform", "webhook-bot")];
    assert_eq!(
        wait_for_sample(outlet, "handoff_messages_out_total", &bot, 1.0).await,
        1.0
    );
    assert_eq!(
        wait_for_sample(inlet, "handoff_messages_out_total", &customer, 1.0).await,
        1.0
    );
    let end_to_end = [("hop", "end_to_end"), ("platform", "custom")];
    wait_for_sample(inlet, "handoff_latency_seconds_count", &end_to_end, 1.0).await;
    let whole = wait_for_sample(inlet, "handoff_latency_seconds_sum", &end_to_end, 0.0).await;
    assert!(whole > 0.0 && whole < WAIT.as_secs_f64(), "{whole}");
    // The customer's message and the bot's answer were both routed.
    let routed = [("hop", "accepted_to_routed")];
    wait_for_sample(&router, "handoff_latency_seconds_count", &routed, 2.0).await;
    let hop = [("hop", "routed_to_delivered"), ("platform", "webhook-bot")];
    wait_for_sample(outlet, "handoff_latency_seconds_count", &hop, 1.0).await;

    // Read at scrape time from Postgres and the stream.
    let text = scrape(&router).await;
    assert_eq!(
        sample(&text, "handoff_conversations", &[("state", "pending")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "handoff_conversations", &[("state", "live")]),
        Some(0.0)
    );
    assert!(
        sample(
            &text,
            "handoff_jetstream_pending_messages",
            &[("stream", "events")]
        )
        .is_some(),
        "{text}"
    );

    // The same instruments are pushed over OTLP when a collector is configured.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !receiver.metrics.lock().unwrap().iter().any(|export| {
        export
            .windows(b"handoff_messages_in".len())
            .any(|w| w == b"handoff_messages_in")
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no OTLP metric export"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await;
}

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
}

impl Receiver {
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/v1/traces", post(receive))
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
    hub.shutdown().await;
}

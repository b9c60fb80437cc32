//! The hub's OpenTelemetry instruments, one place so every service names them alike.
//!
//! They come from the global meter provider, which `handoff_service::init_telemetry` sets
//! before anything else runs; where it is not set (services embedded in a test process)
//! they record nothing. Labels are channel ids, platform names and fixed reason words only:
//! never member ids, tokens or text, which would explode the series count or leak.

use std::sync::OnceLock;

use handoff_proto::Envelope;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use handoff_bus::{now_ms, origin_of};

struct Instruments {
    messages_in: Counter<u64>,
    messages_out: Counter<u64>,
    delivery_failures: Counter<u64>,
    delivery_retries: Counter<u64>,
    latency: Histogram<f64>,
    handoff_duration: Histogram<f64>,
    csat_answers: Counter<u64>,
    lifecycle: Counter<u64>,
    first_reply: Histogram<f64>,
}

/// Bucket bounds in seconds: a hop is milliseconds, a bot or a desk seconds, an outage minutes.
const LATENCY_BOUNDS: [f64; 16] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];
/// A handoff waits for a human: seconds to hours.
const HANDOFF_BOUNDS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter("handoff");
        Instruments {
            messages_in: meter
                .u64_counter("handoff_messages_in")
                .with_description("Messages accepted from a platform (customers, bots, agents).")
                .build(),
            messages_out: meter
                .u64_counter("handoff_messages_out")
                .with_description("Messages delivered to a platform.")
                .build(),
            delivery_failures: meter
                .u64_counter("handoff_delivery_failures")
                .with_description("Failed delivery attempts, by reason.")
                .build(),
            delivery_retries: meter
                .u64_counter("handoff_delivery_retries")
                .with_description("Deliveries scheduled for another try, by reason.")
                .build(),
            latency: meter
                .f64_histogram("handoff_latency")
                .with_unit("s")
                .with_description(
                    "Seconds per hop: accepted_to_routed, routed_to_delivered, end_to_end.",
                )
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build(),
            handoff_duration: meter
                .f64_histogram("handoff_handoff_duration")
                .with_unit("s")
                .with_description(
                    "Seconds from a handoff request until it was settled, by outcome.",
                )
                .with_boundaries(HANDOFF_BOUNDS.to_vec())
                .build(),
            lifecycle: meter
                .u64_counter("handoff_conversation_events")
                .with_description("Conversation lifecycle events (handoff_requested, accepted, ended, returned_to_bot, handoff_failed, …), by outlet and reason: handoffs by outcome, outside-hours refusals.")
                .build(),
            first_reply: meter
                .f64_histogram("handoff_first_agent_reply")
                .with_unit("s")
                .with_description(
                    "Seconds from the desk's acceptance to the first agent message, by outlet.",
                )
                .with_boundaries(HANDOFF_BOUNDS.to_vec())
                .build(),
            csat_answers: meter
                .u64_counter("handoff_csat_answers")
                .with_description(
                    "Answers to the satisfaction question after a live chat, by inlet and answer.",
                )
                .build(),
        }
    })
}

fn seconds_since(ms: i64) -> f64 {
    (now_ms() - ms).max(0) as f64 / 1000.0
}

/// A platform's message was accepted on `channel`.
pub fn message_in(channel: &str, platform: &str) {
    instruments().messages_in.add(
        1,
        &[
            KeyValue::new("channel", channel.to_string()),
            KeyValue::new("platform", platform.to_string()),
        ],
    );
}

/// Command `envelope` reached its platform: counts it and records how long its last hop
/// and the whole way took.
pub fn delivered(envelope: &Envelope, platform: &str) {
    let m = instruments();
    let platform_kv = KeyValue::new("platform", platform.to_string());
    m.messages_out.add(
        1,
        &[
            KeyValue::new("channel", envelope.channel.clone()),
            platform_kv.clone(),
        ],
    );
    m.latency.record(
        seconds_since(envelope.accepted_at_ms),
        &[
            KeyValue::new("hop", "routed_to_delivered"),
            platform_kv.clone(),
        ],
    );
    m.latency.record(
        seconds_since(origin_of(envelope)),
        &[KeyValue::new("hop", "end_to_end"), platform_kv],
    );
}

/// The router applied event `envelope`.
pub fn routed(envelope: &Envelope) {
    instruments().latency.record(
        seconds_since(envelope.accepted_at_ms),
        &[
            KeyValue::new("hop", "accepted_to_routed"),
            KeyValue::new("platform", "handoff"),
        ],
    );
}

/// A delivery attempt to `channel` failed for `reason` (a fixed word); `retrying` when it
/// will be tried again.
pub fn delivery_failed(channel: &str, platform: &str, reason: &'static str, retrying: bool) {
    let m = instruments();
    let labels = [
        KeyValue::new("channel", channel.to_string()),
        KeyValue::new("platform", platform.to_string()),
        KeyValue::new("reason", reason),
    ];
    m.delivery_failures.add(1, &labels);
    if retrying {
        m.delivery_retries.add(1, &labels);
    }
}

/// A customer of `inlet` answered the satisfaction question with `answer` (one of the
/// inlet's configured replies, so the label's values are bounded).
pub fn csat_answered(inlet: &str, answer: &str) {
    instruments().csat_answers.add(
        1,
        &[
            KeyValue::new("inlet", inlet.to_string()),
            KeyValue::new("answer", answer.to_string()),
        ],
    );
}

/// A conversation lifecycle event (`reason` as the event gives it: `outside_hours`,
/// `agent_ended`, …; bounded by the hub's own codes). `seconds`, for `first_agent_reply`:
/// since the desk accepted.
pub fn lifecycle(event: &'static str, outlet: &str, reason: &str, seconds: Option<f64>) {
    let i = instruments();
    i.lifecycle.add(
        1,
        &[
            KeyValue::new("event", event),
            KeyValue::new("outlet", outlet.to_string()),
            KeyValue::new("reason", reason.to_string()),
        ],
    );
    if let ("first_agent_reply", Some(seconds)) = (event, seconds) {
        i.first_reply
            .record(seconds, &[KeyValue::new("outlet", outlet.to_string())]);
    }
}

/// A handoff requested `seconds` ago was settled: `accepted`, `returned_to_bot` or `closed`.
pub fn handoff_settled(outcome: &'static str, seconds: f64) {
    instruments()
        .handoff_duration
        .record(seconds, &[KeyValue::new("outcome", outcome)]);
}

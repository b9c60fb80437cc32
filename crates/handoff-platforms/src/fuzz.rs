//! Fuzzing of every parser at the edge, on stable Rust: a mutational fuzzer that starts
//! from valid inputs and breaks them (bytes flipped, inserted, cut, spliced; JSON nodes
//! swapped for hostile values), feeding each parser and failing on any panic. A panic found
//! this way is kept as a regression case in `REGRESSIONS` below.
//!
//! `cargo test` runs a short, fixed-seed round of each target; `scripts/fuzz` runs them for
//! a while (`HANDOFF_FUZZ_ITERATIONS`, `HANDOFF_FUZZ_SEED`).

use std::panic::{AssertUnwindSafe, catch_unwind};

use handoff_proto::{Envelope, Message as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::content::{content_from_response, content_to_response};
use crate::custom::parse_webhook_request;
use crate::webhook_bot::parse_answer;

/// Inputs that once broke a parser (or came close), replayed on every run.
const REGRESSIONS: &[&[u8]] = &[
    b"{\"profile\":{},\"externalId\":\"\\u0000\",\"sendToBot\":{}}",
    b"{\"sendToBot\":{\"messageEvent\":{\"from\":\"a\",\"type\":\"TEXT\",\"data\":{\"text\":1},\"timestamp\":\"99999999999999999999\"}}}",
    b"{\"sendToBot\":{\"messageEvent\":{\"from\":\"a\",\"type\":\"CAROUSEL\",\"data\":{\"cards\":[{}]},\"timestamp\":-1}}}",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"channels:\n  - id: a\n    org: b\n    platform: custom\n    role: inlet\n    accessToken: ${",
    b"\x0a\x02\x08\x01\xa2\x01\xff\xff\xff\xff\x0f",
];

fn iterations() -> usize {
    std::env::var("HANDOFF_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000)
}

fn rng() -> StdRng {
    let seed = std::env::var("HANDOFF_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x4846_u64);
    StdRng::seed_from_u64(seed)
}

const HOSTILE: &[&str] = &[
    "\"\\u0000\"",
    "\"\\ud800\"",
    "1e999",
    "-0",
    "18446744073709551616",
    "null",
    "true",
    "[]",
    "{}",
    "\"\"",
    "\"x\"",
    "[null]",
    "{\"type\":null}",
    "-9223372036854775809",
    "\"ÿ\u{202e}\u{fffd}\"",
];

/// One random change to `input`.
fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..4) {
        let len = out.len();
        match rng.random_range(0..6) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                out.insert(i, rng.random());
            }
            2 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len.min(a + 32) + 1).min(len);
                out.drain(a..b);
            }
            3 if len > 1 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..len);
                let piece = out[a..=b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, piece);
            }
            4 => {
                let token = HOSTILE[rng.random_range(0..HOSTILE.len())].as_bytes();
                let at = rng.random_range(0..=len);
                out.splice(at..at, token.iter().copied());
            }
            _ => out.truncate(rng.random_range(0..=len)),
        }
    }
    out
}

/// Replaces a random node of a JSON document with a hostile value or a random kind.
fn mutate_json(rng: &mut StdRng, value: &mut Value) {
    let replace = rng.random_bool(0.3);
    match value {
        Value::Object(map) if !map.is_empty() && !replace => {
            let i = rng.random_range(0..map.len());
            let key = map.keys().nth(i).cloned().expect("index in range");
            if rng.random_bool(0.1) {
                map.remove(&key);
            } else {
                mutate_json(rng, map.get_mut(&key).expect("key exists"));
            }
        }
        Value::Array(items) if !items.is_empty() && !replace => {
            let i = rng.random_range(0..items.len());
            mutate_json(rng, &mut items[i]);
        }
        _ => {
            let hostile = HOSTILE[rng.random_range(0..HOSTILE.len())];
            *value = serde_json::from_str(hostile).unwrap_or(Value::Null);
        }
    }
}

/// Feeds `target` the seeds, the regressions and `iterations()` mutants; fails naming the
/// input of the first panic.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8])) {
    let mut rng = rng();
    let check = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            panic!(
                "fuzz target `{name}` panicked on input (escaped): {}",
                input.escape_ascii()
            );
        }
    };
    for input in REGRESSIONS
        .iter()
        .copied()
        .chain(seeds.iter().map(Vec::as_slice))
    {
        check(input);
    }
    for _ in 0..iterations() {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let input = match serde_json::from_slice::<Value>(seed) {
            Ok(mut value) if rng.random_bool(0.5) => {
                mutate_json(&mut rng, &mut value);
                serde_json::to_vec(&value).expect("a value serializes")
            }
            _ => mutate(&mut rng, seed),
        };
        check(&input);
    }
}

fn json_seeds(values: &[Value]) -> Vec<Vec<u8>> {
    values
        .iter()
        .map(|v| serde_json::to_vec(v).expect("a value serializes"))
        .collect()
}

#[test]
fn webhook_api_bodies_never_panic_the_parser() {
    let seeds = json_seeds(&[
        json!({"profile": {"firstName": "A"}, "externalId": "u", "sendToBot": {"messageEvent": {
            "from": "u", "to": "web", "type": "TEXT", "data": {"text": "hi"}, "timestamp": 1}}}),
        json!({"profile": {}, "externalId": "u", "sendToBot": {"messageEvent": {
            "from": "u", "type": "PAYLOAD", "data": {"payload": "P", "title": "T"},
            "messageId": "m1", "timestamp": "1599536864"}}}),
        json!({"sendToInlet": {"memberId": "m", "response": {"type": "QUICK_REPLIES",
            "text": "pick", "quickReplies": [{"title": "a", "payload": "A"}]}}}),
        json!({"sendToInlet": {"memberId": "m", "response": {"type": "CAROUSEL", "cards": [
            {"title": "t", "buttons": [{"type": "URL", "title": "go", "url": "https://x"}]}]}}}),
    ]);
    fuzz("webhook body", &seeds, |bytes| {
        let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
            return;
        };
        for inlet in [true, false] {
            match parse_webhook_request(&value, inlet) {
                Ok(crate::custom::WebhookRequest::SendToBot { content, .. })
                | Ok(crate::custom::WebhookRequest::SendToInlet { content, .. }) => {
                    // What is accepted must also go out again.
                    let _ = content_to_response(&content);
                }
                Err(e) => assert!(!e.field.is_empty(), "an error names its field"),
            }
        }
    });
}

#[test]
fn bot_answers_never_panic_the_parser() {
    let seeds = json_seeds(&[
        json!({"responses": [{"type": "TEXT", "text": "hi"}], "handoff": {"summary": "s",
            "groupName": "g", "meta": {"a": 1}}, "close": false}),
        json!([{"type": "BUTTONS", "text": "t", "buttons": [{"type": "POSTBACK", "title": "a", "payload": "A"}]}]),
        json!({"responses": [{"type": "MEDIA", "mediaType": "IMAGE", "url": "https://x"}]}),
    ]);
    fuzz("bot answer", &seeds, |bytes| {
        if let Ok(answer) = parse_answer(bytes) {
            for content in &answer.responses {
                let _ = content_from_response(&content_to_response(content));
            }
        }
    });
}

#[test]
fn channel_files_never_panic_the_loader() {
    let seeds = vec![
        include_bytes!("../../../deploy/channels.local.yaml").to_vec(),
        include_bytes!("../../../deploy/channels.compose.yaml").to_vec(),
    ];
    fuzz("channels file", &seeds, |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = handoff_config::Channels::parse(text);
        }
    });
}

#[test]
fn bus_envelopes_never_panic_the_decoder() {
    let envelope = Envelope {
        event_id: "0190c6b4-8f4e-7c2a-9d1b-2f3e4a5b6c7d".into(),
        member_id: "m".into(),
        body: Some(handoff_proto::Body::BotReply(handoff_proto::BotReply {
            responses: vec![
                content_from_response(&json!({"type": "TEXT", "text": "hi"}))
                    .expect("valid content"),
            ],
            ..Default::default()
        })),
        ..Default::default()
    };
    let seeds = vec![
        envelope.encode_to_vec(),
        Envelope::default().encode_to_vec(),
    ];
    fuzz("bus envelope", &seeds, |bytes| {
        if let Ok(envelope) = Envelope::decode(bytes) {
            let _ = envelope.kind();
            if let Some(handoff_proto::Body::BotReply(reply)) = &envelope.body {
                for content in &reply.responses {
                    let _ = content_to_response(content);
                }
            }
        }
    });
}

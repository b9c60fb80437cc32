//! Customers posting to the Webhook API, and what reached their platform.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use handoff_simulators::CustomPlatform;
use serde_json::json;
use tokio::sync::oneshot;

use crate::cluster::{INLET, INLET_TOKEN, ORG};

pub const MESSAGE_BYTES: usize = 512;

/// (customer, sequence number of their message).
pub type Key = (String, u64);

/// The text of message `seq` of `member`, padded to `MESSAGE_BYTES`.
pub fn text(member: &str, seq: u64) -> String {
    let mut t = format!("{member}#{seq}#");
    while t.len() < MESSAGE_BYTES {
        t.push('x');
    }
    t
}

/// The demo bot answers "You said: <text>", the simulated Selarti AI "AI: <text>".
fn parse_answer(answer: &str) -> Option<Key> {
    let rest = answer
        .strip_prefix("You said: ")
        .or_else(|| answer.strip_prefix("AI: "))?;
    let mut parts = rest.splitn(3, '#');
    let member = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    Some((member, seq))
}

#[derive(Default)]
struct Seen {
    waiters: HashMap<Key, oneshot::Sender<Instant>>,
    /// Every arrival of every answer: when, and its `webhook-id`.
    arrivals: HashMap<Key, Vec<(Instant, String)>>,
    /// Per customer, the sequence numbers in the order their answers arrived.
    order: HashMap<String, Vec<u64>>,
    last_arrival: Option<Instant>,
}

/// Watches the customers' platform (the Send API) for answers.
#[derive(Clone, Default)]
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
}

impl Tracker {
    pub fn watch(platform: &CustomPlatform) -> Self {
        let tracker = Self::default();
        let mut tap = platform.tap();
        let seen = tracker.seen.clone();
        tokio::spawn(async move {
            while let Some((at, call)) = tap.recv().await {
                let Some(key) = call.body["response"]["text"]
                    .as_str()
                    .and_then(parse_answer)
                else {
                    continue;
                };
                let mut s = seen.lock().unwrap();
                s.last_arrival = Some(at);
                let first = !s.arrivals.contains_key(&key);
                s.arrivals
                    .entry(key.clone())
                    .or_default()
                    .push((at, call.webhook_id.clone()));
                if first {
                    s.order.entry(key.0.clone()).or_default().push(key.1);
                }
                if let Some(w) = s.waiters.remove(&key) {
                    let _ = w.send(at);
                }
            }
        });
        tracker
    }

    /// A receiver that fires when `key`'s answer arrives.
    pub fn expect(&self, key: Key) -> oneshot::Receiver<Instant> {
        let (tx, rx) = oneshot::channel();
        let mut s = self.seen.lock().unwrap();
        if let Some((at, _)) = s.arrivals.get(&key).and_then(|a| a.first()) {
            let _ = tx.send(*at);
        } else {
            s.waiters.insert(key, tx);
        }
        rx
    }

    pub fn arrivals(&self) -> HashMap<Key, Vec<(Instant, String)>> {
        self.seen.lock().unwrap().arrivals.clone()
    }

    pub fn order(&self) -> HashMap<String, Vec<u64>> {
        self.seen.lock().unwrap().order.clone()
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.seen.lock().unwrap().last_arrival
    }
}

/// Posts customer messages to whichever inlet-gateway replicas are running.
#[derive(Clone)]
pub struct Customers {
    http: reqwest::Client,
    inlets: Arc<RwLock<Vec<String>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    /// The inlet channel they write on.
    channel: &'static str,
}

impl Customers {
    pub fn new(inlets: Vec<String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(2048)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
            inlets: Arc::new(RwLock::new(inlets)),
            next: Arc::default(),
            channel: INLET,
        }
    }

    /// The same gateways, writing on inlet channel `channel`.
    pub fn on_channel(&self, channel: &'static str) -> Self {
        Self {
            channel,
            ..self.clone()
        }
    }

    pub fn set_inlets(&self, inlets: Vec<String>) {
        *self.inlets.write().unwrap() = inlets;
    }

    /// One attempt; `Ok(true)` once the hub answered 200 (stored).
    pub async fn send_once(&self, member: &str, seq: u64) -> anyhow::Result<bool> {
        let base = {
            let inlets = self.inlets.read().unwrap();
            anyhow::ensure!(!inlets.is_empty(), "no inlet running");
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inlets[i % inlets.len()].clone()
        };
        let body = json!({
            "profile": {"firstName": member},
            "externalId": member,
            "sendToBot": {"messageEvent": {
                "from": member, "to": self.channel, "type": "TEXT",
                // The platform's own id: a retried post is the same message, not a new one.
                "messageId": format!("{member}-{seq}"),
                "data": {"text": text(member, seq)},
                "timestamp": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64
            }}
        });
        let resp = self
            .http
            .post(format!(
                "{base}/v2.4/customWebhook?accessToken={INLET_TOKEN}&c={}&a={ORG}",
                self.channel
            ))
            .json(&body)
            .send()
            .await?;
        Ok(resp.status().is_success())
    }

    /// Sends until the hub has stored it (a killed inlet refuses; another attempt is the
    /// same message). Returns when the first attempt started.
    pub async fn send(&self, member: &str, seq: u64, give_up: Duration) -> Option<Instant> {
        let started = Instant::now();
        loop {
            if let Ok(true) = self.send_once(member, seq).await {
                return Some(started);
            }
            if started.elapsed() > give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    Percentiles {
        count: samples.len(),
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

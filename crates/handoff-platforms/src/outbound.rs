//! Outbound HTTP: at-least-once with a stable id. Every call carries `webhook-id` (the same
//! on every retry of one delivery), `webhook-timestamp` and, when the channel has a
//! secret, `webhook-signature` (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`).
//! 5xx, 408, 429, timeouts and connection errors are retried with exponential backoff and
//! full jitter, honouring `Retry-After`; any other 4xx is final.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use reqwest::StatusCode;
use sha2::Sha256;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct OutboundSettings {
    pub timeout: Duration,
    pub max_attempts: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_concurrent_per_endpoint: usize,
}

/// Why a delivery did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver refused it (4xx): retrying cannot help.
    #[error("rejected with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// Every attempt failed transiently.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: usize,
        status: Option<u16>,
        last: String,
    },
}

impl DeliveryError {
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Rejected { status, .. } => Some(*status),
            DeliveryError::Exhausted { status, .. } => *status,
        }
    }
}

/// A Standard Webhooks signing key (`whsec_<base64>` or raw text).
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(secret: &str) -> Self {
        let key = secret
            .strip_prefix("whsec_")
            .and_then(|b| B64.decode(b).ok())
            .unwrap_or_else(|| secret.as_bytes().to_vec());
        Self { key }
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

/// The successful answer of a delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub status: u16,
    pub body: Bytes,
}

/// One pooled HTTP client for all outbound calls of a service.
#[derive(Debug, Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
    settings: OutboundSettings,
    /// Calls in flight per endpoint (scheme, host, port): a slow endpoint fills its own
    /// slots, not the service's.
    endpoints: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl OutboundClient {
    pub fn new(settings: OutboundSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(1024)
            .user_agent(concat!("handoff/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("static client configuration is valid");
        Self {
            http,
            settings,
            endpoints: Arc::default(),
        }
    }

    fn endpoint_slots(&self, url: &str) -> Arc<Semaphore> {
        let endpoint = reqwest::Url::parse(url)
            .map(|u| {
                format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or_default()
                )
            })
            .unwrap_or_default();
        self.endpoints
            .lock()
            .expect("endpoint map lock")
            .entry(endpoint)
            .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_concurrent_per_endpoint)))
            .clone()
    }

    /// POSTs `body` as JSON to `url` under delivery id `id`, retrying as described above.
    pub async fn post_json(
        &self,
        url: &str,
        id: &str,
        body: &serde_json::Value,
        signer: Option<&Signer>,
    ) -> Result<Delivered, DeliveryError> {
        let body = Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.settings.initial_backoff)
            .with_max_delay(self.settings.max_backoff)
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let slots = self.endpoint_slots(url);
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A slot is held for the attempt only, never across a backoff.
            let slot = slots
                .acquire()
                .await
                .expect("endpoint slots are never closed");
            let outcome = self.attempt(url, id, &body, signer).await;
            drop(slot);
            let (status, why, retry_after) = match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    let text = resp.bytes().await.unwrap_or_default();
                    if status.is_success() {
                        return Ok(Delivered {
                            status: status.as_u16(),
                            body: text,
                        });
                    }
                    let snippet = String::from_utf8_lossy(&text[..text.len().min(512)]).to_string();
                    if !is_retryable(status) {
                        return Err(DeliveryError::Rejected {
                            status: status.as_u16(),
                            body: snippet,
                        });
                    }
                    (
                        Some(status.as_u16()),
                        format!("HTTP {status}: {snippet}"),
                        retry_after,
                    )
                }
                Err(e) => (None, error_chain(&e), None),
            };
            let Some(delay) = delays.next() else {
                return Err(DeliveryError::Exhausted {
                    attempts: attempt,
                    status,
                    last: why,
                });
            };
            // A receiver's Retry-After wins over our backoff, bounded so one delivery cannot
            // hold its member's queue for longer than a minute per attempt.
            let delay = retry_after.map_or(delay, |ra| ra.max(delay).min(MAX_RETRY_AFTER));
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, %why, "delivery will be retried");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        url: &str,
        id: &str,
        body: &Bytes,
        signer: Option<&Signer>,
    ) -> reqwest::Result<reqwest::Response> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut req = self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signer) = signer {
            req = req.header("webhook-signature", signer.sign(id, timestamp, body));
        }
        req.body(body.clone()).send().await
    }
}

const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and is ignored).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl OutboundSettings {
    pub fn from_config(d: &handoff_config::DeliverySettings) -> Self {
        Self {
            timeout: d.timeout(),
            max_attempts: d.max_attempts.max(1),
            initial_backoff: Duration::from_millis(d.initial_backoff_ms),
            max_backoff: Duration::from_millis(d.max_backoff_ms),
            max_concurrent_per_endpoint: d.max_concurrent_per_endpoint.max(1),
        }
    }
}

impl Signer {
    /// The signer for a channel with a `secret`, if it has one.
    pub fn for_channel(channel: &handoff_config::Channel) -> Option<Self> {
        use secrecy::ExposeSecret as _;
        channel
            .secret
            .as_ref()
            .map(|s| Self::new(s.expose_secret()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // Test vector from the Standard Webhooks specification.
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let sig = signer.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}

//! Outbound HTTP: at-least-once with a stable id. Every call carries `webhook-id` (the same
//! on every retry of one delivery), `webhook-timestamp` and, when the channel has a
//! secret, `webhook-signature` (Standard Webhooks: HMAC-SHA256 over `id.timestamp.body`).
//! 5xx, 408, 429, timeouts and connection errors are transient: retried a few times within
//! the call (exponential backoff, full jitter, honouring `Retry-After`), then by the caller,
//! without holding any slot, until the delivery's horizon (`retry_later`). Any other 4xx,
//! a refused target and an oversized answer are permanent. Each endpoint has a circuit
//! breaker, so a dead endpoint costs one probe per interval instead of every lane's calls.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Attempts within one call, for blips; a longer outage is retried by the caller
    /// (`retry_later`) until its horizon.
    pub max_attempts: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_concurrent_per_endpoint: usize,
    /// How long a delivery to a customer, a relay or a bot call is retried before it is
    /// given up (parked, and the sender told).
    pub retry_horizon: Duration,
    /// The same for a Livechat API request: the customer is waiting for a human, so the
    /// bot is told sooner.
    pub handoff_horizon: Duration,
    /// Consecutive transient failures that open an endpoint's circuit, and how long it
    /// stays open before one probe is let through.
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    /// Largest response body read; a larger one is a permanent failure.
    pub max_response_bytes: usize,
    pub follow_redirects: bool,
    pub allow_private_targets: bool,
}

/// Why a delivery did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DeliveryError {
    /// The receiver refused it (a 4xx, or a redirect not followed): retrying cannot help.
    #[error("rejected with HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
    /// Handoff will not call this target (not http(s), or a private address).
    #[error("target refused: {0}")]
    Refused(String),
    /// The answer is larger than `max_response_bytes`.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The platform answered, and its answer says no (or cannot be used): retrying cannot
    /// help.
    #[error("{0}")]
    Declined(String),
    /// Every attempt of this call failed transiently (or the endpoint's circuit is open).
    #[error("unavailable after {attempts} attempts: {last}")]
    Unavailable {
        attempts: usize,
        status: Option<u16>,
        last: String,
        /// When the endpoint asked to be called again (Retry-After, or its open circuit).
        retry_after: Option<Duration>,
    },
}

impl DeliveryError {
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Rejected { status, .. } => Some(*status),
            DeliveryError::Unavailable { status, .. } => *status,
            DeliveryError::Refused(_)
            | DeliveryError::TooLarge { .. }
            | DeliveryError::Declined(_) => None,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Unavailable { .. })
    }

    /// A fixed word for metrics: why the call failed, without its variable details.
    pub fn reason(&self) -> &'static str {
        match self {
            DeliveryError::Rejected { .. } => "http_4xx",
            DeliveryError::Refused(_) => "refused",
            DeliveryError::TooLarge { .. } => "too_large",
            DeliveryError::Declined(_) => "declined",
            DeliveryError::Unavailable {
                status: Some(429), ..
            } => "http_429",
            DeliveryError::Unavailable {
                status: Some(_), ..
            } => "http_5xx",
            DeliveryError::Unavailable {
                retry_after: Some(_),
                ..
            } => "circuit_open",
            DeliveryError::Unavailable { .. } => "network",
        }
    }
}

/// Which horizon a delivery is retried within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Horizon {
    /// Messages for customers, relays to agents, calls to bots.
    Delivery,
    /// Livechat API requests (the bot takes over when they fail).
    Handoff,
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
    endpoints: Arc<Mutex<HashMap<String, Arc<Endpoint>>>>,
}

/// What the client knows of one endpoint (scheme, host, port).
#[derive(Debug)]
struct Endpoint {
    /// Calls in flight: a slow endpoint fills its own slots, not the service's.
    slots: Semaphore,
    circuit: Mutex<Circuit>,
}

#[derive(Debug, Default)]
struct Circuit {
    /// Failed calls (not attempts) since the endpoint last answered.
    failures: u32,
    /// Whose calls they were (delivery ids, a few): one customer's deliveries failing —
    /// a 503 for that member alone — must not close the endpoint to its other customers.
    failing: std::collections::HashSet<String>,
    open_until: Option<Instant>,
    /// A call is probing a circuit whose open time has passed; others still wait.
    probing: bool,
    /// What the endpoint last failed with, reported while its circuit is open.
    last_failure: Option<(Option<u16>, String)>,
}

impl OutboundClient {
    pub fn new(settings: OutboundSettings) -> Self {
        let redirects = if settings.follow_redirects {
            reqwest::redirect::Policy::limited(5)
        } else {
            reqwest::redirect::Policy::none()
        };
        let mut http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(1024)
            .redirect(redirects)
            .user_agent(concat!("handoff/", env!("CARGO_PKG_VERSION")));
        if !settings.allow_private_targets {
            // Checked again at connect time, so a name cannot resolve to a public address
            // when checked and a private one when called.
            http = http.dns_resolver(Arc::new(PublicOnly));
        }
        Self {
            http: http.build().expect("static client configuration is valid"),
            settings,
            endpoints: Arc::default(),
        }
    }

    pub fn settings(&self) -> &OutboundSettings {
        &self.settings
    }

    fn endpoint(&self, url: &reqwest::Url) -> Arc<Endpoint> {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        self.endpoints
            .lock()
            .expect("endpoint map lock")
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    slots: Semaphore::new(self.settings.max_concurrent_per_endpoint),
                    circuit: Mutex::default(),
                })
            })
            .clone()
    }

    /// Refuses what Handoff must not call: other schemes and, unless allowed, addresses
    /// inside the network it runs in.
    async fn check_target(&self, url: &str) -> Result<reqwest::Url, DeliveryError> {
        // Not echoed: a malformed URL may still carry a token.
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| DeliveryError::Refused(format!("the target is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(DeliveryError::Refused(format!(
                "scheme `{}` is not http(s)",
                parsed.scheme()
            )));
        }
        if self.settings.allow_private_targets {
            return Ok(parsed);
        }
        // Literal addresses are checked here; names when they are resolved, by `PublicOnly`,
        // so a call costs one lookup and a name cannot change between check and connect.
        let host = parsed
            .host_str()
            .ok_or_else(|| DeliveryError::Refused("the URL has no host".into()))?;
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            && is_private(&ip)
        {
            return Err(DeliveryError::Refused(
                PrivateTarget(format!("{host} is a private address ({ip})")).to_string(),
            ));
        }
        Ok(parsed)
    }

    /// POSTs `body` as JSON to `url` under delivery id `id`, retrying as described above.
    pub async fn post_json(
        &self,
        url: &str,
        id: &str,
        body: &serde_json::Value,
        signer: Option<&Signer>,
    ) -> Result<Delivered, DeliveryError> {
        self.post(url, id, body, signer.map_or(Auth::None, Auth::Signed))
            .await
    }

    /// As `post_json`, authenticated with `Authorization: Bearer {token}` instead.
    pub async fn post_json_bearer(
        &self,
        url: &str,
        id: &str,
        body: &serde_json::Value,
        token: &str,
    ) -> Result<Delivered, DeliveryError> {
        self.post(url, id, body, Auth::Bearer(token)).await
    }

    async fn post(
        &self,
        url: &str,
        id: &str,
        body: &serde_json::Value,
        auth: Auth<'_>,
    ) -> Result<Delivered, DeliveryError> {
        let parsed = self.check_target(url).await?;
        let body = Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.settings.initial_backoff)
            .with_max_delay(self.settings.max_backoff.min(IN_CALL_MAX_BACKOFF))
            .with_max_times(self.settings.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let endpoint = self.endpoint(&parsed);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let probe = match self.admit(&endpoint) {
                Ok(probe) => probe,
                Err((open_for, (status, why))) => {
                    return Err(DeliveryError::Unavailable {
                        attempts: attempt - 1,
                        status,
                        last: format!(
                            "the endpoint's circuit is open after repeated failures ({why})"
                        ),
                        retry_after: Some(open_for),
                    });
                }
            };
            // A slot is held for the attempt only, never across a backoff.
            let slot = endpoint
                .slots
                .acquire()
                .await
                .expect("endpoint slots are never closed");
            let outcome = self.attempt(&parsed, id, &body, auth).await;
            drop(slot);
            let (status, why, retry_after) = match outcome {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = retry_after(resp.headers());
                    if status.is_success() {
                        self.record(&endpoint);
                        let body = read_capped(resp, self.settings.max_response_bytes)
                            .await
                            .map_err(|e| match e {
                                Capped::TooLarge => DeliveryError::TooLarge {
                                    limit: self.settings.max_response_bytes,
                                },
                                Capped::Failed(why) => DeliveryError::Unavailable {
                                    attempts: attempt,
                                    status: Some(status.as_u16()),
                                    last: format!("the answer could not be read: {why}"),
                                    retry_after: None,
                                },
                            })?;
                        return Ok(Delivered {
                            status: status.as_u16(),
                            body,
                        });
                    }
                    let text = read_capped(resp, ERROR_SNIPPET).await.unwrap_or_default();
                    let snippet = String::from_utf8_lossy(&text).to_string();
                    if !is_retryable(status) {
                        // The endpoint answers: its circuit is healthy.
                        self.record(&endpoint);
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
                Err(e) => {
                    if let Some(private) = private_target(&e) {
                        return Err(DeliveryError::Refused(private.to_string()));
                    }
                    // reqwest names the URL in its message, query string and all: channel
                    // URLs may carry tokens, and this text reaches logs, dead letters, bots
                    // and desks. The endpoint without its secrets names it instead.
                    let why = format!("{} ({})", error_chain(&e.without_url()), redacted(url));
                    (None, why, None)
                }
            };
            // The call ends here when its tries are spent, when the endpoint asked for
            // longer than a blip (the caller waits, slot-free), or when it was the probe
            // of an open circuit; only then does it count against the circuit, once.
            let delay = delays.next().filter(|_| !probe);
            if delay.is_none() || retry_after.is_some_and(|ra| ra > IN_CALL_MAX_BACKOFF) {
                self.record_failure(&endpoint, id, status, &why);
                return Err(DeliveryError::Unavailable {
                    attempts: attempt,
                    status,
                    last: why,
                    retry_after,
                });
            }
            let delay = delay.expect("checked above");
            let delay = retry_after.map_or(delay, |ra| ra.max(delay));
            tracing::debug!(attempt, delay_ms = delay.as_millis() as u64, %why, "delivery will be retried");
            tokio::time::sleep(delay).await;
        }
    }

    /// Whether a call may go to `endpoint` now (`true`: as the probe of an open circuit);
    /// if not, how long its circuit stays open and what it last failed with.
    #[allow(clippy::type_complexity)]
    fn admit(&self, endpoint: &Endpoint) -> Result<bool, (Duration, (Option<u16>, String))> {
        let mut circuit = endpoint.circuit.lock().expect("circuit lock");
        let Some(until) = circuit.open_until else {
            return Ok(false);
        };
        let last = circuit.last_failure.clone().unwrap_or_default();
        let now = Instant::now();
        if now < until {
            return Err((until - now, last));
        }
        if circuit.probing {
            return Err((self.settings.circuit_open.min(Duration::from_secs(1)), last));
        }
        circuit.probing = true;
        Ok(true)
    }

    /// The endpoint answered (2xx or a refusal): its circuit closes.
    fn record(&self, endpoint: &Endpoint) {
        *endpoint.circuit.lock().expect("circuit lock") = Circuit::default();
    }

    /// A call to `endpoint` (delivery `id`) failed transiently, every try of it. The
    /// circuit opens after `circuit_failures` such calls in a row from more than one
    /// delivery — or at once when the call was the probe of a circuit already open.
    fn record_failure(&self, endpoint: &Endpoint, id: &str, status: Option<u16>, why: &str) {
        const REMEMBERED: usize = 8;
        let mut circuit = endpoint.circuit.lock().expect("circuit lock");
        let probed = std::mem::take(&mut circuit.probing);
        circuit.failures += 1;
        if circuit.failing.len() < REMEMBERED {
            circuit.failing.insert(id.to_string());
        }
        circuit.last_failure = Some((status, why.to_string()));
        let many =
            circuit.failures >= self.settings.circuit_failures.max(1) && circuit.failing.len() > 1;
        if probed || many {
            circuit.open_until = Some(Instant::now() + self.settings.circuit_open);
        }
    }

    /// After a failed delivery of a command accepted at `accepted_at_ms`: `Some(delay)` to
    /// try again later (a transient failure within its horizon), `None` to give it up.
    /// The delay grows with the delivery's age, so a long outage costs few calls and a
    /// restart does not reset it.
    pub fn retry_later(
        &self,
        error: &DeliveryError,
        accepted_at_ms: i64,
        horizon: Horizon,
    ) -> Option<Duration> {
        let DeliveryError::Unavailable { retry_after, .. } = error else {
            return None;
        };
        let horizon = match horizon {
            Horizon::Delivery => self.settings.retry_horizon,
            Horizon::Handoff => self.settings.handoff_horizon,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let age =
            Duration::from_millis(u64::try_from(now - i128::from(accepted_at_ms)).unwrap_or(0));
        if age >= horizon {
            return None;
        }
        let by_age = (age / 4).clamp(self.settings.initial_backoff, self.settings.max_backoff);
        let delay = retry_after.map_or(by_age, |ra| {
            ra.min(MAX_RETRY_AFTER).max(self.settings.initial_backoff)
        });
        Some(delay.min(horizon - age))
    }

    /// `retry_later` as a consumer's decision for command `envelope`: `Some(Retry)` within
    /// its horizon, `None` when the failure is for good. Every failed delivery comes
    /// through here, so it is also where failures and retries are counted, by `target`'s
    /// channel and platform.
    pub fn later(
        &self,
        error: &DeliveryError,
        envelope: &handoff_proto::Envelope,
        target: &handoff_config::Channel,
        horizon: Horizon,
    ) -> Option<handoff_bus::Handled> {
        let after = self.retry_later(error, envelope.accepted_at_ms, horizon);
        crate::metrics::delivery_failed(
            &target.id,
            target.platform.as_str(),
            error.reason(),
            after.is_some(),
        );
        let after = after?;
        Some(handoff_bus::Handled::Retry {
            after,
            reason: error.to_string(),
        })
    }

    async fn attempt(
        &self,
        url: &reqwest::Url,
        id: &str,
        body: &Bytes,
        auth: Auth<'_>,
    ) -> reqwest::Result<reqwest::Response> {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        // The URL `check_target` parsed, not parsed again: on the hot path a parse per
        // call was a measurable share of a gateway's CPU.
        let mut req = self
            .http
            .post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string());
        for (name, value) in handoff_bus::trace_headers() {
            req = req.header(name, value);
        }
        match auth {
            Auth::None => {}
            Auth::Signed(signer) => {
                req = req.header("webhook-signature", signer.sign(id, timestamp, body));
            }
            Auth::Bearer(token) => req = req.bearer_auth(token),
        }
        req.body(body.clone()).send().await
    }
}

/// How a call proves who sends it.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    /// Standard Webhooks signature.
    Signed(&'a Signer),
    /// The platform's own API token.
    Bearer(&'a str),
}

/// Longest wait inside one call; longer waits happen outside it, without a slot.
const IN_CALL_MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How much of an error answer is kept for logs and the transcript.
const ERROR_SNIPPET: usize = 512;

enum Capped {
    TooLarge,
    Failed(String),
}

/// Reads at most `limit` bytes of the body; an error answer is cut, a success is refused.
async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Bytes, Capped> {
    let success = resp.status().is_success();
    if success && resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Capped::TooLarge);
    }
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| Capped::Failed(e.to_string()))?
    {
        if out.len() + chunk.len() > limit {
            if success {
                return Err(Capped::TooLarge);
            }
            out.extend_from_slice(&chunk[..limit - out.len()]);
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Addresses inside a private network, the host itself, or link-local (cloud metadata).
pub fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A resolver that refuses names with a private address, so no channel URL reaches
/// inside the network.
struct PublicOnly;

/// A name or address inside the network, while `allow_private_targets` is off.
#[derive(Debug, thiserror::Error)]
#[error("{0}; set delivery.allow_private_targets to call it")]
struct PrivateTarget(String);

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(private) = addrs.iter().find(|a| is_private(&a.ip())) {
                let why = format!(
                    "{} resolves to a private address ({})",
                    name.as_str(),
                    private.ip()
                );
                return Err(
                    Box::new(PrivateTarget(why)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The resolver's refusal inside a failed call, if that is why it failed.
fn private_target(e: &reqwest::Error) -> Option<&PrivateTarget> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(private) = s.downcast_ref::<PrivateTarget>() {
            return Some(private);
        }
        source = s.source();
    }
    None
}

/// A receiver's Retry-After is honoured up to this, so a delivery is never parked later
/// than its horizon by much.
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

/// `url` as it may be shown to anyone: scheme, host, port and path, without user info,
/// query string or fragment (where platforms put tokens).
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return "(not a URL)".into();
    };
    let had_query = parsed.query().is_some();
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    parsed.set_query(None);
    parsed.set_fragment(None);
    let mut shown = parsed.to_string();
    if had_query {
        shown.push_str("?…");
    }
    shown
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
            retry_horizon: Duration::from_secs(d.retry_horizon_secs),
            handoff_horizon: Duration::from_secs(d.handoff_horizon_secs),
            circuit_failures: d.circuit_failures,
            circuit_open: Duration::from_millis(d.circuit_open_ms),
            max_response_bytes: d.max_response_bytes,
            follow_redirects: d.follow_redirects,
            allow_private_targets: d.allow_private_targets,
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
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode as Status;
    use axum::routing::post;

    use super::*;

    fn settings() -> OutboundSettings {
        OutboundSettings {
            timeout: Duration::from_secs(2),
            max_attempts: 1,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            max_concurrent_per_endpoint: 8,
            retry_horizon: Duration::from_secs(60),
            handoff_horizon: Duration::from_secs(5),
            circuit_failures: 2,
            circuit_open: Duration::from_millis(300),
            max_response_bytes: 1024,
            follow_redirects: false,
            allow_private_targets: true,
        }
    }

    /// A receiver on loopback answering `/status` with the status in `status` (counting
    /// calls), `/redirect` with a 302 and `/big` with 2 KiB.
    async fn receiver(status: Arc<AtomicU16>, calls: Arc<AtomicUsize>) -> String {
        let app = Router::new()
            .route(
                "/status",
                post(move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Status::from_u16(status.load(Ordering::SeqCst)).unwrap()
                }),
            )
            .route(
                "/redirect",
                post(|| async { (Status::FOUND, [(http::header::LOCATION, "/status")]) }),
            )
            .route("/big", post(|| async { "x".repeat(2048) }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_private_target_is_refused_for_good_unless_allowed() {
        let client = OutboundClient::new(OutboundSettings {
            allow_private_targets: false,
            ..settings()
        });
        for url in [
            "http://localhost:9/x",
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "http://169.254.169.254/latest",
        ] {
            let err = client
                .post_json(url, "id", &serde_json::json!({}), None)
                .await
                .unwrap_err();
            assert!(matches!(err, DeliveryError::Refused(_)), "{url}: {err}");
            assert_eq!(client.retry_later(&err, 0, Horizon::Delivery), None);
        }
        let err = client
            .post_json("file:///etc/passwd", "id", &serde_json::json!({}), None)
            .await
            .unwrap_err();
        assert!(matches!(err, DeliveryError::Refused(_)), "{err}");
    }

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_an_oversized_answer_is_refused() {
        let base = receiver(Arc::new(AtomicU16::new(200)), Arc::default()).await;
        let client = OutboundClient::new(settings());
        let body = serde_json::json!({});
        let err = client
            .post_json(&format!("{base}/redirect"), "id", &body, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DeliveryError::Rejected { status: 302, .. }),
            "{err}"
        );
        let err = client
            .post_json(&format!("{base}/big"), "id", &body, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, DeliveryError::TooLarge { limit: 1024 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_endpoint_opens_its_circuit_and_one_probe_closes_it() {
        let status = Arc::new(AtomicU16::new(503));
        let calls = Arc::new(AtomicUsize::new(0));
        let url = format!("{}/status", receiver(status.clone(), calls.clone()).await);
        let client = OutboundClient::new(settings());
        let body = serde_json::json!({});
        for id in ["a", "b"] {
            let err = client.post_json(&url, id, &body, None).await.unwrap_err();
            assert_eq!(err.status(), Some(503));
        }
        // Open: no call is made, and the caller is told how long to wait.
        let err = client.post_json(&url, "id", &body, None).await.unwrap_err();
        assert!(matches!(
            err,
            DeliveryError::Unavailable {
                retry_after: Some(_),
                ..
            }
        ));
        assert_eq!(err.status(), Some(503), "the last failure is reported");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // After the open time one probe goes through; it succeeds, so the circuit closes.
        tokio::time::sleep(Duration::from_millis(350)).await;
        status.store(200, Ordering::SeqCst);
        client.post_json(&url, "id", &body, None).await.unwrap();
        client.post_json(&url, "id", &body, None).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_transient_failure_is_retried_until_its_horizon_and_then_given_up() {
        let client = OutboundClient::new(settings());
        let err = DeliveryError::Unavailable {
            attempts: 1,
            status: Some(503),
            last: "down".into(),
            retry_after: None,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let delay = client
            .retry_later(&err, now - 1_000, Horizon::Delivery)
            .unwrap();
        assert!(delay <= Duration::from_millis(50), "{delay:?}");
        assert_eq!(
            client.retry_later(&err, now - 61_000, Horizon::Delivery),
            None
        );
        assert_eq!(
            client.retry_later(&err, now - 6_000, Horizon::Handoff),
            None
        );
        let refused = DeliveryError::Rejected {
            status: 400,
            body: String::new(),
        };
        assert_eq!(client.retry_later(&refused, now, Horizon::Delivery), None);
    }

    #[test]
    fn private_and_local_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(&ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(&ip.parse().unwrap()), "{ip}");
        }
    }

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

    #[tokio::test]
    async fn a_failed_calls_error_names_its_endpoint_without_the_secrets_in_its_url() {
        // Nothing listens on port 9 of loopback: the connection is refused.
        let client = OutboundClient::new(settings());
        let url = "http://user:pa55word@127.0.0.1:9/relay?accessToken=tok-s3cret#frag";
        let err = client
            .post_json(url, "id", &serde_json::json!({}), None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("http://127.0.0.1:9/relay?…"), "{text}");
        for secret in ["tok-s3cret", "pa55word", "user", "frag"] {
            assert!(!text.contains(secret), "`{secret}` in: {text}");
        }
        let bad = client
            .post_json(
                "http//nope?accessToken=tok-s3cret",
                "id",
                &serde_json::json!({}),
                None,
            )
            .await
            .unwrap_err();
        assert!(!bad.to_string().contains("tok-s3cret"), "{bad}");
    }

    #[tokio::test]
    async fn one_deliverys_failures_count_once_per_call_and_never_close_the_endpoint_to_others() {
        // Three tries per call, and a circuit that opens after two failed calls.
        let status = Arc::new(AtomicU16::new(503));
        let calls = Arc::new(AtomicUsize::new(0));
        let url = format!("{}/status", receiver(status.clone(), calls.clone()).await);
        let client = OutboundClient::new(OutboundSettings {
            max_attempts: 3,
            ..settings()
        });
        let body = serde_json::json!({});
        // One customer's delivery fails again and again (a 503 for that member alone).
        for _ in 0..5 {
            let err = client
                .post_json(&url, "lonely", &body, None)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    DeliveryError::Unavailable {
                        retry_after: None,
                        ..
                    }
                ),
                "the circuit stays closed: {err}"
            );
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            15,
            "every try reached the endpoint"
        );
        // Another customer is served at once.
        status.store(200, Ordering::SeqCst);
        client.post_json(&url, "other", &body, None).await.unwrap();
    }
}

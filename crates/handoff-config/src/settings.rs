use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(#[from] config::ConfigError);

/// Everything a Handoff service can be told. Each service reads the parts it needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Path of the channels file.
    pub channels: PathBuf,
    pub http: HttpSettings,
    pub nats: NatsSettings,
    pub database: DatabaseSettings,
    pub delivery: DeliverySettings,
    pub telemetry: TelemetrySettings,
    pub retention: RetentionSettings,
    pub admin: AdminSettings,
    /// Seals the shared channels catalog (it carries channel credentials through NATS).
    /// The same on every service; without it channels come from the channels file only
    /// and cannot be changed at runtime.
    pub catalog_key: Option<SecretString>,
    /// How often the router looks for conversations past their state's timeout.
    pub sweep_interval_ms: u64,
    /// Base URL under which the router's transcript pages are reachable by agents
    /// (`chatHistoryURL` points there).
    pub public_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            channels: PathBuf::from("channels.yaml"),
            http: HttpSettings::default(),
            nats: NatsSettings::default(),
            database: DatabaseSettings::default(),
            delivery: DeliverySettings::default(),
            telemetry: TelemetrySettings::default(),
            retention: RetentionSettings::default(),
            admin: AdminSettings::default(),
            catalog_key: None,
            sweep_interval_ms: 5_000,
            public_url: "http://127.0.0.1:8090".into(),
        }
    }
}

impl Settings {
    /// Defaults, then the file named by `HANDOFF_CONFIG` (if any), then `HANDOFF_*` env.
    pub fn load() -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder();
        if let Ok(path) = std::env::var("HANDOFF_CONFIG") {
            builder = builder.add_source(config::File::with_name(&path).required(true));
        }
        let settings = builder
            .add_source(
                config::Environment::with_prefix("HANDOFF")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        Ok(settings)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    pub host: String,
    /// 0 lets the OS pick (tests); each service's binary supplies its own default.
    pub port: Option<u16>,
    /// Where operators read `/metrics` and `/readyz` with its reasons (both name channels):
    /// keep it off any public ingress. Default: the public port's default plus 100.
    pub ops_port: Option<u16>,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Webhook API requests handled at once per process; more wait their turn.
    pub max_concurrent_requests: usize,
    /// A request (its body included) not done in this time is answered 408.
    pub request_timeout_ms: u64,
    /// A connection must send a whole request head within this time, and one idle this
    /// long between requests is closed (slow or silent clients hold nothing).
    pub header_read_timeout_ms: u64,
    /// Connections open at once per process; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: None,
            ops_port: None,
            body_limit: 256 * 1024,
            max_concurrent_requests: 1_024,
            request_timeout_ms: 15_000,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
        }
    }
}

impl HttpSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    pub fn address(&self, default_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(default_port))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NatsSettings {
    pub url: String,
    /// First subject token and (upper-cased) stream name. Tests use a unique one each.
    pub prefix: String,
    /// Members are spread over this many ordered partitions. Changing it on a running
    /// system re-routes members, so it is fixed per deployment.
    pub partitions: u16,
    /// JetStream's own dedup window for `Nats-Msg-Id`, in seconds.
    pub duplicate_window_secs: u64,
    /// How long a consumer may hold a message before JetStream redelivers it.
    pub ack_wait_secs: u64,
    /// Stream replicas (1 for a single server, 3 for a cluster).
    pub replicas: usize,
    /// A replica owns a partition through a lease in a NATS KV bucket; a lease not renewed
    /// for this long (a killed replica) is taken over by a surviving or restarted one.
    pub lease_ttl_ms: u64,
    /// Messages one partition may have delivered and not yet acknowledged (JetStream's
    /// `max_ack_pending`): how far other members can run ahead of a slow one.
    pub max_ack_pending: i64,
    /// Messages one service process handles at once, across all its partitions and members.
    pub max_in_flight: usize,
    /// The events stream's size limit in bytes (-1: none). Only unhandled messages stay in
    /// a work queue; new messages from platforms are refused (503 with `Retry-After`) once
    /// it is `(100 - inbound_headroom_percent)` % full, never old ones dropped.
    pub stream_max_bytes: i64,
    /// The command stream's size limit in bytes (-1: none): what the router sends out has a
    /// stream of its own, so it can always be published however full the events are.
    pub commands_max_bytes: i64,
    /// The share of the events stream kept for what the hub itself must publish to make
    /// progress (bot answers, Livechat results, failures): platforms' new messages are
    /// refused before it is used.
    pub inbound_headroom_percent: u8,
    /// A delivery still failing after this long leaves its partition's acknowledgement
    /// window: it and its member's later commands move to the hold stream, where they are
    /// retried in order without taking capacity the partition's other members share
    /// (0: never).
    pub hold_after_secs: u64,
    /// Bytes of messages one service process holds in its member lanes at most (fetched
    /// and not yet done); past it, its partitions stop fetching until lanes finish.
    pub max_held_bytes: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "handoff".into(),
            partitions: 16,
            duplicate_window_secs: 120,
            ack_wait_secs: 30,
            replicas: 1,
            lease_ttl_ms: 3_000,
            max_ack_pending: 4_096,
            max_in_flight: 4_096,
            stream_max_bytes: 1024 * 1024 * 1024,
            commands_max_bytes: 1024 * 1024 * 1024,
            inbound_headroom_percent: 10,
            hold_after_secs: 10,
            max_held_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// Longest wait for a row or advisory lock: a replica that froze holding a member's
    /// lock holds the others' batches no longer than this (they split and retry).
    pub lock_timeout_ms: u64,
    /// Longest statement.
    pub statement_timeout_ms: u64,
    /// A transaction left idle this long is ended by Postgres, releasing its locks: what
    /// a frozen (SIGSTOP, long GC-like pause, partitioned) replica holds is given back.
    pub idle_in_transaction_timeout_ms: u64,
    /// Events waiting while none has been applied for this long make the router not ready
    /// (a database that refuses or locks every batch).
    pub stalled_after_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/handoff"),
            max_connections: 16,
            lock_timeout_ms: 2_000,
            statement_timeout_ms: 10_000,
            idle_in_transaction_timeout_ms: 5_000,
            stalled_after_secs: 30,
        }
    }
}

/// Outbound HTTP calls to platforms and bots.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DeliverySettings {
    pub timeout_ms: u64,
    /// Attempts within one call (for blips), the first included. Longer outages are
    /// retried until the horizon below.
    pub max_attempts: usize,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Allow calls to loopback / private / link-local addresses (simulators, in-cluster
    /// services). Off by default: a channel's URL must not reach inside the network.
    pub allow_private_targets: bool,
    /// How long a message for a customer, a relay to an agent or a call to a bot is retried
    /// through an outage before it is parked and the sender told.
    pub retry_horizon_secs: u64,
    /// The same for a Livechat API request; when it passes, the bot takes the customer back.
    pub handoff_horizon_secs: u64,
    /// Consecutive transient failures that open an endpoint's circuit breaker.
    pub circuit_failures: u32,
    /// How long an open circuit waits before one probe call.
    pub circuit_open_ms: u64,
    /// Largest answer read from a bot or platform; larger is a permanent failure.
    pub max_response_bytes: usize,
    /// Follow HTTP redirects from receivers (off: a 3xx is a refusal).
    pub follow_redirects: bool,
    /// Calls in flight at once to one endpoint (scheme, host and port), so one slow or dead
    /// endpoint cannot take every connection of the service.
    pub max_concurrent_per_endpoint: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            allow_private_targets: false,
            retry_horizon_secs: 3_600,
            handoff_horizon_secs: 60,
            circuit_failures: 5,
            circuit_open_ms: 5_000,
            max_response_bytes: 512 * 1024,
            follow_redirects: false,
            max_concurrent_per_endpoint: 2_048,
        }
    }
}

impl DeliverySettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// How long the router keeps what grows with traffic (pruned in the background).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RetentionSettings {
    /// Ids of applied events (the inbox that makes a redelivery harmless). Must outlast
    /// any redelivery: the stream's retries are minutes to hours.
    pub processed_events_days: u32,
    /// Transcript lines and closed conversations.
    pub transcript_days: u32,
    /// Dead letters already replayed or dropped (parked ones are kept until handled).
    pub resolved_dead_letters_days: u32,
    pub prune_interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            processed_events_days: 7,
            transcript_days: 90,
            resolved_dead_letters_days: 30,
            prune_interval_secs: 3_600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// `json` for production, `pretty` for a terminal.
    pub log_format: String,
    /// OTLP/HTTP endpoint; traces are exported only when set.
    pub otlp_endpoint: Option<String>,
    /// Which spans are traced (`RUST_LOG` syntax), apart from which lines are logged:
    /// quieter logs must not cut the traces.
    pub trace_filter: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            otlp_endpoint: None,
            trace_filter: "info,sqlx=warn,async_nats=warn".into(),
        }
    }
}

/// The router's admin API (gRPC) and what `handoffctl` uses to reach it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AdminSettings {
    pub host: String,
    /// 0 picks a free port (tests).
    pub port: u16,
    /// Every call must carry `authorization: Bearer <token>`. Without a token the admin
    /// API is not served at all: an unauthenticated one is never an option.
    pub token: Option<SecretString>,
    /// Where `handoffctl` finds the admin API.
    pub url: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8091,
            token: None,
            url: "http://127.0.0.1:8091".into(),
        }
    }
}

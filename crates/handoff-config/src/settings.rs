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
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: None,
            body_limit: 256 * 1024,
        }
    }
}

impl HttpSettings {
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
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/handoff"),
            max_connections: 16,
        }
    }
}

/// Outbound HTTP calls to platforms and bots.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DeliverySettings {
    pub timeout_ms: u64,
    /// Attempts per delivery, the first included.
    pub max_attempts: usize,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Allow calls to loopback / private addresses (simulators, in-cluster services).
    pub allow_private_targets: bool,
    /// Calls in flight at once to one endpoint (scheme, host and port), so one slow or dead
    /// endpoint cannot take every connection of the service.
    pub max_concurrent_per_endpoint: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            max_attempts: 5,
            initial_backoff_ms: 200,
            max_backoff_ms: 10_000,
            allow_private_targets: true,
            max_concurrent_per_endpoint: 2_048,
        }
    }
}

impl DeliverySettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetrySettings {
    /// `json` for production, `pretty` for a terminal.
    pub log_format: String,
    /// OTLP/HTTP endpoint; traces are exported only when set.
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            otlp_endpoint: None,
        }
    }
}

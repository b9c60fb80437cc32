//! router: the only owner of Postgres.
//!
//! It consumes every event in member order (one ordered consumer per partition), applies
//! the conversation state machine in one transaction per event (inbox dedup, state, transcript
//! and outbox together), then publishes the derived commands. It also answers gateways'
//! member look-ups, serves transcript pages behind `chatHistoryURL`, and times out
//! conversations that overstay PENDING or LIVE.

mod admin;
mod catalog;
pub mod dead_letters;
mod engine;
mod history;
mod lookup;
mod machine;
mod model;
mod receipts;
pub mod retention;
mod store;
mod timeouts;

use std::sync::Arc;
use std::time::Duration;

use handoff_bus::Bus;
use handoff_config::{Channels, Settings};
use handoff_platforms::Catalog;
use handoff_platforms::catalog_store::CatalogStore;
use handoff_service::shell::{Ports, Shell};
use handoff_service::{Readiness, gauge_text};
use secrecy::ExposeSecret as _;
use sqlx::Connection as _;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use handoff_platforms::hub::lookup_subject;

pub const DEFAULT_PORT: u16 = 8090;

/// What the router's side jobs (look-ups, the timeout sweeper) work with: its store, its
/// bus and the channels in force, not the engine.
#[derive(Clone)]
pub(crate) struct Parts {
    pub pool: PgPool,
    pub bus: Bus,
    pub catalog: Catalog,
}

#[derive(Clone)]
struct Ready {
    pool: PgPool,
    bus: Bus,
    engine: Arc<engine::Engine>,
}

impl Readiness for Ready {
    async fn ready(&self) -> Result<(), String> {
        self.bus.ready()?;
        self.engine.progressing()?;
        store::ping(&self.pool)
            .await
            .map_err(|e| format!("Postgres: {e}"))
    }

    /// Every router replica reports the same numbers; dashboards take their `max`.
    async fn gauges(&self) -> String {
        let mut out = String::new();
        match store::conversations::count_open(&self.pool).await {
            Ok(counts) => out.push_str(&gauge_text(
                "handoff_conversations",
                "Open conversations, by state.",
                counts
                    .into_iter()
                    .map(|(state, n)| (vec![("state", state)], n)),
            )),
            Err(e) => tracing::warn!(error = %e, "conversation counts not read"),
        }
        match dead_letters::metrics(&self.pool).await {
            Ok(text) => out.push_str(&text),
            Err(e) => tracing::warn!(error = %e, "dead letters not counted"),
        }
        match self.bus.pending_by_area().await {
            Ok(pending) => out.push_str(&gauge_text(
                "handoff_jetstream_pending_messages",
                "Messages stored and not yet handled (consumer lag), by stream area.",
                pending
                    .iter()
                    .map(|(area, n)| (vec![("stream", area.as_str())], *n as i64)),
            )),
            Err(e) => tracing::warn!(error = %e, "stream backlog not read"),
        }
        match self.bus.stream_usage().await {
            Ok(usage) => {
                out.push_str(&gauge_text(
                    "handoff_jetstream_bytes",
                    "Bytes stored in each stream (events: what comes in; commands: what goes out).",
                    usage
                        .iter()
                        .map(|(stream, bytes, _)| (vec![("stream", *stream)], *bytes as i64)),
                ));
                out.push_str(&gauge_text(
                    "handoff_jetstream_max_bytes",
                    "Each stream's size limit (-1: none); new messages are refused before the events stream reaches it.",
                    usage
                        .iter()
                        .map(|(stream, _, max)| (vec![("stream", *stream)], *max)),
                ));
            }
            Err(e) => tracing::warn!(error = %e, "stream usage not read"),
        }
        out
    }
}

pub struct Application {
    ports: Ports,
    /// The admin API's, when a token is configured.
    admin: Option<(TcpListener, secrecy::SecretString)>,
    store: Option<CatalogStore>,
    engine: Arc<engine::Engine>,
    sweep_interval: Duration,
    retention: handoff_config::RetentionSettings,
}

/// Applies `migrations/` (idempotent, safe with several replicas: sqlx takes an advisory
/// lock while migrating), then opens the pool.
///
/// Migrations run on a connection of their own, without the pool's timeouts: a replica
/// starting beside one that is migrating waits for its lock rather than failing.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let db = &settings.database;
    let options: PgConnectOptions = db.url.expose_secret().parse()?;
    let mut migrating = sqlx::PgConnection::connect_with(&options).await?;
    sqlx::migrate!("../../migrations")
        .run(&mut migrating)
        .await?;
    migrating.close().await?;
    let ms = |v: u64| format!("{v}ms");
    let options = options.options([
        ("lock_timeout", ms(db.lock_timeout_ms)),
        ("statement_timeout", ms(db.statement_timeout_ms)),
        (
            "idle_in_transaction_session_timeout",
            ms(db.idle_in_transaction_timeout_ms),
        ),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(db.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx already pings every connection given back to the pool; pinging it again
        // when the pool hands it out cost each transaction a round trip. A connection that
        // died while idle fails its batch once, is dropped, and the batch is retried (its
        // events are not acked).
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

impl Application {
    pub async fn build(settings: &Settings, channels: Channels) -> anyhow::Result<Self> {
        // The channels file seeds the shared catalog (again when the file changed); what
        // the catalog then holds is what every service runs with.
        let file = std::fs::read_to_string(&settings.channels).ok();
        let Shell {
            bus,
            catalog,
            store,
            ports,
        } = Shell::start(settings, channels, DEFAULT_PORT, file.as_deref()).await?;
        let pool = connect_database(settings).await?;
        store::channels::sync(&pool, &catalog.load().channels).await?;
        let admin = match &settings.admin.token {
            Some(token) if !token.expose_secret().is_empty() => {
                let address = format!("{}:{}", settings.admin.host, settings.admin.port);
                Some((handoff_service::listen(&address).await?, token.clone()))
            }
            _ => {
                tracing::warn!("no HANDOFF_ADMIN__TOKEN: the admin API is not served");
                None
            }
        };
        let engine = Arc::new(engine::Engine::new(
            pool,
            bus,
            catalog,
            settings.public_url.trim_end_matches('/').to_string(),
            Duration::from_secs(settings.database.stalled_after_secs.max(1)),
        ));
        Ok(Self {
            ports,
            admin,
            store,
            engine,
            sweep_interval: Duration::from_millis(settings.sweep_interval_ms.max(50)),
            retention: settings.retention.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.ports.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.ports.ops_port()
    }

    /// The admin API's port, when it is served.
    pub fn admin_port(&self) -> Option<u16> {
        self.admin
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
            .map(|a| a.port())
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let engine = self.engine;
        let ready = Ready {
            pool: engine.pool.clone(),
            bus: engine.bus.clone(),
            engine: engine.clone(),
        };
        let routes = history::router(engine.pool.clone());
        let sweep_interval = self.sweep_interval;
        let retention = self.retention;
        let admin = self.admin;
        let catalog_store = self.store;
        self.ports
            .serve(ready, routes, shutdown, move |stop| {
                // Batches outlive the consumers: a consumer finishing its last messages at
                // shutdown still needs them applied.
                let batches_stop = CancellationToken::new();
                let batches = tokio::spawn(engine.clone().run_batches(batches_stop.clone()));
                let consumers = {
                    let engine = engine.clone();
                    let stop = stop.clone();
                    async move {
                        let consumed = handoff_bus::run_consumers(
                            engine.bus.clone(),
                            "events".into(),
                            "router".into(),
                            engine.clone(),
                            stop,
                        )
                        .await;
                        batches_stop.cancel();
                        let _ = batches.await;
                        consumed
                    }
                };
                let lookups = lookup::serve(engine.parts(), stop.clone());
                let sweeper = timeouts::run(engine.parts(), sweep_interval, stop.clone());
                let pruner = retention::run(engine.pool.clone(), retention, stop.clone());
                let pool = engine.pool.clone();
                let catalog = engine.catalog.clone().follow(
                catalog_store.clone(),
                stop.clone(),
                move |snapshot| {
                    let pool = pool.clone();
                    async move {
                        if let Err(e) = store::channels::sync(&pool, &snapshot.channels).await {
                            tracing::warn!(error = %e, "channels not mirrored into Postgres yet");
                        }
                    }
                },
            );
                let receipts =
                    receipts::collect(engine.pool.clone(), engine.bus.clone(), stop.clone());
                let mut parts: Vec<(&'static str, handoff_service::Part)> = vec![
                    ("the channels catalog", Box::pin(catalog)),
                    ("the receipts collector", Box::pin(receipts)),
                ];
                if let Some((admin_listener, token)) = admin {
                    let service = admin::AdminService {
                        pool: engine.pool.clone(),
                        bus: engine.bus.clone(),
                        catalog: engine.catalog.clone(),
                        store: catalog_store,
                    };
                    parts.push((
                        "the admin API",
                        Box::pin(admin::serve(service, token, admin_listener, stop.clone())),
                    ));
                }
                parts.extend([
                    (
                        "the event consumers",
                        Box::pin(consumers) as handoff_service::Part,
                    ),
                    ("the look-up service", Box::pin(lookups)),
                    (
                        "the timeout sweeper",
                        Box::pin(async {
                            sweeper.await;
                            Ok(())
                        }),
                    ),
                    (
                        "the retention pruner",
                        Box::pin(async {
                            pruner.await;
                            Ok(())
                        }),
                    ),
                ]);
                parts
            })
            .await
    }
}

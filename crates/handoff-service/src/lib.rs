//! What every Handoff service shares: telemetry set-up, the shutdown signal, health
//! endpoints and the HTTP tracing layer (which never records query strings, because
//! Stella-style platforms put access tokens there).

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;
use tracing::Span;

mod serve;
pub mod shell;
mod telemetry;

pub use serve::{HttpListener, http_part, listen, ops_part};
pub use telemetry::{TelemetryGuard, init_telemetry, metrics_text};

/// Answers `--help` and `--version` (and refuses any other argument) before a service
/// does anything: a newcomer's first command must not start it, bind ports or connect.
/// Services are configured by environment and file only.
pub fn answer_arguments(service: &str, about: &str) {
    let usage = format!(
        "{service} {version}: {about}\n\n\
         Usage: {service} [--help | --version]\n\n\
         Configured by built-in defaults, then the YAML file named by HANDOFF_CONFIG, then\n\
         HANDOFF_* environment variables (two underscores between levels), for example:\n  \
         HANDOFF_CHANNELS               the channels file (default channels.yaml)\n  \
         HANDOFF_NATS__URL              NATS server(s), comma-separated\n  \
         HANDOFF_DATABASE__URL          Postgres (router only)\n  \
         HANDOFF_HTTP__PORT             the public port; HANDOFF_HTTP__OPS_PORT the ops port\n  \
         HANDOFF_CATALOG_KEY            seals the shared channels catalog\n  \
         RUST_LOG                       log filter\n\n\
         Every setting, with its default: README.md, \"Configuration\".\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None => {}
        Some("--help" | "-h") => {
            print!("{usage}");
            std::process::exit(0);
        }
        Some("--version" | "-V") => {
            println!("{service} {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Some(other) => {
            eprintln!("{service}: unexpected argument `{other}`\n\n{usage}");
            std::process::exit(2);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// A cancellation token cancelled by the first shutdown signal.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        child.cancel();
    });
    token
}

/// One long-running part of a service (its HTTP server, a consumer, a sweeper).
pub type Part = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Runs a service's parts until `shutdown`. A part that ends before then has failed: the
/// others are stopped and its error returned, so the process exits and is restarted
/// rather than serving half (answering `/readyz` while consuming nothing). Each part is
/// given `stop`, cancelled on shutdown or on such a failure.
pub async fn run_parts(
    shutdown: CancellationToken,
    parts: impl FnOnce(CancellationToken) -> Vec<(&'static str, Part)>,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let mut running = tokio::task::JoinSet::new();
    for (name, part) in parts(stop.clone()) {
        running.spawn(async move { (name, part.await) });
    }
    let mut failure = None;
    while let Some(done) = running.join_next().await {
        let (name, result) = match done {
            Ok(finished) => finished,
            Err(e) => ("a part", Err(anyhow::anyhow!("panicked: {e}"))),
        };
        if !stop.is_cancelled() {
            let why = match &result {
                Ok(()) => anyhow::anyhow!("{name} stopped on its own"),
                Err(e) => anyhow::anyhow!("{name} failed: {e:#}"),
            };
            tracing::error!(error = %why, "a part of the service ended; stopping the service");
            stop.cancel();
            failure.get_or_insert(why);
        } else if let Err(e) = result {
            failure.get_or_insert(e.context(name));
        }
    }
    failure.map_or(Ok(()), Err)
}

/// Something that can say whether the service may take traffic.
pub trait Readiness: Clone + Send + Sync + 'static {
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;

    /// State read at scrape time (open conversations, backlog), in Prometheus text: it is
    /// the database's or the stream's to count, not this process's.
    fn gauges(&self) -> impl Future<Output = String> + Send {
        async { String::new() }
    }
}

/// The health routes of both ports, over one cached readiness (so a probe on one port and
/// a scrape on the other share a check):
/// - the public port's: `/healthz` (the process is alive) and `/readyz` (its dependencies
///   answer), by status alone;
/// - the ops port's: `/healthz`, `/readyz` with its reason, and `/metrics` (this process's
///   metrics, then what `Readiness::gauges` reads at scrape time).
///
/// Why a service is not ready (partitions, a Zendesk account by channel) and the metrics
/// (labelled by channel) are for operators only: the public port faces platforms and
/// customers.
pub fn health_routers<R: Readiness>(readiness: R) -> (Router, Router) {
    let cached = Cached::new(readiness);
    let public = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(public_readyz::<R>))
        .with_state(cached.clone());
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<R>))
        .route("/metrics", get(metrics::<R>))
        .with_state(cached);
    (public, ops)
}

/// A readiness whose answers are reused for a moment: a probe or a scrape storm costs the
/// database and the stream one check per `READY_FOR` (`GAUGES_FOR` for the gauges), not
/// one per request.
struct Cached<R> {
    inner: R,
    ready: Last<Result<(), String>>,
    gauges: Last<String>,
}

/// An answer and when it was computed, shared by the router's handlers.
type Last<T> = std::sync::Arc<tokio::sync::Mutex<Option<(std::time::Instant, T)>>>;

impl<R: Clone> Clone for Cached<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
            gauges: self.gauges.clone(),
        }
    }
}

const READY_FOR: std::time::Duration = std::time::Duration::from_millis(500);
const GAUGES_FOR: std::time::Duration = std::time::Duration::from_secs(2);

impl<R: Readiness> Cached<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            ready: Default::default(),
            gauges: Default::default(),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        // Held while checking: concurrent requests wait for the one answer.
        let mut last = self.ready.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < READY_FOR
        {
            return answer.clone();
        }
        let answer = self.inner.ready().await;
        *last = Some((std::time::Instant::now(), answer.clone()));
        answer
    }

    async fn gauges(&self) -> String {
        let mut last = self.gauges.lock().await;
        if let Some((at, text)) = &*last
            && at.elapsed() < GAUGES_FOR
        {
            return text.clone();
        }
        let text = self.inner.gauges().await;
        *last = Some((std::time::Instant::now(), text.clone()));
        text
    }
}

/// One gauge family in Prometheus' text format, for `Readiness::gauges`. Label values
/// are made safe to quote (`"`, `\` and newlines become `_`).
pub fn gauge_text<'a>(
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'a str, &'a str)>, i64)>,
) -> String {
    let mut out = format!("# HELP {name} {help}\n# TYPE {name} gauge\n");
    for (labels, value) in samples {
        let labels: Vec<String> = labels
            .into_iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace(['"', '\\', '\n'], "_")))
            .collect();
        out.push_str(&format!("{name}{{{}}} {value}\n", labels.join(",")));
    }
    out
}

async fn metrics<R: Readiness>(State(r): State<Cached<R>>) -> impl IntoResponse {
    let mut text = metrics_text();
    text.push_str(&r.gauges().await);
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn readyz<R: Readiness>(State(r): State<Cached<R>>) -> impl IntoResponse {
    match r.ready().await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn public_readyz<R: Readiness>(State(r): State<Cached<R>>) -> impl IntoResponse {
    match r.ready().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready"),
    }
}

/// Bounds a public edge: at most `max_concurrent` requests are handled at once (more wait,
/// so a burst slows callers instead of exhausting the service) and each must be done
/// within `timeout`, its body read included (408 otherwise), so a slow client cannot hold
/// a slot.
pub fn bounded_edge(router: Router, max_concurrent: usize, timeout: std::time::Duration) -> Router {
    router
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            max_concurrent.max(1),
        ))
}

/// Request spans carry method and the matched route only: the query string may hold a
/// token, and so may a path (`/history/{token}`).
pub fn http_trace_layer<B>() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&Request<B>) -> Span + Clone,
> {
    TraceLayer::new_for_http().make_span_with(|req: &Request<B>| {
        let route = req
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or("unmatched", |p| p.as_str());
        tracing::info_span!("http_request", method = %req.method(), route = %route)
    })
}

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

mod telemetry;

pub use telemetry::{TelemetryGuard, init_telemetry};

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

/// Something that can say whether the service may take traffic.
pub trait Readiness: Clone + Send + Sync + 'static {
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// `/healthz` (the process is alive) and `/readyz` (its dependencies answer).
pub fn health_router<R: Readiness>(readiness: R) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<R>))
        .with_state(readiness)
}

async fn readyz<R: Readiness>(State(r): State<R>) -> impl IntoResponse {
    match r.ready().await {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Request spans carry method and path only: the query string may hold a token.
pub fn http_trace_layer<B>() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&Request<B>) -> Span + Clone,
> {
    TraceLayer::new_for_http().make_span_with(|req: &Request<B>| {
        tracing::info_span!(
            "http_request",
            method = %req.method(),
            path = %req.uri().path(),
        )
    })
}

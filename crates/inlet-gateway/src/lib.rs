//! inlet-gateway: the edge for customer-side custom platforms.
//!
//! It serves the Stella-compatible Webhook API for inlet channels, turns each customer
//! message into one `InboundMessage` event and answers 200 only once JetStream has stored
//! it. It also consumes `deliver.inlet` commands and calls the inlet's Send API.

mod deliver;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use handoff_bus::{Bus, BusSettings};
use handoff_config::{Channels, Settings};
use handoff_platforms::{OutboundClient, OutboundSettings};
use handoff_service::{Readiness, health_router, http_trace_layer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8080;

#[derive(Clone)]
pub(crate) struct AppState {
    pub bus: Bus,
    pub channels: Arc<Channels>,
    pub body_limit: usize,
}

impl Readiness for AppState {
    async fn ready(&self) -> Result<(), String> {
        if self.bus.is_connected() {
            Ok(())
        } else {
            Err("NATS is not connected".into())
        }
    }
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    client: OutboundClient,
}

impl Application {
    /// Connects to NATS and binds the HTTP listener (port 0 picks a free port).
    pub async fn build(settings: &Settings, channels: Channels) -> anyhow::Result<Self> {
        let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
        let listener = TcpListener::bind(settings.http.address(DEFAULT_PORT)).await?;
        Ok(Self {
            listener,
            state: AppState {
                bus,
                channels: Arc::new(channels),
                body_limit: settings.http.body_limit,
            },
            client: OutboundClient::new(OutboundSettings::from_config(&settings.delivery)),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves HTTP and delivers commands until `shutdown`; in-flight work finishes first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = Router::new()
            .merge(webhook::router(self.state.clone()))
            .merge(health_router(self.state.clone()))
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .layer(http_trace_layer());
        let consumers = handoff_bus::run_consumers(
            self.state.bus.clone(),
            "deliver.inlet".into(),
            "inlet-gateway".into(),
            Arc::new(deliver::Deliverer {
                bus: self.state.bus.clone(),
                channels: self.state.channels.clone(),
                client: self.client,
            }),
            shutdown.clone(),
        );
        let server = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let (served, consumed) = tokio::join!(
            async { server.await.map_err(anyhow::Error::from) },
            consumers
        );
        served?;
        consumed
    }
}

//! inlet-gateway: the edge for customer-side custom platforms.
//!
//! It serves the Stella-compatible Webhook API for inlet channels, turns each customer
//! message into one `InboundMessage` event and answers 200 only once JetStream has stored
//! it. It also consumes `deliver.inlet-gateway` commands and calls the inlet's Send API.

mod deliver;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use handoff_bus::{Bus, BusSettings, Service};
use handoff_config::{Channels, Settings};
use handoff_platforms::catalog_store::CatalogStore;
use handoff_platforms::{Catalog, OutboundClient, OutboundSettings};
use handoff_service::{
    HttpListener, Readiness, bounded_edge, health_routers, http_part, http_trace_layer, ops_part,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8080;

#[derive(Clone)]
pub(crate) struct AppState {
    pub bus: Bus,
    pub catalog: Catalog,
    pub body_limit: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: std::time::Duration,
}

impl Readiness for AppState {
    async fn ready(&self) -> Result<(), String> {
        self.bus.ready()
    }
}

pub struct Application {
    listener: HttpListener,
    ops: HttpListener,
    state: AppState,
    client: OutboundClient,
    store: Option<CatalogStore>,
}

impl Application {
    /// Connects to NATS and binds the HTTP listener (port 0 picks a free port).
    pub async fn build(settings: &Settings, channels: Channels) -> anyhow::Result<Self> {
        // Each channel's settings are its platform's to read: a bad one stops the start.
        let catalog = Catalog::new(channels).map_err(anyhow::Error::msg)?;
        let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
        let store = catalog
            .attach(&bus, settings.catalog_key.as_ref(), None)
            .await?;
        let listener = HttpListener::bind(&settings.http, DEFAULT_PORT).await?;
        let ops = HttpListener::bind_ops(&settings.http, DEFAULT_PORT).await?;
        Ok(Self {
            listener,
            ops,
            store,
            state: AppState {
                bus,
                catalog,
                body_limit: settings.http.body_limit,
                max_concurrent_requests: settings.http.max_concurrent_requests,
                request_timeout: settings.http.request_timeout(),
            },
            client: OutboundClient::new(OutboundSettings::from_config(&settings.delivery)),
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.ops.port()
    }

    /// Serves HTTP and delivers commands until `shutdown`; in-flight work finishes first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, ops_app) = health_routers(self.state.clone());
        let app = Router::new()
            .merge(bounded_edge(
                webhook::router(handoff_platforms::hub::Edge {
                    hub: self.state.bus.clone(),
                    catalog: self.state.catalog.clone(),
                    body_limit: self.state.body_limit,
                }),
                self.state.max_concurrent_requests,
                self.state.request_timeout,
            ))
            .merge(health)
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .layer(http_trace_layer());
        let state = self.state;
        let client = self.client;
        let store = self.store;
        let listener = self.listener;
        let ops = self.ops;
        handoff_service::run_parts(shutdown, move |stop| {
            let consumers = handoff_bus::run_consumers(
                state.bus.clone(),
                Service::InletGateway.deliver_area(),
                "inlet-gateway".into(),
                Arc::new(deliver::Deliverer {
                    bus: state.bus.clone(),
                    catalog: state.catalog.clone(),
                    client,
                }),
                stop.clone(),
            );
            let catalog = state.catalog.follow(store, stop.clone(), |_| async {});
            vec![
                http_part(listener, app, stop.clone()),
                ops_part(ops, ops_app, stop.clone()),
                ("the deliver.inlet-gateway consumers", Box::pin(consumers)),
                ("the channels catalog", Box::pin(catalog)),
            ]
        })
        .await
    }
}

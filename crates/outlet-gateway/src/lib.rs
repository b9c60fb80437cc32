//! outlet-gateway: the edge for agent-side systems and bots.
//!
//! It serves the Webhook API for outlet channels (`sendToInlet` = agent reply,
//! `sendToBot` = agent command), and consumes `deliver.outlet-gateway`: Livechat, Relay and
//! Send API calls to live-chat systems, and calls to bots, whose answers become `BotReply`
//! events. Both kinds share a member's lane, so what one member's parties receive stays in
//! the order the router decided it. It also receives Selarti's webhook, the AI's answers arriving later
//! (`/selarti/{channel}/{accessToken}`).

mod bots;
#[cfg(test)]
mod edge_tests;
mod livechat;
mod selarti;
mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use handoff_bus::{Bus, BusSettings, Handled, Handler, Service};
use handoff_config::{Channels, Settings};
use handoff_platforms::catalog_store::CatalogStore;
use handoff_platforms::selarti::SelartiClient;
use handoff_platforms::{Catalog, OutboundClient, OutboundSettings};
use handoff_proto::{Body, Envelope};
use handoff_service::{
    HttpListener, Readiness, bounded_edge, health_routers, http_part, http_trace_layer, ops_part,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8081;

#[derive(Clone)]
pub(crate) struct AppState {
    pub bus: Bus,
    pub catalog: Catalog,
    pub body_limit: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: std::time::Duration,
}

impl AppState {
    /// What the webhook endpoints need.
    fn edge(&self) -> handoff_platforms::hub::Edge<Bus> {
        handoff_platforms::hub::Edge {
            hub: self.bus.clone(),
            catalog: self.catalog.clone(),
            body_limit: self.body_limit,
        }
    }
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
            store,
            listener,
            ops,
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

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, ops_app) = health_routers(self.state.clone());
        let app = Router::new()
            .merge(bounded_edge(
                webhook::router(self.state.edge()).merge(selarti::router(self.state.edge())),
                self.state.max_concurrent_requests,
                self.state.request_timeout,
            ))
            .merge(health)
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .layer(http_trace_layer());
        let bus = self.state.bus.clone();
        let deliverer = Arc::new(Deliverer {
            livechat: livechat::LiveChatDeliverer {
                bus: bus.clone(),
                catalog: self.state.catalog.clone(),
                client: self.client.clone(),
            },
            bots: bots::BotCaller {
                bus: bus.clone(),
                catalog: self.state.catalog.clone(),
                client: self.client,
                selarti: SelartiClient::default(),
            },
        });
        let listener = self.listener;
        let ops = self.ops;
        let catalog = self.state.catalog.clone();
        let store = self.store;
        handoff_service::run_parts(shutdown, move |stop| {
            let consumers = handoff_bus::run_consumers(
                bus,
                Service::OutletGateway.deliver_area(),
                "outlet-gateway".into(),
                deliverer,
                stop.clone(),
            );
            let catalog = catalog.follow(store, stop.clone(), |_| async {});
            vec![
                http_part(listener, app, stop.clone()),
                ops_part(ops, ops_app, stop.clone()),
                ("the deliver.outlet-gateway consumers", Box::pin(consumers)),
                ("the channels catalog", Box::pin(catalog)),
            ]
        })
        .await
    }
}

/// The commands of `deliver.outlet-gateway`, each to the part that speaks its platform.
struct Deliverer {
    livechat: livechat::LiveChatDeliverer,
    bots: bots::BotCaller,
}

impl Handler for Deliverer {
    async fn handle(&self, envelope: Envelope, partition: u16) -> Handled {
        match &envelope.body {
            Some(Body::SendToBot(_)) => self.bots.handle(envelope, partition).await,
            _ => self.livechat.handle(envelope, partition).await,
        }
    }
}

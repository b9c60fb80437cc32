//! inlet-gateway: the edge for customer-side custom platforms.
//!
//! It serves the Stella-compatible Webhook API for inlet channels, turns each customer
//! message into one `InboundMessage` event and answers 200 only once JetStream has stored
//! it. It also consumes `deliver.inlet-gateway` commands and calls the inlet's Send API.
//! It serves Handoff's own web chat too (`webchat`): the widget, visitor sessions and
//! their WebSockets.

mod deliver;
mod webchat;
mod webhook;

use std::sync::Arc;

use handoff_bus::Service;
use handoff_config::{Channels, HttpSettings, Settings};
use handoff_platforms::hub::Edge;
use handoff_platforms::{OutboundClient, OutboundSettings};
use handoff_service::shell::{BusReady, Shell, catalog_part, deliver_part, edge_routes};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8080;

pub struct Application {
    shell: Shell,
    http: HttpSettings,
    client: OutboundClient,
}

impl Application {
    /// Connects to NATS and binds the HTTP listeners (port 0 picks a free port).
    pub async fn build(settings: &Settings, channels: Channels) -> anyhow::Result<Self> {
        Ok(Self {
            shell: Shell::start(settings, channels, DEFAULT_PORT, None).await?,
            http: settings.http.clone(),
            client: OutboundClient::new(OutboundSettings::from_config(&settings.delivery)),
        })
    }

    pub fn port(&self) -> u16 {
        self.shell.ports.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.shell.ports.ops_port()
    }

    /// Serves HTTP and delivers commands until `shutdown`; in-flight work finishes first.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Shell {
            bus,
            catalog,
            store,
            ports,
        } = self.shell;
        let webchat =
            webchat::Webchat::open(bus.clone(), catalog.clone(), shutdown.clone()).await?;
        // The web chat's sockets live for hours: outside the request timeout and the
        // concurrency bound of the webhook edge.
        let routes = edge_routes(
            &self.http,
            webhook::router(Edge {
                hub: bus.clone(),
                catalog: catalog.clone(),
                body_limit: self.http.body_limit,
            }),
        )
        .merge(webchat.clone().router());
        let deliverer = Arc::new(deliver::Deliverer {
            bus: bus.clone(),
            catalog: catalog.clone(),
            client: self.client,
            mailbox: webchat.mailbox.clone(),
        });
        ports
            .serve(BusReady(bus.clone()), routes, shutdown, move |stop| {
                vec![
                    deliver_part(bus, Service::InletGateway, deliverer, stop.clone()),
                    catalog_part(catalog, store, stop),
                ]
            })
            .await
    }
}

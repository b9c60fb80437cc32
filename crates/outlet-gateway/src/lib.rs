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
mod subscribers;
mod webhook;

use std::sync::Arc;

use axum::Router;
use handoff_bus::{Handled, Handler, Service};
use handoff_config::{Channels, HttpSettings, Settings};
use handoff_platforms::hub::Edge;
use handoff_platforms::selarti::SelartiClient;
use handoff_platforms::{OutboundClient, OutboundSettings};
use handoff_proto::{Body, Envelope};
use handoff_service::shell::{BusReady, Shell, catalog_part, deliver_part, edge_routes};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8081;

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
        let edge = Edge {
            hub: bus.clone(),
            catalog: catalog.clone(),
            body_limit: self.http.body_limit,
        };
        let routes: Router = edge_routes(
            &self.http,
            webhook::router(edge.clone()).merge(selarti::router(edge)),
        );
        let deliverer = Arc::new(Deliverer {
            livechat: livechat::LiveChatDeliverer {
                bus: bus.clone(),
                catalog: catalog.clone(),
                client: self.client.clone(),
            },
            subscribers: subscribers::Notifier {
                bus: bus.clone(),
                catalog: catalog.clone(),
                client: self.client.clone(),
            },
            bots: bots::BotCaller {
                bus: bus.clone(),
                catalog: catalog.clone(),
                client: self.client,
                selarti: SelartiClient::default(),
            },
        });
        ports
            .serve(BusReady(bus.clone()), routes, shutdown, move |stop| {
                vec![
                    deliver_part(bus, Service::OutletGateway, deliverer, stop.clone()),
                    catalog_part(catalog, store, stop),
                ]
            })
            .await
    }
}

/// The commands of `deliver.outlet-gateway`, each to the part that speaks its platform.
struct Deliverer {
    livechat: livechat::LiveChatDeliverer,
    bots: bots::BotCaller,
    subscribers: subscribers::Notifier,
}

impl Handler for Deliverer {
    async fn handle(&self, envelope: Envelope, partition: u16) -> Handled {
        match &envelope.body {
            Some(Body::SendToBot(_)) => self.bots.handle(envelope, partition).await,
            Some(Body::DeliverLifecycle(_)) => self.subscribers.handle(envelope, partition).await,
            _ => self.livechat.handle(envelope, partition).await,
        }
    }
}

//! outlet-gateway: the edge for agent-side systems and bots.
//!
//! It serves the Webhook API for outlet channels (`sendToInlet` = agent reply,
//! `sendToBot` = agent command), and consumes `deliver.outlet` (Livechat, Relay and Send
//! API calls to live-chat systems) and `deliver.bot` (calls to bots, whose answers become
//! `BotReply` events).

mod bots;
mod livechat;
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

pub const DEFAULT_PORT: u16 = 8081;

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

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = Router::new()
            .merge(webhook::router(self.state.clone()))
            .merge(health_router(self.state.clone()))
            .layer(DefaultBodyLimit::max(self.state.body_limit))
            .layer(http_trace_layer());
        let bus = self.state.bus.clone();
        let channels = self.state.channels.clone();
        let outlet = handoff_bus::run_consumers(
            bus.clone(),
            "deliver.outlet".into(),
            "outlet-gateway".into(),
            Arc::new(livechat::LiveChatDeliverer {
                bus: bus.clone(),
                channels: channels.clone(),
                client: self.client.clone(),
            }),
            shutdown.clone(),
        );
        let bots = handoff_bus::run_consumers(
            bus.clone(),
            "deliver.bot".into(),
            "outlet-gateway-bots".into(),
            Arc::new(bots::BotCaller {
                bus,
                channels,
                client: self.client,
            }),
            shutdown.clone(),
        );
        let server = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let (served, o, b) = tokio::join!(
            async { server.await.map_err(anyhow::Error::from) },
            outlet,
            bots
        );
        served?;
        o?;
        b
    }
}

/// Publishes a result event derived from command `cause`; a failed publish is retried by
/// redelivering the command.
pub(crate) async fn publish_result(
    bus: &Bus,
    cause: &handoff_proto::Envelope,
    purpose: &str,
    channel: &str,
    body: handoff_proto::Body,
) -> handoff_bus::Handled {
    let envelope = handoff_proto::Envelope {
        event_id: handoff_bus::derived_id(&cause.event_id, purpose, 0),
        org: cause.org.clone(),
        channel: channel.to_string(),
        member_id: cause.member_id.clone(),
        conversation_id: cause.conversation_id.clone(),
        causation_id: cause.event_id.clone(),
        occurred_at_ms: cause.occurred_at_ms,
        accepted_at_ms: handoff_bus::now_ms(),
        body: Some(body),
        ..Default::default()
    };
    match bus.publish_event(&envelope).await {
        Ok(()) => handoff_bus::Handled::Done,
        Err(e) => handoff_bus::Handled::Retry {
            after: std::time::Duration::from_secs(1),
            reason: e.to_string(),
        },
    }
}

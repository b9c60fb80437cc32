//! zendesk-agent: will act as a Zendesk Chat agent over the Conversations API (GraphQL over
//! WebSocket). Until its own issue lands it starts, connects to NATS (creating the stream
//! like every service) and serves health, so deployments already have its shape.

use axum::Router;
use handoff_bus::{Bus, BusSettings};
use handoff_config::Settings;
use handoff_service::{Readiness, health_router, http_trace_layer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8082;

#[derive(Clone)]
struct Ready(Bus);

impl Readiness for Ready {
    async fn ready(&self) -> Result<(), String> {
        if self.0.is_connected() {
            Ok(())
        } else {
            Err("NATS is not connected".into())
        }
    }
}

pub struct Application {
    listener: TcpListener,
    bus: Bus,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
        let listener = TcpListener::bind(settings.http.address(DEFAULT_PORT)).await?;
        Ok(Self { listener, bus })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = Router::new()
            .merge(health_router(Ready(self.bus)))
            .layer(http_trace_layer());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}

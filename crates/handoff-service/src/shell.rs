//! The start and the run every service shares, so each service writes only what is its
//! own (its edge, its handler, its side jobs).
//!
//! Start: the channels (each platform reads its own settings; a bad one stops the start),
//! the bus, the shared catalog, the public and ops listeners. Run: the public port (the
//! service's routes with `/healthz` and `/readyz`, traced), the ops port (`/metrics`,
//! `/readyz` with reasons), the service's parts beside them; a part that ends stops the
//! service.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use handoff_bus::{Bus, BusSettings, Handler, Service};
use handoff_config::{Channels, HttpSettings, Settings};
use handoff_platforms::Catalog;
use handoff_platforms::catalog_store::CatalogStore;
use tokio_util::sync::CancellationToken;

use crate::{
    HttpListener, Part, Readiness, bounded_edge, health_routers, http_part, http_trace_layer,
    ops_part, run_parts,
};

/// What a started service has.
pub struct Shell {
    pub bus: Bus,
    pub catalog: Catalog,
    /// The shared catalog, when a key is configured (else the channels file alone).
    pub store: Option<CatalogStore>,
    pub ports: Ports,
}

/// The service's two listeners, bound (port 0 picks a free port).
pub struct Ports {
    public: HttpListener,
    ops: HttpListener,
}

impl Shell {
    /// `seed` is the channels file's text, for the one service that seeds the shared
    /// catalog with it (the router); the others run with what the catalog holds.
    pub async fn start(
        settings: &Settings,
        channels: Channels,
        default_port: u16,
        seed: Option<&str>,
    ) -> anyhow::Result<Self> {
        let catalog = Catalog::new(channels).map_err(anyhow::Error::msg)?;
        let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
        let store = catalog
            .attach(&bus, settings.catalog_key.as_ref(), seed)
            .await?;
        let public = HttpListener::bind(&settings.http, default_port).await?;
        let ops = HttpListener::bind_ops(&settings.http, default_port).await?;
        Ok(Self {
            bus,
            catalog,
            store,
            ports: Ports { public, ops },
        })
    }
}

impl Ports {
    pub fn port(&self) -> u16 {
        self.public.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.ops.port()
    }

    /// Serves `routes` and the health endpoints, runs `parts` beside them, until `shutdown`.
    pub async fn serve(
        self,
        readiness: impl Readiness,
        routes: Router,
        shutdown: CancellationToken,
        parts: impl FnOnce(CancellationToken) -> Vec<(&'static str, Part)>,
    ) -> anyhow::Result<()> {
        let (health, ops_app) = health_routers(readiness);
        let app = routes.merge(health).layer(http_trace_layer());
        let Ports { public, ops } = self;
        run_parts(shutdown, move |stop| {
            let mut all = vec![
                http_part(public, app, stop.clone()),
                ops_part(ops, ops_app, stop.clone()),
            ];
            all.extend(parts(stop));
            all
        })
        .await
    }
}

/// A platform's endpoint as a service serves it: at most `max_concurrent_requests` at
/// once, each done within the request timeout, bodies within the limit.
pub fn edge_routes(http: &HttpSettings, edge: Router) -> Router {
    bounded_edge(edge, http.max_concurrent_requests, http.request_timeout())
        .layer(DefaultBodyLimit::max(http.body_limit))
}

/// The part consuming `deliver.<service>` with `handler`.
pub fn deliver_part<H: Handler>(
    bus: Bus,
    service: Service,
    handler: Arc<H>,
    stop: CancellationToken,
) -> (&'static str, Part) {
    let consumers = handoff_bus::run_consumers(
        bus,
        service.deliver_area(),
        service.as_str().into(),
        handler,
        stop,
    );
    let name = match service {
        Service::InletGateway => "the deliver.inlet-gateway consumers",
        Service::OutletGateway => "the deliver.outlet-gateway consumers",
        Service::ZendeskAgent => "the deliver.zendesk-agent consumers",
    };
    (name, Box::pin(consumers))
}

/// The part following the shared catalog (nothing else to do on a change).
pub fn catalog_part(
    catalog: Catalog,
    store: Option<CatalogStore>,
    stop: CancellationToken,
) -> (&'static str, Part) {
    (
        "the channels catalog",
        Box::pin(catalog.follow(store, stop, |_| async {})),
    )
}

/// Ready while the bus is (a gateway's readiness).
#[derive(Clone)]
pub struct BusReady(pub Bus);

impl Readiness for BusReady {
    async fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }
}

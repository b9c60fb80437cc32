//! zendesk-agent: serves Zendesk Chat visitors as an agent over the Chat Conversations API
//! (GraphQL over WebSocket). For each Zendesk inlet channel it keeps one agent session
//! (`session`), publishes visitors' messages as `InboundMessage` events, and consumes
//! `deliver.zendesk-agent` to send the hub's answers into the visitors' chats (`deliver`).
//!
//! Zendesk allows one live session per account (a second login ends the first with EOS),
//! so any number of replicas may run: each account's session is kept by the replica
//! holding its lease, and the others forward their requests to it (`account`).

mod account;
mod deliver;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use handoff_bus::{Bus, BusSettings, NamedLease, Service};
use handoff_config::{Channels, Settings};
use handoff_platforms::catalog_store::CatalogStore;
use handoff_platforms::{Catalog, ChannelSettings, Snapshot};
use handoff_service::{
    HttpListener, Readiness, health_routers, http_part, http_trace_layer, ops_part,
};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8082;

#[derive(Clone)]
struct Ready(Bus);

impl Readiness for Ready {
    async fn ready(&self) -> Result<(), String> {
        self.0.ready()
    }
}

pub struct Application {
    listener: HttpListener,
    ops: HttpListener,
    bus: Bus,
    /// Only its retry policy is used: how long a failing delivery is retried.
    client: handoff_platforms::OutboundClient,
    accounts: HashMap<String, Arc<account::Account>>,
    catalog: Catalog,
    store: Option<CatalogStore>,
}

/// What the Zendesk accounts of a catalog are, to notice when it changes.
fn zendesk_fingerprint(snapshot: &Snapshot) -> Vec<String> {
    let mut accounts: Vec<String> = snapshot
        .channels
        .iter()
        .filter(|c| {
            matches!(
                snapshot.platforms.get(&c.id).map(|s| &**s),
                Some(ChannelSettings::Zendesk(_))
            )
        })
        .map(|c| format!("{c:?}"))
        .collect();
    accounts.sort();
    accounts
}

impl Application {
    pub async fn build(settings: &Settings, channels: Channels) -> anyhow::Result<Self> {
        // Each channel's settings are its platform's to read: a bad one stops the start.
        let catalog = Catalog::new(channels).map_err(anyhow::Error::msg)?;
        let bus = Bus::connect(BusSettings::from_config(&settings.nats)).await?;
        let store = catalog
            .attach(&bus, settings.catalog_key.as_ref(), None)
            .await?;
        let snapshot = catalog.load();
        let mut accounts = HashMap::new();
        for channel in snapshot.channels.iter() {
            if let Some(ChannelSettings::Zendesk(zendesk)) =
                snapshot.platforms.get(&channel.id).map(|s| &**s)
            {
                accounts.insert(
                    channel.id.clone(),
                    Arc::new(account::Account {
                        channel: channel.clone(),
                        settings: zendesk.clone(),
                        link: Arc::default(),
                    }),
                );
            }
        }
        let listener = HttpListener::bind(&settings.http, DEFAULT_PORT).await?;
        let ops = HttpListener::bind_ops(&settings.http, DEFAULT_PORT).await?;
        Ok(Self {
            listener,
            ops,
            bus,
            client: handoff_platforms::OutboundClient::new(
                handoff_platforms::OutboundSettings::from_config(&settings.delivery),
            ),
            accounts,
            catalog,
            store,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.ops.port()
    }

    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (health, ops_app) = health_routers(Ready(self.bus.clone()));
        let app = Router::new().merge(health).layer(http_trace_layer());
        let bus = self.bus;
        let client = self.client;
        let accounts = self.accounts;
        let listener = self.listener;
        let ops = self.ops;
        let http = reqwest::Client::builder()
            .user_agent("handoff-zendesk-agent")
            .build()?;
        let (catalog, store) = (self.catalog, self.store);
        handoff_service::run_parts(shutdown, move |stop| {
            let mut parts = vec![
                http_part(listener, app, stop.clone()),
                ops_part(ops, ops_app, stop.clone()),
            ];
            // Sessions are long-lived and leased per account: when the catalog's Zendesk
            // accounts change, the service stops (and is restarted by its supervisor)
            // rather than reshuffle live sessions in place. Other channels' changes do
            // not concern it.
            let initial = zendesk_fingerprint(&catalog.load());
            let accounts_changed = CancellationToken::new();
            let follow = catalog.follow(store, stop.clone(), {
                let accounts_changed = accounts_changed.clone();
                move |snapshot| {
                    if zendesk_fingerprint(&snapshot) != initial {
                        accounts_changed.cancel();
                    }
                    async {}
                }
            });
            parts.push((
                "the channels catalog",
                Box::pin(async move {
                    tokio::select! {
                        followed = follow => followed,
                        () = accounts_changed.cancelled() => Err(anyhow::anyhow!(
                            "the catalog's Zendesk accounts changed; restarting to serve them"
                        )),
                    }
                }),
            ));
            for account in accounts.values() {
                let held = hold_account(account.clone(), bus.clone(), http.clone(), stop.clone());
                parts.push(("a Zendesk account", Box::pin(held) as handoff_service::Part));
            }
            let consumers = handoff_bus::run_consumers(
                bus.clone(),
                Service::ZendeskAgent.deliver_area(),
                "zendesk-agent".into(),
                Arc::new(deliver::Deliverer {
                    bus,
                    client,
                    accounts,
                }),
                stop.clone(),
            );
            parts.push(("the deliver.zendesk-agent consumers", Box::pin(consumers)));
            parts
        })
        .await
    }
}

/// Keeps the account's session up whenever this replica holds the account's lease, and
/// meanwhile answers the requests other replicas forward to the session.
async fn hold_account(
    account: Arc<account::Account>,
    bus: Bus,
    http: reqwest::Client,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let lease = NamedLease::open(
        &bus,
        &format!("zendesk-agent.account.{}", account.channel.id),
    )
    .await?;
    lease
        .run_while_held(stop, |held| {
            let (account, bus, http) = (account.clone(), bus.clone(), http.clone());
            async move {
                let serving = account.clone().serve_forwarded(bus.clone(), held.clone());
                let session = session::run(account, bus, http, held);
                let ((), result) = tokio::join!(serving, session);
                if let Err(e) = result {
                    tracing::error!(error = %e, "the Zendesk session stopped");
                }
            }
        })
        .await;
    Ok(())
}

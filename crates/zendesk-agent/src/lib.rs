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
use handoff_bus::{Bus, NamedLease, Service};
use handoff_config::{Channels, Settings};
use handoff_platforms::{ChannelSettings, Snapshot};
use handoff_service::shell::{BusReady, Shell, deliver_part};
use tokio_util::sync::CancellationToken;

pub const DEFAULT_PORT: u16 = 8082;

pub struct Application {
    shell: Shell,
    /// Only its retry policy is used: how long a failing delivery is retried.
    client: handoff_platforms::OutboundClient,
    accounts: HashMap<String, Arc<account::Account>>,
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
        let shell = Shell::start(settings, channels, DEFAULT_PORT, None).await?;
        let snapshot = shell.catalog.load();
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
        Ok(Self {
            shell,
            client: handoff_platforms::OutboundClient::new(
                handoff_platforms::OutboundSettings::from_config(&settings.delivery),
            ),
            accounts,
        })
    }

    pub fn port(&self) -> u16 {
        self.shell.ports.port()
    }

    /// Where `/metrics` and `/readyz` with its reasons are served.
    pub fn ops_port(&self) -> u16 {
        self.shell.ports.ops_port()
    }

    pub fn accounts(&self) -> usize {
        self.accounts.len()
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Shell {
            bus,
            catalog,
            store,
            ports,
        } = self.shell;
        let client = self.client;
        let accounts = self.accounts;
        let http = reqwest::Client::builder()
            .user_agent("handoff-zendesk-agent")
            .build()?;
        let ready = BusReady(bus.clone());
        ports
            .serve(ready, Router::new(), shutdown, move |stop| {
                // Sessions are long-lived and leased per account: when the catalog's
                // Zendesk accounts change, the service stops (and is restarted by its
                // supervisor) rather than reshuffle live sessions in place. Other
                // channels' changes do not concern it.
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
                let mut parts: Vec<(&'static str, handoff_service::Part)> = vec![(
                    "the channels catalog",
                    Box::pin(async move {
                        tokio::select! {
                            followed = follow => followed,
                            () = accounts_changed.cancelled() => Err(anyhow::anyhow!(
                                "the catalog's Zendesk accounts changed; restarting to serve them"
                            )),
                        }
                    }),
                )];
                for account in accounts.values() {
                    let held =
                        hold_account(account.clone(), bus.clone(), http.clone(), stop.clone());
                    parts.push(("a Zendesk account", Box::pin(held)));
                }
                let deliverer = Arc::new(deliver::Deliverer {
                    bus: bus.clone(),
                    client,
                    accounts,
                });
                parts.push(deliver_part(bus, Service::ZendeskAgent, deliverer, stop));
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

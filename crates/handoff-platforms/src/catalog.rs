//! What a service reads its channels from: the current snapshot of the channels catalog
//! (`handoff_bus::catalog`), swapped whole when an operator changes it. A handler takes one
//! snapshot per message, so a message is handled under one consistent set of channels.

use std::sync::{Arc, RwLock};

use crate::catalog_store::{CatalogEntry, CatalogStore};
use futures::StreamExt as _;
use handoff_bus::Bus;
use handoff_config::Channels;
use secrecy::{ExposeSecret as _, SecretString};
use tokio_util::sync::CancellationToken;

use crate::Platforms;

/// Channels with their typed platform settings, valid together.
pub struct Snapshot {
    pub channels: Channels,
    pub platforms: Platforms,
}

impl Snapshot {
    /// Channel `id` with its typed settings, if it is configured.
    pub fn configured(
        &self,
        id: &str,
    ) -> Option<(&Arc<handoff_config::Channel>, &crate::ChannelSettings)> {
        Some((self.channels.get(id)?, &**self.platforms.get(id)?))
    }

    pub fn new(channels: Channels) -> Result<Self, String> {
        let platforms = Platforms::from_channels(&channels)?;
        Ok(Self {
            channels,
            platforms,
        })
    }

    /// Parses and validates a catalog entry whole: a bad document changes nothing.
    pub fn from_entry(entry: &CatalogEntry) -> Result<Self, String> {
        let channels = Channels::parse(&entry.document)?
            .with_disabled(entry.disabled.clone())
            .with_unavailable(entry.unavailable.clone());
        Self::new(channels)
    }
}

#[derive(Clone)]
pub struct Catalog {
    current: Arc<RwLock<Arc<Snapshot>>>,
}

impl Catalog {
    /// A catalog fixed to `channels` until `follow` is running.
    pub fn new(channels: Channels) -> Result<Self, String> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(Snapshot::new(channels)?))),
        })
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.read().expect("not poisoned").clone()
    }

    /// Puts `snapshot` in force now (the router, right after writing it, so its own next
    /// read sees it; `follow` brings the same entry moments later).
    pub fn swap(&self, snapshot: Snapshot) {
        *self.current.write().expect("not poisoned") = Arc::new(snapshot);
    }

    /// Takes the shared catalog's current entry, if there is one and it is valid (the
    /// channels file stays in force otherwise). Without a key there is no shared catalog:
    /// the channels file is all there is. `seed` (the router's channels file) is written
    /// first when the catalog should follow it (see `CatalogStore::seed`).
    pub async fn attach(
        &self,
        bus: &Bus,
        key: Option<&SecretString>,
        seed: Option<&str>,
    ) -> anyhow::Result<Option<CatalogStore>> {
        let Some(key) = key.filter(|k| !k.expose_secret().is_empty()) else {
            tracing::info!("no HANDOFF_CATALOG_KEY: channels come from the channels file only");
            return Ok(None);
        };
        let store = CatalogStore::open(bus, key).await?;
        if let Some(text) = seed {
            store.seed(text).await?;
        }
        if let Some((entry, revision)) = store.get().await? {
            match Snapshot::from_entry(&entry) {
                Ok(snapshot) => self.swap(snapshot),
                Err(e) => {
                    tracing::error!(revision, error = %e, "the channels catalog is invalid; keeping the channels file")
                }
            }
        }
        Ok(Some(store))
    }

    /// Applies every change of the shared catalog until `stop`; `changed` is called after
    /// each swap (the router mirrors channels into Postgres there).
    pub async fn follow<F, Fut>(
        self,
        store: Option<CatalogStore>,
        stop: CancellationToken,
        changed: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(Arc<Snapshot>) -> Fut + Send,
        Fut: Future<Output = ()> + Send,
    {
        let Some(store) = store else {
            stop.cancelled().await;
            return Ok(());
        };
        while !stop.is_cancelled() {
            let mut entries = match store.watch().await {
                Ok(entries) => Box::pin(entries),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the channels catalog; retrying");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    next = entries.next() => next,
                };
                let Some((entry, revision)) = next else { break };
                match Snapshot::from_entry(&entry) {
                    Ok(snapshot) => {
                        self.swap(snapshot);
                        tracing::info!(revision, "channels catalog applied");
                        changed(self.load()).await;
                    }
                    Err(e) => {
                        tracing::error!(revision, error = %e, "an invalid channels catalog was ignored");
                    }
                }
            }
        }
        Ok(())
    }
}

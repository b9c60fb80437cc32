//! The channels every service runs with, kept in a KV bucket (`<prefix>_catalog`) so an
//! operator's change (`handoffctl apply`, `disable`) reaches every replica of every service
//! within moments, without a restart.
//!
//! Which document wins: the channels file seeds the catalog, and seeds it again whenever
//! the file itself changes (a deploy with a new ConfigMap); otherwise the last `apply` does.
//! The document carries channel credentials, so the entry is sealed (ChaCha20-Poly1305,
//! key from `HANDOFF_CATALOG_KEY`, the same on every service): what NATS stores, replicates
//! or logs at trace level is ciphertext. Credentials can also stay out of it entirely: the
//! document may name them as `${ENV}`, which each service expands from its environment.

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::StorageType;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chacha20poly1305::aead::{Aead as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use futures::StreamExt as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use handoff_bus::Bus;

/// What the bucket holds: the entry, sealed.
#[derive(Serialize, Deserialize)]
struct Sealed {
    nonce: String,
    sealed: String,
}

const KEY: &str = "channels";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// A channels document (the channels file's format).
    pub document: String,
    /// Channels that refuse new messages.
    pub disabled: std::collections::BTreeSet<String>,
    /// Outlets an operator switched unavailable (entries written before it have none).
    #[serde(default)]
    pub unavailable: std::collections::BTreeSet<String>,
    /// SHA-256 of the channels file this entry was last seeded from.
    pub file_sha256: String,
}

fn sha256_hex(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone)]
pub struct CatalogStore {
    kv: kv::Store,
    cipher: ChaCha20Poly1305,
}

impl CatalogStore {
    /// `key` is any passphrase; its SHA-256 is the cipher key.
    pub async fn open(bus: &Bus, key: &SecretString) -> anyhow::Result<Self> {
        let digest = sha2::Sha256::digest(key.expose_secret().as_bytes());
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&digest));
        let kv = bus
            .open_kv(
                &bus.catalog_bucket(),
                std::time::Duration::ZERO,
                StorageType::File,
            )
            .await?;
        Ok(Self { kv, cipher })
    }

    fn seal(&self, entry: &CatalogEntry) -> anyhow::Result<bytes::Bytes> {
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                serde_json::to_vec(entry)?.as_slice(),
            )
            .map_err(|_| anyhow::anyhow!("the channels catalog could not be sealed"))?;
        Ok(serde_json::to_vec(&Sealed {
            nonce: BASE64.encode(nonce),
            sealed: BASE64.encode(sealed),
        })?
        .into())
    }

    fn open_sealed(&self, value: &[u8]) -> anyhow::Result<CatalogEntry> {
        let sealed: Sealed = serde_json::from_slice(value)?;
        let nonce = BASE64.decode(sealed.nonce)?;
        anyhow::ensure!(
            nonce.len() == 12,
            "the catalog entry's nonce is not 12 bytes"
        );
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                BASE64.decode(sealed.sealed)?.as_slice(),
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "the channels catalog does not open with this HANDOFF_CATALOG_KEY \
                     (every service needs the same key)"
                )
            })?;
        Ok(serde_json::from_slice(&plain)?)
    }

    /// The current entry and its revision.
    pub async fn get(&self) -> anyhow::Result<Option<(CatalogEntry, u64)>> {
        let Some(entry) = self.kv.entry(KEY).await? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        Ok(Some((self.open_sealed(&entry.value)?, entry.revision)))
    }

    /// Writes `entry` if the catalog is still at `revision` (`None`: still empty); the
    /// new revision, or an error when someone else wrote first.
    pub async fn put(&self, entry: &CatalogEntry, revision: Option<u64>) -> anyhow::Result<u64> {
        let value = self.seal(entry)?;
        Ok(match revision {
            None => self.kv.create(KEY, value).await?,
            Some(revision) => self.kv.update(KEY, value, revision).await?,
        })
    }

    /// Makes the catalog follow the channels file `text`: written when the catalog is empty
    /// or was seeded from different file contents; left alone otherwise (an operator's
    /// later `apply` stands until the file changes).
    pub async fn seed(&self, text: &str) -> anyhow::Result<()> {
        let sha = sha256_hex(text);
        for _ in 0..5 {
            let current = self.get().await?;
            if current.as_ref().is_some_and(|(e, _)| e.file_sha256 == sha) {
                return Ok(());
            }
            // Operators' switches outlive a new file.
            let entry = CatalogEntry {
                document: text.to_string(),
                disabled: current
                    .as_ref()
                    .map(|(e, _)| e.disabled.clone())
                    .unwrap_or_default(),
                unavailable: current
                    .as_ref()
                    .map(|(e, _)| e.unavailable.clone())
                    .unwrap_or_default(),
                file_sha256: sha.clone(),
            };
            if self.put(&entry, current.map(|(_, r)| r)).await.is_ok() {
                return Ok(());
            }
            // Another router replica seeded at the same moment: look again.
        }
        anyhow::bail!("the channels catalog kept changing while being seeded")
    }

    /// Every entry from now on, the current one first.
    pub async fn watch(
        &self,
    ) -> anyhow::Result<impl futures::Stream<Item = (CatalogEntry, u64)> + use<>> {
        let watch = self.kv.watch_with_history(KEY).await?;
        let store = self.clone();
        Ok(watch.filter_map(move |entry| {
            let opened = entry
                .ok()
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| (store.open_sealed(&e.value), e.revision));
            async move {
                match opened? {
                    (Ok(entry), revision) => Some((entry, revision)),
                    (Err(e), revision) => {
                        tracing::error!(revision, error = %e, "a channels catalog entry is not readable; ignored");
                        None
                    }
                }
            }
        }))
    }
}

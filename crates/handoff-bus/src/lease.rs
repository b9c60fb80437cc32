//! Partition ownership: which replica of a service consumes which partition.
//!
//! Every replica writes a heartbeat key `<service>.i.<instance>` into one KV bucket and
//! watches the others'. A partition's desired owner is chosen by rendezvous hashing over the
//! live replicas, so every replica computes the same answer without talking to the others
//! and a joining or leaving replica moves only its share. Desire is not ownership: a
//! replica consumes a partition only while it holds the lease `<service>.p<N>`, created
//! when absent and renewed by compare-and-set on its revision. The bucket's `max_age` is the
//! lease time-to-live, so the lease of a killed replica disappears by itself and the next
//! owner takes over within one TTL, with no clock shared between replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream;
use futures::StreamExt as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Bus;

pub(crate) enum Renewal {
    Renewed(u64),
    /// Someone else holds it now: stop at once.
    Lost,
    /// NATS did not answer; ownership is unknown.
    Failed(String),
}

pub(crate) struct Leases {
    bus: Bus,
    kv: kv::Store,
    service: String,
    instance: String,
    ttl: Duration,
    /// Heartbeat keys and when each was last written, as seen by this replica.
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    watcher: JoinHandle<()>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Leases {
    pub(crate) async fn open(bus: &Bus, service: &str) -> anyhow::Result<Self> {
        let ttl = bus.settings().lease_ttl;
        let kv = open_bucket(bus).await?;
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let watcher = tokio::spawn(watch_heartbeats(
            kv.clone(),
            format!("{service}.i.>"),
            ttl,
            seen.clone(),
        ));
        Ok(Self {
            bus: bus.clone(),
            kv,
            service: service.to_string(),
            instance: uuid::Uuid::now_v7().simple().to_string(),
            ttl,
            seen,
            watcher,
        })
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    fn heartbeat_key(&self) -> String {
        format!("{}.i.{}", self.service, self.instance)
    }

    fn lease_key(&self, partition: u16) -> String {
        format!("{}.p{partition}", self.service)
    }

    /// Writes this replica's heartbeat. The bucket lives in the server's memory, so a
    /// restarted nats-server has none: when a write fails, the bucket is declared again
    /// (idempotent) and the write retried once, and the caller learns whether it worked.
    pub(crate) async fn heartbeat(&self) -> anyhow::Result<()> {
        if self.kv.put(self.heartbeat_key(), "".into()).await.is_ok() {
            return Ok(());
        }
        open_bucket(&self.bus).await?;
        self.kv.put(self.heartbeat_key(), "".into()).await?;
        Ok(())
    }

    /// Whether this replica should own each partition, given the replicas alive now.
    pub(crate) fn desired(&self, partitions: u16) -> Vec<bool> {
        let prefix = format!("{}.i.", self.service);
        let mut live: Vec<String> = {
            let seen = self.seen.lock().expect("heartbeat map lock");
            seen.iter()
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
                .collect()
        };
        if !live.iter().any(|i| i == &self.instance) {
            live.push(self.instance.clone());
        }
        (0..partitions)
            .map(|p| rendezvous_owner(p, &live) == Some(self.instance.as_str()))
            .collect()
    }

    /// Takes the partition if nobody holds it; the revision is the lease's epoch.
    pub(crate) async fn acquire(&self, partition: u16) -> Option<u64> {
        create(&self.kv, &self.lease_key(partition), &self.instance)
            .await
            .ok()
    }

    pub(crate) async fn renew(&self, partition: u16, revision: u64) -> Renewal {
        renew(
            &self.kv,
            &self.lease_key(partition),
            &self.instance,
            revision,
        )
        .await
    }

    /// Gives the partition back so the next owner need not wait for the lease to expire.
    pub(crate) async fn release(&self, partition: u16, revision: u64) {
        release(&self.kv, &self.lease_key(partition), revision).await;
    }

    /// This replica is going away: the others stop counting it at once.
    pub(crate) async fn leave(&self) {
        let _ = self.kv.delete(self.heartbeat_key()).await;
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Creates lease `key` for `instance` if nobody holds it; its revision is the epoch.
async fn create(kv: &kv::Store, key: &str, instance: &str) -> Result<u64, kv::CreateError> {
    kv.create(key, instance.to_string().into()).await
}

/// Renews lease `key` if it is still at `revision`, that is, still this instance's.
async fn renew(kv: &kv::Store, key: &str, instance: &str, revision: u64) -> Renewal {
    match kv.update(key, instance.to_string().into(), revision).await {
        Ok(revision) => Renewal::Renewed(revision),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Renewal::Lost,
        Err(e) => Renewal::Failed(e.to_string()),
    }
}

/// Deletes lease `key` if it is still at `revision`.
async fn release(kv: &kv::Store, key: &str, revision: u64) {
    let _ = kv.delete_expect_revision(key, Some(revision)).await;
}

/// The lease bucket: entries live one lease TTL unless rewritten.
async fn open_bucket(bus: &Bus) -> anyhow::Result<kv::Store> {
    open_kv(
        bus,
        &bus.lease_bucket(),
        bus.settings().lease_ttl,
        stream::StorageType::Memory,
    )
    .await
}

/// A KV bucket keeping the last value of each key, entries living `max_age` (zero: for
/// good), created if missing.
pub(crate) async fn open_kv(
    bus: &Bus,
    bucket: &str,
    max_age: Duration,
    storage: stream::StorageType,
) -> anyhow::Result<kv::Store> {
    let js = bus.jetstream();
    // The bucket's stream is declared directly: the client's `create_key_value` first
    // asks for account details in a shape NATS 2.9 does not send.
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage,
        num_replicas: bus.settings().replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await?;
    Ok(js.get_key_value(bucket).await?)
}

/// A lease on something only one replica may do at a time (a Zendesk account allows one
/// live agent session), in the same bucket as the partition leases and with the same
/// rules: created when absent, renewed by compare-and-set every third of the TTL, given
/// up when a renewal cannot be proven in time, and gone by itself one TTL after a killed
/// holder's last renewal.
pub struct NamedLease {
    bus: Bus,
    kv: kv::Store,
    key: String,
    instance: String,
    ttl: Duration,
}

impl NamedLease {
    /// `name` may hold any characters; those a KV key cannot are replaced.
    pub async fn open(bus: &Bus, name: &str) -> anyhow::Result<Self> {
        let key = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_=/.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Self {
            bus: bus.clone(),
            kv: open_bucket(bus).await?,
            key,
            instance: uuid::Uuid::now_v7().simple().to_string(),
            ttl: bus.settings().lease_ttl,
        })
    }

    /// Runs `work` each time this replica holds the lease, until `stop`. `work` is handed a
    /// token that is cancelled the moment the lease is lost (or `stop` comes) and must end
    /// promptly then: the next holder may start one TTL after the last renewal.
    pub async fn run_while_held<W, F>(&self, stop: CancellationToken, mut work: W)
    where
        W: FnMut(CancellationToken) -> F,
        F: Future<Output = ()>,
    {
        let period = self.ttl / 3;
        // Waiting replicas poll: a lease released on shutdown is taken within this, one
        // left by a killed holder within a TTL and this.
        let poll = period.min(Duration::from_millis(500));
        loop {
            let revision = loop {
                match create(&self.kv, &self.key, &self.instance).await {
                    Ok(revision) => break revision,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => {
                        tracing::warn!(lease = %self.key, error = %e, "cannot ask for a lease");
                        // A restarted nats-server has lost the in-memory bucket.
                        if let Err(e) = open_bucket(&self.bus).await {
                            tracing::warn!(error = %e, "cannot declare the lease bucket");
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(poll) => {}
                }
            };
            tracing::info!(lease = %self.key, instance = %self.instance, "lease taken");
            let held = stop.child_token();
            let renewing = self.renew_until_lost(revision, held.clone());
            tokio::pin!(renewing);
            let job = work(held.clone());
            tokio::pin!(job);
            let revision = tokio::select! {
                () = &mut job => {
                    held.cancel();
                    renewing.await
                }
                revision = &mut renewing => {
                    job.await;
                    revision
                }
            };
            if let Some(revision) = revision {
                release(&self.kv, &self.key, revision).await;
            }
            if stop.is_cancelled() {
                return;
            }
            // Lost, or the work ended by itself: let another replica have a go first.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    }

    /// Renews until `held` is cancelled (then returns the revision to release) or the lease
    /// is lost (then cancels `held` and returns `None`).
    async fn renew_until_lost(&self, mut revision: u64, held: CancellationToken) -> Option<u64> {
        let period = self.ttl / 3;
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = held.cancelled() => return Some(revision),
                () = tokio::time::sleep(period) => {}
            }
            match renew(&self.kv, &self.key, &self.instance, revision).await {
                Renewal::Renewed(next) => {
                    revision = next;
                    renewed = Instant::now();
                }
                Renewal::Lost => {
                    tracing::warn!(lease = %self.key, "lease taken by another replica; stopping");
                    held.cancel();
                    return None;
                }
                // Past this point another replica may already hold it: stop before then.
                Renewal::Failed(e) if renewed.elapsed() + period >= self.ttl => {
                    tracing::warn!(lease = %self.key, error = %e, "lease cannot be renewed; stopping");
                    held.cancel();
                    return None;
                }
                Renewal::Failed(e) => {
                    tracing::warn!(lease = %self.key, error = %e, "lease renewal failed; retrying")
                }
            }
        }
    }
}

async fn watch_heartbeats(
    kv: kv::Store,
    keys: String,
    ttl: Duration,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
) {
    loop {
        let mut watch = match kv.watch_with_history(&keys).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch replica heartbeats; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = watch.next().await {
            let Ok(entry) = entry else { break };
            let mut seen = seen.lock().expect("heartbeat map lock");
            match entry.operation {
                Operation::Put => {
                    // Entries from history were written a while ago; age them by the
                    // server's timestamp, bounded so a skewed clock cannot revive a corpse.
                    let age = (time::OffsetDateTime::now_utc() - entry.created).clamp(
                        time::Duration::ZERO,
                        time::Duration::try_from(ttl).unwrap_or_default(),
                    );
                    let age = Duration::try_from(age).unwrap_or_default();
                    let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    seen.insert(entry.key, at);
                }
                Operation::Delete | Operation::Purge => {
                    seen.remove(&entry.key);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Highest-random-weight choice: stable while the set of replicas is, and a change of the
/// set moves only the partitions of the replica that came or went.
fn rendezvous_owner(partition: u16, instances: &[String]) -> Option<&str> {
    instances
        .iter()
        .max_by_key(|i| weight(i, partition))
        .map(String::as_str)
}

fn weight(instance: &str, partition: u16) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for b in instance.bytes().chain(partition.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone ranks similar ids too alike.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_has_exactly_one_owner_and_the_share_is_fair() {
        let instances: Vec<String> = (0..3).map(|i| format!("replica-{i}")).collect();
        let mut share = HashMap::new();
        for p in 0..300 {
            let owner = rendezvous_owner(p, &instances).unwrap();
            *share.entry(owner).or_insert(0) += 1;
        }
        assert_eq!(share.values().sum::<i32>(), 300);
        assert!(
            share.values().all(|&n| (60..=140).contains(&n)),
            "{share:?}"
        );
    }

    #[test]
    fn a_replica_joining_moves_only_the_partitions_it_takes() {
        let before: Vec<String> = (0..2).map(|i| format!("replica-{i}")).collect();
        let mut after = before.clone();
        after.push("replica-new".into());
        for p in 0..200 {
            let old = rendezvous_owner(p, &before).unwrap();
            let new = rendezvous_owner(p, &after).unwrap();
            assert!(
                new == old || new == "replica-new",
                "partition {p} moved from {old} to {new}"
            );
        }
    }
}

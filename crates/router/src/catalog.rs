//! Operators' changes to the channels catalog (`handoffctl apply`, `disable`, `enable`):
//! validated whole, written by compare-and-set (two operators cannot overwrite each other
//! unseen), mirrored into Postgres before the call returns. Every service follows the
//! catalog and swaps to the new channels by itself.

use handoff_platforms::catalog_store::{CatalogEntry, CatalogStore};
use handoff_platforms::{Catalog, Snapshot};
use handoff_proto::admin as api;
use serde_yaml::Value;
use sqlx::PgPool;
use tonic::{Response, Status};

fn shared(store: Option<&CatalogStore>) -> Result<&CatalogStore, Status> {
    store.ok_or_else(|| {
        Status::failed_precondition(
            "channels can only change at runtime with a shared catalog: set \
             HANDOFF_CATALOG_KEY (the same on every service)",
        )
    })
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the channels catalog: {e}"))
}

async fn current(store: &CatalogStore) -> Result<(CatalogEntry, Option<u64>), Status> {
    Ok(match store.get().await.map_err(unavailable)? {
        Some((entry, revision)) => (entry, Some(revision)),
        None => (CatalogEntry::default(), None),
    })
}

/// The `channels` list of a document, as raw YAML (before `${ENV}` expansion, so a
/// reference stays a reference).
fn channel_list(document: &str) -> Result<Vec<Value>, String> {
    if document.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_yaml::from_str(document).map_err(|e| e.to_string())?;
    match value.get("channels") {
        Some(Value::Sequence(list)) => Ok(list.clone()),
        _ => Err("the document has no `channels:` list".into()),
    }
}

fn id_of(channel: &Value) -> Option<&str> {
    channel.get("id").and_then(Value::as_str)
}

/// Writes `entry` over `revision`, then mirrors it into Postgres.
async fn commit(
    pool: &PgPool,
    catalog: &Catalog,
    store: &CatalogStore,
    entry: &CatalogEntry,
    revision: Option<u64>,
) -> Result<(), Status> {
    let snapshot = Snapshot::from_entry(entry).map_err(Status::invalid_argument)?;
    store.put(entry, revision).await.map_err(|_| {
        Status::aborted("the channels catalog changed meanwhile; read it again and retry")
    })?;
    crate::store::channels::sync(pool, &snapshot.channels)
        .await
        .map_err(unavailable)?;
    catalog.swap(snapshot);
    Ok(())
}

/// Creates or updates the channels `request.document` lists (by id); the others stay.
pub(crate) async fn apply(
    pool: &PgPool,
    catalog: &Catalog,
    store: Option<&CatalogStore>,
    request: api::ApplyChannelsRequest,
) -> Result<Response<api::ApplyChannelsResponse>, Status> {
    // The router's environment holds its own secrets (the database URL, the catalog key):
    // a reference in an operator's document would expand them into a channel, where any
    // service may send them on. Only the file a deploy provides may refer to it.
    if let Some(path) = handoff_config::env_reference(&request.document) {
        return Err(Status::invalid_argument(format!(
            "{path}: `${{…}}` references are expanded only in the channels file a deploy \
             provides, never in a document applied through the admin API; write the value"
        )));
    }
    let incoming = channel_list(&request.document).map_err(Status::invalid_argument)?;
    if incoming.is_empty() {
        return Err(Status::invalid_argument("the document lists no channels"));
    }
    let store = shared(store)?;
    let (mut entry, revision) = current(store).await?;
    let mut channels = channel_list(&entry.document).map_err(unavailable)?;
    let mut response = api::ApplyChannelsResponse::default();
    for (i, channel) in incoming.into_iter().enumerate() {
        let id = id_of(&channel)
            .ok_or_else(|| Status::invalid_argument(format!("channels[{i}].id: missing")))?
            .to_string();
        match channels.iter_mut().find(|c| id_of(c) == Some(&id)) {
            Some(existing) if *existing == channel => response.unchanged.push(id),
            Some(existing) => {
                *existing = channel;
                response.updated.push(id);
            }
            None => {
                channels.push(channel);
                response.created.push(id);
            }
        }
    }
    let mut document = serde_yaml::Mapping::new();
    document.insert("channels".into(), Value::Sequence(channels));
    entry.document = serde_yaml::to_string(&document).map_err(unavailable)?;
    // The whole result must stand: links, tokens, each platform's settings.
    Snapshot::from_entry(&entry).map_err(Status::invalid_argument)?;
    if !request.dry_run && (!response.created.is_empty() || !response.updated.is_empty()) {
        commit(pool, catalog, store, &entry, revision).await?;
    }
    Ok(Response::new(response))
}

/// Switches outlet `id` available or not (`handoffctl channels unavailable`).
pub(crate) async fn set_available(
    pool: &PgPool,
    catalog: &Catalog,
    store: Option<&CatalogStore>,
    id: &str,
    available: bool,
) -> Result<(), Status> {
    let store = shared(store)?;
    let (mut entry, revision) = current(store).await?;
    let snapshot = Snapshot::from_entry(&entry).map_err(unavailable)?;
    match snapshot.channels.get(id) {
        None => return Err(Status::not_found(format!("no channel `{id}`"))),
        Some(c) if c.role != handoff_config::Role::Outlet => {
            return Err(Status::failed_precondition(format!(
                "channel `{id}` is not an outlet: only outlets take handoffs"
            )));
        }
        Some(_) => {}
    }
    if mark(&mut entry.unavailable, id, !available) {
        commit(pool, catalog, store, &entry, revision).await?;
    }
    Ok(())
}

/// Puts `id` in an operator's switch set or takes it out; `true` when that changed it.
fn mark(set: &mut std::collections::BTreeSet<String>, id: &str, marked: bool) -> bool {
    if marked {
        set.insert(id.to_string())
    } else {
        set.remove(id)
    }
}

pub(crate) async fn set_enabled(
    pool: &PgPool,
    catalog: &Catalog,
    store: Option<&CatalogStore>,
    id: &str,
    enabled: bool,
) -> Result<(), Status> {
    let store = shared(store)?;
    let (mut entry, revision) = current(store).await?;
    let known = channel_list(&entry.document)
        .map_err(unavailable)?
        .iter()
        .any(|c| id_of(c) == Some(id));
    if !known {
        return Err(Status::not_found(format!("no channel `{id}`")));
    }
    if mark(&mut entry.disabled, id, !enabled) {
        commit(pool, catalog, store, &entry, revision).await?;
    }
    Ok(())
}

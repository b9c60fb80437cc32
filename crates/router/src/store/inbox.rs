//! `processed_events`: every event the router has applied, so a redelivered one has no
//! second effect.

use std::collections::HashSet;

use sqlx::PgExecutor;
use uuid::Uuid;

/// Advisory-lock class for "one transaction per member at a time", across replicas.
const MEMBER_LOCK_CLASS: i32 = 0x4846_4f4d; // "HFOM"

/// Takes the members' locks for this transaction and records the events; returns those
/// not seen before. The locks are taken before any state is read (the statements after
/// this one), sorted, so batches never deadlock; the inbox insert shares their round trip,
/// and a concurrent insert of the same event waits on its key anyway.
pub async fn lock_and_record(
    db: impl PgExecutor<'_>,
    members: &[&str],
    events: &[Uuid],
) -> sqlx::Result<HashSet<Uuid>> {
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    let fresh = sqlx::query_scalar!(
        r#"WITH locked AS MATERIALIZED (
             SELECT pg_advisory_xact_lock($1, hashtext(m))
             FROM (SELECT m FROM unnest($2::text[]) AS m ORDER BY hashtext(m)) AS ordered
           ), inserted AS (
             INSERT INTO processed_events (event_id) SELECT unnest($3::uuid[])
             ON CONFLICT DO NOTHING RETURNING event_id
           )
           SELECT event_id AS "event_id!" FROM inserted WHERE (SELECT count(*) FROM locked) >= 0"#,
        MEMBER_LOCK_CLASS,
        &members,
        events,
    )
    .fetch_all(db)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Takes the member's lock for this transaction (the one batches take in
/// `lock_and_record`), outside a batch: an agent's takeover.
pub async fn lock_member(db: impl PgExecutor<'_>, member: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        MEMBER_LOCK_CLASS,
        member.to_string(),
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// Whether event `id` was applied (and its inbox entry not pruned yet).
pub async fn seen(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM processed_events WHERE event_id = $1) AS "seen!""#,
        id
    )
    .fetch_one(db)
    .await
}

/// Inbox entries older than `age_secs`, at most `chunk`.
pub async fn prune(db: impl PgExecutor<'_>, age_secs: f64, chunk: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM processed_events WHERE event_id IN (
           SELECT event_id FROM processed_events
           WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
        age_secs,
        chunk,
    )
    .execute(db)
    .await?
    .rows_affected())
}

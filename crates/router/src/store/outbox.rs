//! `outbox`: commands written in the transaction of the state they derive from, published
//! after the commit and deleted once JetStream has them.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// A command as stored.
#[derive(Debug)]
pub struct OutboxRow {
    pub seq: i64,
    pub command_id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// The columns of a batch's commands, in order.
#[derive(Debug, Default)]
pub struct NewCommands {
    pub partitions: Vec<i32>,
    pub members: Vec<Uuid>,
    pub ids: Vec<Uuid>,
    pub subjects: Vec<String>,
    pub payloads: Vec<Vec<u8>>,
}

/// Writes a batch's commands in one statement; their sequence numbers, in order.
pub async fn insert(db: impl PgExecutor<'_>, c: &NewCommands) -> sqlx::Result<Vec<i64>> {
    let mut seqs = sqlx::query_scalar!(
        "INSERT INTO outbox (partition, member_id, command_id, subject, payload)
         SELECT t.pa, t.m, t.i, t.s, t.p
         FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::text[], $5::bytea[])
              WITH ORDINALITY AS t(pa, m, i, s, p, o)
         ORDER BY o
         RETURNING seq",
        &c.partitions,
        &c.members,
        &c.ids,
        &c.subjects,
        &c.payloads,
    )
    .fetch_all(db)
    .await?;
    // RETURNING does not promise the insertion order; the sequence does.
    seqs.sort_unstable();
    Ok(seqs)
}

/// Deletes published rows, all in one statement.
///
/// Planned afresh each time, not from a prepared statement's cached plan: the outbox is a
/// small table that swells with dead rows between two autovacuum rounds, and a plan cached
/// while it was small scans all of it by sequence (seen under load: a delete of a hundred
/// rows taking 12 ms instead of 0.3 ms). A fresh plan sees the table's current size.
pub async fn delete(pool: &PgPool, seqs: &[i64]) -> sqlx::Result<()> {
    sqlx::query!("DELETE FROM outbox WHERE seq = ANY($1)", seqs)
        .persistent(false)
        .execute(pool)
        .await?;
    Ok(())
}

/// What an earlier attempt (or a crashed replica) left for a partition, oldest first.
pub async fn of_partition(pool: &PgPool, partition: i32) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as!(
        OutboxRow,
        "SELECT seq, command_id, subject, payload FROM outbox WHERE partition = $1 ORDER BY seq",
        partition,
    )
    .fetch_all(pool)
    .await
}

/// What an earlier attempt left for one member, oldest first.
pub async fn of_member(pool: &PgPool, member: Uuid) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as!(
        OutboxRow,
        "SELECT seq, command_id, subject, payload FROM outbox WHERE member_id = $1 ORDER BY seq",
        member,
    )
    .fetch_all(pool)
    .await
}

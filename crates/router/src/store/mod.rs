//! Every statement the router runs, one file per table, each checked against the schema
//! at compile time (`sqlx::query!`; the data for offline builds is in `.sqlx/`, refreshed by
//! `scripts/queries` and checked in CI). Rows come back typed ([`crate::model`] enums for
//! states and authors); nothing outside this module writes SQL.
//!
//! Functions take any executor, so the engine runs them inside a batch's transaction and
//! the admin API, look-ups and pages on the pool.

pub mod channels;
pub mod conversations;
pub mod dead_letters;
pub mod inbox;
pub mod members;
pub mod messages;
pub mod outbox;
pub mod steps;

use sqlx::PgExecutor;

/// A round trip, for readiness.
pub async fn ping(db: impl PgExecutor<'_>) -> sqlx::Result<()> {
    sqlx::query!("SELECT 1 AS one").fetch_one(db).await?;
    Ok(())
}

/// A session advisory lock, tried (retention runs on one replica at a time).
pub async fn try_lock(db: impl PgExecutor<'_>, key: i64) -> sqlx::Result<bool> {
    let locked = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(db)
        .await?;
    Ok(locked)
}

pub async fn unlock(db: impl PgExecutor<'_>, key: i64) -> sqlx::Result<()> {
    sqlx::query!("SELECT pg_advisory_unlock($1)", key)
        .fetch_one(db)
        .await?;
    Ok(())
}

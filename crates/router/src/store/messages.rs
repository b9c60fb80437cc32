//! `messages`: the transcript, every turn of customer, bot, agent and the hub itself.

use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::Author;

/// Transcript lines to append, column by column, in order.
#[derive(Debug, Default)]
pub struct NewLines {
    pub event_ids: Vec<Uuid>,
    pub member_ids: Vec<Uuid>,
    pub conversation_ids: Vec<Option<Uuid>>,
    pub channel_ids: Vec<String>,
    /// The platform's message id, on the first line of a customer's or agent's message.
    pub source_message_ids: Vec<Option<String>>,
    pub authors: Vec<String>,
    pub contents: Vec<Value>,
    pub held: Vec<bool>,
    /// Bot answers not sent because a human owned the conversation.
    pub withheld: Vec<bool>,
}

impl NewLines {
    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
    }
}

/// Appends lines in one statement, in order. Returns the event ids of those appended: a
/// line whose event id, or whose platform message id for the member and channel, was
/// recorded before is a duplicate and left out.
pub async fn insert(db: impl PgExecutor<'_>, lines: &NewLines) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar!(
        "INSERT INTO messages (event_id, member_id, conversation_id, channel_id,
           source_message_id, author, content, held, withheld)
         SELECT t.e, t.m, t.c, t.ch, t.s, t.a, t.co, t.h, t.w
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                     $7::jsonb[], $8::bool[], $9::bool[])
              WITH ORDINALITY AS t(e, m, c, ch, s, a, co, h, w, o)
         ORDER BY o
         ON CONFLICT DO NOTHING
         RETURNING event_id",
        &lines.event_ids,
        &lines.member_ids,
        &lines.conversation_ids as &[Option<Uuid>],
        &lines.channel_ids,
        &lines.source_message_ids as &[Option<String>],
        &lines.authors,
        &lines.contents,
        &lines.held,
        &lines.withheld,
    )
    .fetch_all(db)
    .await
}

/// Lines held while PENDING (the customer's messages, and bot answers withheld from
/// them), oldest first, with who wrote them; they are no longer held.
pub async fn release_held(
    db: impl PgExecutor<'_>,
    conversation: Uuid,
) -> sqlx::Result<Vec<(Author, Value)>> {
    let rows = sqlx::query!(
        r#"WITH released AS (
              UPDATE messages SET held = false WHERE conversation_id = $1 AND held
              RETURNING id, author, content)
           SELECT author AS "author!: Author", content AS "content!" FROM released
           ORDER BY id"#,
        conversation,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.author, r.content)).collect())
}

/// What waits for the member's coalescing bot (held lines without a conversation), oldest
/// first, with each line's platform message id; no longer held.
pub async fn release_turn(
    db: impl PgExecutor<'_>,
    member: Uuid,
) -> sqlx::Result<Vec<(Value, Option<String>)>> {
    let rows = sqlx::query!(
        r#"WITH released AS (
              UPDATE messages SET held = false
              WHERE member_id = $1 AND held AND conversation_id IS NULL
              RETURNING id, content, source_message_id)
           SELECT content AS "content!", source_message_id FROM released ORDER BY id"#,
        member,
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.content, r.source_message_id))
        .collect())
}

/// What waited for the member's coalescing bot joins the conversation just opened, held
/// for the desk with the rest.
pub async fn attach_turn(
    db: impl PgExecutor<'_>,
    member: Uuid,
    conversation: Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE messages SET conversation_id = $2
         WHERE member_id = $1 AND held AND conversation_id IS NULL",
        member,
        conversation,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A member whose turn for a coalescing bot has waited at least `min_age_secs`.
#[derive(Debug)]
pub struct WaitingTurn {
    pub member_id: Uuid,
    pub channel_id: String,
    /// The event id of the burst's first message (the turn's `TurnDue` derives from it).
    pub first_event_id: Uuid,
    pub age_secs: f64,
}

pub async fn waiting_turns(pool: &PgPool, min_age_secs: f64) -> sqlx::Result<Vec<WaitingTurn>> {
    sqlx::query_as!(
        WaitingTurn,
        r#"SELECT DISTINCT ON (member_id) member_id, channel_id, event_id AS first_event_id,
                  EXTRACT(EPOCH FROM now() - created_at)::float8 AS "age_secs!"
           FROM messages
           WHERE held AND conversation_id IS NULL
             AND created_at < now() - make_interval(secs => $1)
           ORDER BY member_id, id"#,
        min_age_secs,
    )
    .fetch_all(pool)
    .await
}

/// The member's last `lines` lines of dialog (customer, bot, agent), newest first: who,
/// and the text when the line has one.
pub async fn last_dialog(
    db: impl PgExecutor<'_>,
    member_id: Uuid,
    lines: i64,
) -> sqlx::Result<Vec<(Author, Option<String>)>> {
    let rows = sqlx::query!(
        r#"SELECT author AS "author: Author", content->>'text' AS text FROM messages
           WHERE member_id = $1 AND author IN ('customer', 'bot', 'agent')
           ORDER BY id DESC LIMIT $2"#,
        member_id,
        lines,
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.author, r.text)).collect())
}

/// A line as the admin API shows it.
#[derive(Debug)]
pub struct TranscriptLine {
    pub id: i64,
    pub created_at: OffsetDateTime,
    pub author: Author,
    pub channel_id: String,
    pub content: Value,
    pub event_id: Uuid,
    pub source_message_id: Option<String>,
    pub withheld: bool,
}

pub async fn of_conversation(pool: &PgPool, id: Uuid) -> sqlx::Result<Vec<TranscriptLine>> {
    sqlx::query_as!(
        TranscriptLine,
        r#"SELECT id, created_at, author AS "author: Author", channel_id, content, event_id,
                  source_message_id, withheld
           FROM messages WHERE conversation_id = $1 ORDER BY id"#,
        id,
    )
    .fetch_all(pool)
    .await
}

/// A line of a transcript page, with how many older lines the page leaves out.
#[derive(Debug)]
pub struct PageLine {
    pub author: Author,
    pub content: Value,
    pub conversation_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub omitted: i64,
    pub withheld: bool,
}

/// The newest lines of the member's bot dialog and of `conversation`, up to
/// `closed_at` when it is over, newest first: at most `max_lines`, and at most `max_bytes`
/// of content.
pub async fn page(
    pool: &PgPool,
    member_id: Uuid,
    conversation: Uuid,
    closed_at: Option<OffsetDateTime>,
    max_bytes: i64,
    max_lines: i64,
) -> sqlx::Result<Vec<PageLine>> {
    sqlx::query_as!(
        PageLine,
        r#"SELECT author AS "author!: Author", content AS "content!",
                  conversation_id, created_at AS "created_at!", omitted AS "omitted!",
                  withheld AS "withheld!" FROM (
              SELECT id, author, content, conversation_id, created_at, withheld,
                     sum(octet_length(content::text)) OVER (ORDER BY id DESC) AS running,
                     count(*) OVER () - row_number() OVER (ORDER BY id DESC) AS omitted
              FROM messages
              WHERE member_id = $1
                AND (conversation_id IS NULL OR conversation_id = $2)
                AND ($3::timestamptz IS NULL OR created_at <= $3)) AS latest
           WHERE running - octet_length(content::text) < $4
           ORDER BY id DESC LIMIT $5"#,
        member_id,
        conversation,
        closed_at,
        max_bytes,
        max_lines,
    )
    .fetch_all(pool)
    .await
}

/// The event id of the newest line with the platform's message id `source`.
pub async fn event_with_source_id(pool: &PgPool, source: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar!(
        r#"SELECT event_id::text AS "event_id!" FROM messages WHERE source_message_id = $1
           ORDER BY id DESC LIMIT 1"#,
        source
    )
    .fetch_optional(pool)
    .await
}

/// Lines older than `age_secs` that no open conversation needs, at most `chunk`.
pub async fn prune(db: impl PgExecutor<'_>, age_secs: f64, chunk: i64) -> sqlx::Result<u64> {
    Ok(sqlx::query!(
        "DELETE FROM messages WHERE id IN (
           SELECT m.id FROM messages m LEFT JOIN conversations c ON c.id = m.conversation_id
           WHERE m.created_at < now() - make_interval(secs => $1)
             AND NOT m.held AND (c.id IS NULL OR c.state = 'closed')
           LIMIT $2)",
        age_secs,
        chunk,
    )
    .execute(db)
    .await?
    .rows_affected())
}

//! Row types and the queries the engine, the look-up service and the pages share.

use handoff_config::{Channels, Role};
use handoff_proto::Member;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool, Row as _};
use uuid::Uuid;

/// Mirrors the channels catalog: every channel is upserted (secrets are not stored), and
/// its `updated_at` moves only when something about it changed.
pub async fn sync_channels(pool: &PgPool, channels: &Channels) -> anyhow::Result<()> {
    /// Mirrors run one at a time (an admin call and the catalog watcher, or two router
    /// replicas, may mirror at once); concurrent upserts of the same rows would deadlock.
    const SYNC_LOCK: i64 = 0x6368_616e_6e65_6c73;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SYNC_LOCK)
        .execute(&mut *tx)
        .await?;
    let mut sorted: Vec<_> = channels.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for c in sorted {
        let config = serde_json::json!({
            // As written: expanded `${ENV}` values are the deploy's secrets.
            "info": c.info_as_written,
            "bot": c.bot,
            "outlet": c.outlet,
            "handoff": {
                "keywords": c.handoff.keywords,
                "postbacks": c.handoff.postbacks,
                "pendingTimeoutSecs": c.handoff.pending_timeout_secs,
                "liveIdleTimeoutSecs": c.handoff.live_idle_timeout_secs,
            },
        });
        let role = match c.role {
            Role::Inlet => "inlet",
            Role::Outlet => "outlet",
            Role::Bot => "bot",
        };
        sqlx::query(
            "INSERT INTO channels (id, org, platform, role, config, enabled)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET org = excluded.org, platform = excluded.platform,
               role = excluded.role, config = excluded.config, enabled = excluded.enabled,
               updated_at = now()
             WHERE (channels.org, channels.platform, channels.role, channels.config,
                    channels.enabled)
                   IS DISTINCT FROM
                   (excluded.org, excluded.platform, excluded.role, excluded.config,
                    excluded.enabled)",
        )
        .bind(&c.id)
        .bind(&c.org)
        .bind(c.platform.as_str())
        .bind(role)
        .bind(config)
        .bind(channels.is_enabled(&c.id))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: Uuid,
    pub channel_id: String,
    pub external_id: String,
    pub profile: Value,
    pub meta: Value,
    pub temp_data: Value,
}

impl MemberRow {
    pub fn to_proto(&self, live_chat: bool) -> Member {
        Member {
            id: self.id.to_string(),
            external_id: self.external_id.clone(),
            profile_json: self.profile.to_string(),
            meta_json: self.meta.to_string(),
            live_chat,
            temp_data_json: self.temp_data.to_string(),
            inlet_channel: self.channel_id.clone(),
        }
    }
}

const MEMBER_COLUMNS: &str = "id, channel_id, external_id, profile, meta, temp_data";

fn member_from(row: &sqlx::postgres::PgRow) -> MemberRow {
    MemberRow {
        id: row.get("id"),
        channel_id: row.get("channel_id"),
        external_id: row.get("external_id"),
        profile: row.get("profile"),
        meta: row.get("meta"),
        temp_data: row.get("temp_data"),
    }
}

/// Creates the member or refreshes its profile (an empty profile keeps the stored one).
pub async fn upsert_member(
    db: impl PgExecutor<'_>,
    id: Uuid,
    channel_id: &str,
    external_id: &str,
    profile: &Value,
) -> sqlx::Result<MemberRow> {
    let row = sqlx::query(&format!(
        "INSERT INTO members (id, channel_id, external_id, profile) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET
           profile = CASE WHEN excluded.profile = '{{}}'::jsonb THEN members.profile
                          ELSE excluded.profile END,
           updated_at = now()
         RETURNING {MEMBER_COLUMNS}"
    ))
    .bind(id)
    .bind(channel_id)
    .bind(external_id)
    .bind(profile)
    .fetch_one(db)
    .await?;
    Ok(member_from(&row))
}

/// The most a member's merged profile, or meta, may grow to (its JSON text): every command
/// for the member carries both, and a bot that keeps adding would otherwise grow them
/// until no command fits a bus message.
pub const MAX_MEMBER_JSON_BYTES: i32 = 64 * 1024;

/// Merges JSON objects into the member's profile and meta (top-level keys replace). A
/// merge that would take either past `MAX_MEMBER_JSON_BYTES` leaves that one as it was.
pub async fn merge_member(
    db: impl PgExecutor<'_>,
    id: Uuid,
    profile: &Value,
    meta: &Value,
) -> sqlx::Result<MemberRow> {
    let row = sqlx::query(&format!(
        "UPDATE members SET
           profile = CASE WHEN octet_length((profile || $2)::text) <= $4
                          THEN profile || $2 ELSE profile END,
           meta = CASE WHEN octet_length((meta || $3)::text) <= $4
                       THEN meta || $3 ELSE meta END,
           updated_at = now()
         WHERE id = $1 RETURNING {MEMBER_COLUMNS}"
    ))
    .bind(id)
    .bind(profile)
    .bind(meta)
    .bind(MAX_MEMBER_JSON_BYTES)
    .fetch_one(db)
    .await?;
    Ok(member_from(&row))
}

/// Lines of the dialog before a handoff, oldest first, for an agent who gets no summary
/// from the bot (Selarti hands over without one).
pub async fn dialog_summary(db: impl PgExecutor<'_>, member_id: Uuid) -> sqlx::Result<String> {
    const LINES: i64 = 6;
    const MAX_CHARS: usize = 1_000;
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT author, content->>'text' FROM messages
         WHERE member_id = $1 AND author IN ('customer', 'bot', 'agent')
         ORDER BY id DESC LIMIT $2",
    )
    .bind(member_id)
    .bind(LINES)
    .fetch_all(db)
    .await?;
    let mut lines: Vec<String> = rows
        .into_iter()
        .rev()
        .filter_map(|(author, text)| {
            let who = match author.as_str() {
                "customer" => "Customer",
                "bot" => "Bot",
                _ => "Agent",
            };
            text.filter(|t| !t.trim().is_empty())
                .map(|t| format!("{who}: {}", t.trim()))
        })
        .collect();
    if lines.is_empty() {
        lines.push("The bot handed the customer over.".into());
    }
    let mut summary = lines.join("\n");
    if summary.chars().count() > MAX_CHARS {
        summary = summary.chars().take(MAX_CHARS - 1).collect::<String>() + "…";
    }
    Ok(summary)
}

pub async fn find_member(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<MemberRow>> {
    let row = sqlx::query(&format!(
        "SELECT {MEMBER_COLUMNS} FROM members WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?;
    Ok(row.as_ref().map(member_from))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvState {
    Pending,
    Live,
}

impl ConvState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ConvState::Pending => "pending",
            ConvState::Live => "live",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConversationRow {
    pub id: Uuid,
    pub state: ConvState,
    pub outlet_channel_id: String,
}

/// The member's open conversation, locked for this transaction.
pub async fn open_conversation(
    db: impl PgExecutor<'_>,
    member_id: Uuid,
) -> sqlx::Result<Option<ConversationRow>> {
    let row = sqlx::query(
        "SELECT id, state, outlet_channel_id FROM conversations
         WHERE member_id = $1 AND state <> 'closed' FOR UPDATE",
    )
    .bind(member_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| ConversationRow {
        id: r.get("id"),
        state: if r.get::<String, _>("state") == "live" {
            ConvState::Live
        } else {
            ConvState::Pending
        },
        outlet_channel_id: r.get("outlet_channel_id"),
    }))
}

/// Open conversations per state, every state present (a zero is a reading too).
pub async fn open_conversations_by_state(pool: &PgPool) -> sqlx::Result<Vec<(&'static str, i64)>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state, count(*) FROM conversations WHERE state <> 'closed' GROUP BY state",
    )
    .fetch_all(pool)
    .await?;
    Ok(["pending", "live"]
        .into_iter()
        .map(|state| {
            let n = rows.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
            (state, n)
        })
        .collect())
}

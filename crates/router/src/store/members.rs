//! `members`: one row per customer of an inlet, keyed by Handoff's `_id`.

use handoff_proto::Member;
use serde_json::Value;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::model::ConvState;

#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: Uuid,
    pub channel_id: String,
    pub external_id: String,
    pub profile: Value,
    pub meta: Value,
    pub temp_data: Value,
    /// Bumped each time a live chat starts or ends: a bot's answer names the epoch it was
    /// asked in.
    pub epoch: i32,
    /// The member's bot was found down and that was acted on; it has not answered since.
    pub bot_down: bool,
    /// The conversation whose satisfaction question the member may still answer.
    pub csat_pending: Option<Uuid>,
    /// The member's last live chat, its outlet, and seconds since it closed.
    pub last_live: Option<Uuid>,
    pub last_live_outlet: Option<String>,
    pub last_live_age: Option<f64>,
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

/// The most a member's merged profile, or meta, may grow to (its JSON text): every command
/// for the member carries both, and a bot that keeps adding would otherwise grow them
/// until no command fits a bus message.
pub const MAX_MEMBER_JSON_BYTES: i32 = 64 * 1024;

/// Merges JSON objects into the member's profile and meta (top-level keys replace). A
/// merge that would take either past `MAX_MEMBER_JSON_BYTES` leaves that one as it was.
pub async fn merge(
    db: impl PgExecutor<'_>,
    id: Uuid,
    profile: &Value,
    meta: &Value,
) -> sqlx::Result<MemberRow> {
    sqlx::query_as!(
        MemberRow,
        "UPDATE members SET
           profile = CASE WHEN octet_length((profile || $2)::text) <= $4
                          THEN profile || $2 ELSE profile END,
           meta = CASE WHEN octet_length((meta || $3)::text) <= $4
                       THEN meta || $3 ELSE meta END,
           updated_at = now()
         WHERE id = $1 RETURNING id, channel_id, external_id, profile, meta, temp_data, epoch,
           bot_down_since IS NOT NULL AS \"bot_down!\",
           CASE WHEN csat_until > now() THEN csat_conversation_id END AS csat_pending,
           last_live_id AS last_live, last_live_outlet,
           EXTRACT(EPOCH FROM now() - last_live_closed_at)::float8 AS last_live_age",
        id,
        profile,
        meta,
        MAX_MEMBER_JSON_BYTES,
    )
    .fetch_one(db)
    .await
}

/// The member's bot is down (`true`, acted on now) or answering again (`false`).
pub async fn set_bot_down(db: impl PgExecutor<'_>, id: Uuid, down: bool) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE members SET bot_down_since = CASE WHEN $2 THEN now() END WHERE id = $1",
        id,
        down,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The member was asked about `conversation`; an answer counts for `window_secs`
/// (`None`: no question is open any more).
pub async fn set_csat(
    db: impl PgExecutor<'_>,
    id: Uuid,
    conversation: Option<Uuid>,
    window_secs: f64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE members SET csat_conversation_id = $2,
           csat_until = CASE WHEN $2::uuid IS NULL THEN NULL
                             ELSE now() + make_interval(secs => $3) END
         WHERE id = $1",
        id,
        conversation,
        window_secs,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A member as the admin API shows it: with its open conversation, if any.
#[derive(Debug)]
pub struct MemberView {
    pub channel_id: String,
    pub external_id: String,
    pub profile: Value,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub conversation_id: Option<Uuid>,
    pub state: Option<ConvState>,
}

pub async fn view(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<MemberView>> {
    sqlx::query_as!(
        MemberView,
        r#"SELECT m.channel_id, m.external_id, m.profile, m.created_at, m.updated_at,
                  c.id AS "conversation_id?", c.state AS "state?: ConvState"
           FROM members m
           LEFT JOIN conversations c ON c.member_id = m.id AND c.state <> 'closed'
           WHERE m.id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// Who a look-up is about: the member, its inlet, and its open conversation if any.
#[derive(Debug)]
pub struct Whereabouts {
    pub member_id: Uuid,
    pub inlet: String,
    pub conversation_id: Option<Uuid>,
    pub state: Option<ConvState>,
    pub outlet_channel_id: Option<String>,
}

pub async fn whereabouts(db: impl PgExecutor<'_>, id: Uuid) -> sqlx::Result<Option<Whereabouts>> {
    sqlx::query_as!(
        Whereabouts,
        r#"SELECT m.id AS member_id, m.channel_id AS inlet, c.id AS "conversation_id?",
                  c.state AS "state?: ConvState", c.outlet_channel_id AS "outlet_channel_id?"
           FROM members m
           LEFT JOIN conversations c ON c.member_id = m.id AND c.state <> 'closed'
           WHERE m.id = $1"#,
        id,
    )
    .fetch_optional(db)
    .await
}

/// A batch's members in one statement: those with a customer message are created or get
/// their profile refreshed (an empty profile keeps the stored one), the others are read. The two lists are
/// disjoint (a batch holds one event per member); a member of `existing` that is not
/// there is missing from the answer.
pub async fn load_batch(
    db: impl PgExecutor<'_>,
    arriving: &Arriving,
    existing: &[Uuid],
) -> sqlx::Result<Vec<MemberRow>> {
    sqlx::query_as!(
        MemberRow,
        r#"WITH arrived AS (
             INSERT INTO members (id, channel_id, external_id, profile)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[])
             ON CONFLICT (id) DO UPDATE SET
               profile = CASE WHEN excluded.profile = '{}'::jsonb THEN members.profile
                              ELSE excluded.profile END,
               updated_at = now()
             RETURNING id, channel_id, external_id, profile, meta, temp_data, epoch,
                       bot_down_since, csat_conversation_id, csat_until, last_live_id,
                       last_live_outlet, last_live_closed_at
           )
           SELECT id AS "id!", channel_id AS "channel_id!", external_id AS "external_id!",
                  profile AS "profile!", meta AS "meta!", temp_data AS "temp_data!",
                  epoch AS "epoch!", bot_down_since IS NOT NULL AS "bot_down!",
                  CASE WHEN csat_until > now() THEN csat_conversation_id END AS csat_pending,
                  last_live_id AS last_live, last_live_outlet,
                  EXTRACT(EPOCH FROM now() - last_live_closed_at)::float8 AS last_live_age
           FROM arrived
           UNION ALL
           SELECT id, channel_id, external_id, profile, meta, temp_data, epoch,
                  bot_down_since IS NOT NULL,
                  CASE WHEN csat_until > now() THEN csat_conversation_id END,
                  last_live_id, last_live_outlet,
                  EXTRACT(EPOCH FROM now() - last_live_closed_at)::float8 FROM members
           WHERE id = ANY($5)"#,
        &arriving.ids,
        &arriving.channels,
        &arriving.external_ids,
        &arriving.profiles,
        existing,
    )
    .fetch_all(db)
    .await
}

/// Members whose customer wrote, column by column.
#[derive(Debug, Default)]
pub struct Arriving {
    pub ids: Vec<Uuid>,
    pub channels: Vec<String>,
    pub external_ids: Vec<String>,
    pub profiles: Vec<Value>,
}

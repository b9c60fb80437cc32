//! A request/reply service on `<prefix>_rpc.lookup` (queue group `router`): gateways ask
//! who a member or an outlet conversation is and whether it is LIVE, so they can answer
//! agents with 404 / 409 at once. The authoritative decision stays with the event's
//! processing.

use std::sync::Arc;

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::engine::Engine;

/// Outside the stream's `<prefix>.>` on purpose: a request on a stream subject would be
/// stored and answered by JetStream's publish acknowledgement instead of the router.
pub fn lookup_subject(prefix: &str) -> String {
    format!("{prefix}_rpc.lookup")
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupRequest {
    /// A member `_id` (agent replies: `sendToInlet.memberId`).
    #[serde(default)]
    pub member_id: Option<String>,
    /// An outlet and its reference to a conversation (agent commands: `messageEvent.to`).
    #[serde(default)]
    pub outlet_channel: Option<String>,
    #[serde(default)]
    pub conversation_ref: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LookupReply {
    pub found: bool,
    pub member_id: String,
    /// `bot`, `pending` or `live`.
    pub state: String,
    pub conversation_id: String,
    pub outlet_channel: String,
    pub error: Option<String>,
}

pub(crate) async fn serve(engine: Arc<Engine>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = engine.bus.client().clone();
    let requests = client
        .queue_subscribe(
            lookup_subject(&engine.bus.settings().prefix),
            "router".into(),
        )
        .await?;
    // Answered concurrently: a gateway's look-up must not wait behind another member's.
    requests
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(CONCURRENT_LOOKUPS, |request| {
            let engine = engine.clone();
            let client = client.clone();
            async move {
                let Some(reply_to) = request.reply.clone() else {
                    return;
                };
                let answer = match serde_json::from_slice::<LookupRequest>(&request.payload) {
                    Ok(q) => lookup(&engine, &q).await.unwrap_or_else(|e| LookupReply {
                        error: Some(format!("{e:#}")),
                        ..Default::default()
                    }),
                    Err(e) => LookupReply {
                        error: Some(format!("bad request: {e}")),
                        ..Default::default()
                    },
                };
                let payload = serde_json::to_vec(&answer).unwrap_or_default();
                if let Err(e) = client.publish(reply_to, payload.into()).await {
                    tracing::warn!(error = %e, "lookup reply not sent");
                }
            }
        })
        .await;
    Ok(())
}

/// Look-ups answered at once by one router (each holds a pooled connection briefly).
const CONCURRENT_LOOKUPS: usize = 32;

async fn lookup(engine: &Engine, q: &LookupRequest) -> anyhow::Result<LookupReply> {
    let row = if let Some(member) = &q.member_id {
        let Ok(id) = member.parse::<Uuid>() else {
            return Ok(LookupReply::default());
        };
        sqlx::query(
            "SELECT m.id AS member_id, c.id AS conversation_id, c.state, c.outlet_channel_id
             FROM members m LEFT JOIN conversations c ON c.member_id = m.id AND c.state <> 'closed'
             WHERE m.id = $1",
        )
        .bind(id)
        .fetch_optional(&engine.pool)
        .await?
    } else if let (Some(outlet), Some(reference)) = (&q.outlet_channel, &q.conversation_ref) {
        sqlx::query(
            "SELECT c.member_id, c.id AS conversation_id, c.state, c.outlet_channel_id
             FROM conversations c
             WHERE c.outlet_channel_id = $1 AND (c.id::text = $2 OR c.external_id = $2)
             ORDER BY (c.state <> 'closed') DESC, c.opened_at DESC LIMIT 1",
        )
        .bind(outlet)
        .bind(reference)
        .fetch_optional(&engine.pool)
        .await?
    } else {
        None
    };
    let Some(row) = row else {
        return Ok(LookupReply::default());
    };
    let state: Option<String> = row.get("state");
    Ok(LookupReply {
        found: true,
        member_id: row.get::<Uuid, _>("member_id").to_string(),
        state: match state.as_deref() {
            Some("pending") => "pending",
            Some("live") => "live",
            _ => "bot",
        }
        .into(),
        conversation_id: row
            .get::<Option<Uuid>, _>("conversation_id")
            .map(|c| c.to_string())
            .unwrap_or_default(),
        outlet_channel: row
            .get::<Option<String>, _>("outlet_channel_id")
            .unwrap_or_default(),
        error: None,
    })
}

//! A request/reply service on `<prefix>_rpc.lookup` (queue group `router`): gateways ask
//! who a member or an outlet conversation is and whether it is LIVE, so they can answer
//! agents with 404 / 409 at once. The authoritative decision stays with the event's
//! processing.
//!
//! Every look-up names the channel whose endpoint was called (`caller`), and a member is
//! found only *behind that wall*: a bot finds the members of the inlets it answers, an
//! outlet the members of the inlets it takes over (or whose conversation it holds). Member
//! ids are name-based UUIDs of public values, so nothing may rest on them being secret.

use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use handoff_config::Role;
use handoff_platforms::hub::{LookupReply, LookupRequest, Serving, lookup_subject};

use crate::Parts;
use crate::model::ConvState;
use crate::store;

pub(crate) async fn serve(parts: Parts, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = parts.bus.client().clone();
    let requests = client
        .queue_subscribe(
            lookup_subject(&parts.bus.settings().prefix),
            "router".into(),
        )
        .await?;
    // Answered concurrently: a gateway's look-up must not wait behind another member's.
    requests
        .take_until(shutdown.cancelled_owned())
        .for_each_concurrent(CONCURRENT_LOOKUPS, |request| {
            let parts = parts.clone();
            let client = client.clone();
            async move {
                let Some(reply_to) = request.reply.clone() else {
                    return;
                };
                let answer = match serde_json::from_slice::<LookupRequest>(&request.payload) {
                    Ok(q) => lookup(&parts, &q).await.unwrap_or_else(|e| LookupReply {
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

async fn lookup(parts: &Parts, q: &LookupRequest) -> anyhow::Result<LookupReply> {
    let row = if let Some(member) = &q.member_id {
        let Ok(id) = member.parse::<Uuid>() else {
            return Ok(LookupReply::default());
        };
        store::members::whereabouts(&parts.pool, id).await?
    } else if let (Some(outlet), Some(reference)) = (&q.outlet_channel, &q.conversation_ref) {
        if q.caller.as_deref() != Some(outlet) {
            return Ok(LookupReply::default());
        }
        store::conversations::by_outlet_reference(&parts.pool, outlet, reference).await?
    } else {
        None
    };
    let Some(row) = row else {
        return Ok(LookupReply::default());
    };
    if !may_act_on(
        parts,
        q.caller.as_deref(),
        &row.inlet,
        row.outlet_channel_id.as_deref(),
    ) {
        return Ok(LookupReply::default());
    }
    if q.claim
        && row.state.is_none_or(|s| s == ConvState::Closed)
        && let Some(outlet) = q
            .caller
            .as_deref()
            .and_then(|c| takes_over(parts, c, &row.inlet))
    {
        let conversation = Uuid::now_v7();
        let taken = store::conversations::take_over(
            &parts.pool,
            store::conversations::Takeover {
                id: conversation,
                member_id: row.member_id,
                outlet_channel_id: &outlet.id,
                agent_name: q.agent_name.as_deref().unwrap_or_default(),
                history_token: &crate::engine::history_token(),
                history_ttl_secs: parts
                    .catalog
                    .load()
                    .channels
                    .get(&row.inlet)
                    .map_or(0, |i| i.handoff.history_link_ttl_secs)
                    as f64,
            },
        )
        .await?;
        if taken {
            return Ok(LookupReply {
                found: true,
                member_id: Some(row.member_id),
                state: Serving::Live,
                conversation_id: Some(conversation),
                outlet_channel: outlet.id.clone(),
                claimed: true,
                error: None,
            });
        }
        // Another agent was quicker: say who has the member now.
        let now = store::members::whereabouts(&parts.pool, row.member_id).await?;
        return Ok(match now {
            Some(now) => reply(now),
            None => LookupReply::default(),
        });
    }
    Ok(reply(row))
}

/// The outlet `caller`, when it may take members of `inlet` over without being asked.
fn takes_over(
    parts: &Parts,
    caller: &str,
    inlet: &str,
) -> Option<std::sync::Arc<handoff_config::Channel>> {
    let snapshot = parts.catalog.load();
    let outlet = snapshot.channels.get(caller)?;
    let inlet = snapshot.channels.get(inlet)?;
    (outlet.role == Role::Outlet
        && outlet.live_chat.agent_takeover
        && snapshot.platforms.handoff_target(inlet) == Some(caller))
    .then(|| outlet.clone())
}

fn reply(row: store::members::Whereabouts) -> LookupReply {
    LookupReply {
        found: true,
        member_id: Some(row.member_id),
        state: match row.state {
            Some(ConvState::Pending) => Serving::Pending,
            Some(ConvState::Live) => Serving::Live,
            Some(ConvState::Closed) | None => Serving::Bot,
        },
        conversation_id: row.conversation_id,
        outlet_channel: row.outlet_channel_id.unwrap_or_default(),
        claimed: false,
        error: None,
    }
}

/// Whether channel `caller` may act on a member of `inlet` whose open conversation (if
/// any) is held by `holder`: the inlet's bot, the inlet's handoff target, or the outlet
/// holding the conversation; always within the inlet's org. No caller, no member.
fn may_act_on(parts: &Parts, caller: Option<&str>, inlet: &str, holder: Option<&str>) -> bool {
    let snapshot = parts.catalog.load();
    let (Some(caller), Some(inlet)) = (
        caller.and_then(|c| snapshot.channels.get(c)),
        snapshot.channels.get(inlet),
    ) else {
        return false;
    };
    caller.org == inlet.org
        && match caller.role {
            Role::Bot => inlet.bot.as_deref() == Some(caller.id.as_str()),
            // A subscriber only hears; it acts on no member.
            Role::Subscriber => false,
            Role::Outlet | Role::Inlet => {
                holder == Some(caller.id.as_str())
                    || snapshot.platforms.handoff_target(inlet) == Some(caller.id.as_str())
            }
        }
}

//! The sweeper: finds conversations past their state's timeout, or with a live-chat timer
//! due (no first reply, an agent gone quiet), and publishes a `ConversationTimeout`
//! event into the member's partition, where it is applied in order
//! with the member's other events (and only if still overdue then). Its event id derives
//! from the conversation and the moment it went quiet, so replicas sweeping at once
//! produce one effect.

use std::time::Duration;

use handoff_bus::{derived_id, now_ms};
use handoff_proto::{Body, ConversationTimeout, Envelope, TurnDue};
use tokio_util::sync::CancellationToken;

use crate::Parts;
use crate::model::OpenState;
use crate::store;

pub(crate) async fn run(parts: Parts, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = sweep(&parts).await {
            tracing::warn!(error = %format!("{e:#}"), "timeout sweep failed");
        }
    }
}

/// A coalesced turn's own timer fires in the router that received its first message; one
/// still waiting this long after its window lost that timer (the router stopped) and is
/// made due here.
const TURN_GRACE_SECS: f64 = 2.0;

async fn sweep(parts: &Parts) -> anyhow::Result<()> {
    if let Err(e) = sweep_turns(parts).await {
        tracing::warn!(error = %format!("{e:#}"), "coalesced turn sweep failed");
    }
    let rows = store::conversations::waiting(&parts.pool, None).await?;
    for row in rows {
        let Some(inlet) = parts.catalog.load().channels.get(&row.channel_id).cloned() else {
            continue;
        };
        let (elapsed, limit, reason) = match row.state {
            OpenState::Pending => (
                row.in_state,
                inlet.handoff.pending_timeout_secs,
                "pending_timeout",
            ),
            OpenState::Live => (
                row.idle,
                inlet.handoff.live_idle_timeout_secs,
                "live_idle_timeout",
            ),
        };
        let (conv, state) = (row.id, row.state.as_str());
        if elapsed >= limit as f64 {
            let marker = format!("{conv}/{state}/{}", row.quiet_since);
            publish(parts, &inlet, &row, &marker, reason).await?;
            continue;
        }
        if row.state == OpenState::Live
            && let Some(outlet) = parts.catalog.load().channels.get(&row.outlet_channel_id)
        {
            for (reason, marker) in live_chat_timers(&outlet.live_chat, &row) {
                publish(parts, &inlet, &row, &marker, reason).await?;
            }
        }
    }
    Ok(())
}

/// The live-chat timers due for `row`, each with what its event id derives from: the
/// moment its clock started, so it fires once per state (or per silence).
fn live_chat_timers(
    rules: &handoff_config::LiveChatRules,
    row: &store::conversations::Waiting,
) -> Vec<(&'static str, String)> {
    let on = |secs: u64, elapsed: f64| secs > 0 && elapsed >= secs as f64;
    let conv = row.id;
    let mut due = Vec::new();
    if row.unanswered && !row.waiting_told && on(rules.first_reply_secs, row.in_state) {
        due.push((
            "first_reply",
            format!("{conv}/first_reply/{}", row.state_since),
        ));
    }
    if row.unanswered && on(rules.requeue_secs, row.in_state) {
        due.push(("no_reply", format!("{conv}/no_reply/{}", row.state_since)));
    }
    match row.idle_told {
        None if row.customer_waits && on(rules.agent_idle_secs, row.agent_quiet) => {
            due.push((
                "agent_idle",
                format!("{conv}/agent_idle/{}", row.agent_quiet_since),
            ));
        }
        Some(told) if rules.agent_idle_secs > 0 && told >= rules.agent_idle_grace_secs as f64 => {
            due.push((
                "agent_idle_close",
                format!("{conv}/agent_idle_close/{}", row.agent_quiet_since),
            ));
        }
        _ => {}
    }
    due
}

/// The timer of `row` that fires next and in how many seconds (zero or less: due now,
/// at the next sweep): what `handoffctl conversations` shows. The same rules as the sweep.
pub(crate) fn next_due(
    inlet: &handoff_config::Channel,
    outlet: Option<&handoff_config::Channel>,
    row: &store::conversations::Waiting,
) -> Option<(&'static str, f64)> {
    let after = |secs: u64, elapsed: f64| (secs > 0).then_some(secs as f64 - elapsed);
    let mut candidates: Vec<(&'static str, Option<f64>)> = Vec::new();
    match row.state {
        OpenState::Pending => candidates.push((
            "pending_timeout",
            after(inlet.handoff.pending_timeout_secs, row.in_state),
        )),
        OpenState::Live => {
            candidates.push((
                "live_idle_timeout",
                after(inlet.handoff.live_idle_timeout_secs, row.idle),
            ));
            if let Some(rules) = outlet.map(|o| &o.live_chat) {
                if row.unanswered && !row.waiting_told {
                    candidates.push(("first_reply", after(rules.first_reply_secs, row.in_state)));
                }
                if row.unanswered {
                    candidates.push(("no_reply", after(rules.requeue_secs, row.in_state)));
                }
                match row.idle_told {
                    None if row.customer_waits => candidates
                        .push(("agent_idle", after(rules.agent_idle_secs, row.agent_quiet))),
                    Some(told) if rules.agent_idle_secs > 0 => candidates.push((
                        "agent_idle_close",
                        Some(rules.agent_idle_grace_secs as f64 - told),
                    )),
                    _ => {}
                }
            }
        }
    }
    candidates
        .into_iter()
        .filter_map(|(name, secs)| secs.map(|s| (name, s)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

async fn publish(
    parts: &Parts,
    inlet: &handoff_config::Channel,
    row: &store::conversations::Waiting,
    marker: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let envelope = Envelope {
        event_id: derived_id(marker, "timeout", 0),
        org: inlet.org.clone(),
        channel: row.channel_id.clone(),
        member_id: row.member_id.to_string(),
        conversation_id: row.id.to_string(),
        accepted_at_ms: now_ms(),
        body: Some(Body::ConversationTimeout(ConversationTimeout {
            state: row.state.as_str().into(),
            reason: reason.into(),
        })),
        ..Default::default()
    };
    parts.bus.publish_event(&envelope).await?;
    Ok(())
}

async fn sweep_turns(parts: &Parts) -> anyhow::Result<()> {
    let catalog = parts.catalog.load();
    if catalog.channels.iter().all(|c| c.coalesce_ms == 0) {
        return Ok(());
    }
    for turn in store::messages::waiting_turns(&parts.pool, TURN_GRACE_SECS).await? {
        let Some(inlet) = catalog.channels.get(&turn.channel_id) else {
            continue;
        };
        let window = inlet
            .bot
            .as_deref()
            .and_then(|bot| catalog.channels.get(bot))
            .map_or(0, |bot| bot.coalesce_ms);
        if turn.age_secs < window as f64 / 1000.0 + TURN_GRACE_SECS {
            continue;
        }
        let due = Envelope {
            event_id: derived_id(&turn.first_event_id.to_string(), crate::engine::TURN_DUE, 0),
            org: inlet.org.clone(),
            channel: turn.channel_id,
            member_id: turn.member_id.to_string(),
            accepted_at_ms: now_ms(),
            body: Some(Body::TurnDue(TurnDue {})),
            ..Default::default()
        };
        parts.bus.publish_event(&due).await?;
    }
    Ok(())
}

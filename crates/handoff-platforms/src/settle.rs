//! The one delivery seam: every service that delivers a command to a platform (inlet-
//! gateway, outlet-gateway, zendesk-agent) hands its adapter's outcome to [`settle`], which
//! decides the rest the same way for all of them — metrics, the result event the router
//! must hear of, a retry within the command's horizon, parking. The recipe was copied into
//! each service and had drifted (one retried some failures with no horizon and labelled
//! its metrics with a literal); now an adapter says only what happened.

use handoff_bus::{Bus, Handled};
use handoff_config::Channel;
use std::time::Duration;

use handoff_proto::{Body, Content, DeliveryFailed, DeliveryStalled, Envelope, RelayFailed};

use crate::{DeliveryError, Horizon, OutboundClient};

/// What a command's failure for good tells the router, and whether the command itself is
/// kept as a dead letter (replayable) or is answered by that event alone.
pub struct Failure {
    /// The result event's purpose: its id derives from the command's and this.
    pub purpose: &'static str,
    pub event: Body,
    pub park: bool,
}

impl Failure {
    /// A message for a customer or a desk that never got there: the router records it
    /// (and tells an agent whose message it was); the command is parked, replayable.
    pub fn delivery_failed(content: &Content, error: &DeliveryError) -> Self {
        Self {
            purpose: "delivery_failed",
            event: Body::DeliveryFailed(DeliveryFailed {
                content: Some(content.clone()),
                reason: error.to_string(),
                status: error.status().unwrap_or_default().into(),
            }),
            park: true,
        }
    }

    /// A customer's message the desk's Relay API never took: the bot hears of it
    /// (`relayMessageError`); the command is parked, replayable.
    pub fn relay_failed(content: &Content, error: &DeliveryError) -> Self {
        Self {
            purpose: "relay_failed",
            event: Body::RelayFailed(RelayFailed {
                content: Some(content.clone()),
                reason: error.to_string(),
                status: error.status().unwrap_or_default().into(),
            }),
            park: true,
        }
    }
}

/// When a delivery still being retried is worth telling the router about: once it has
/// failed for `after` (counted from the command's acceptance, like the horizon), the
/// router hears `DeliveryStalled` with `content`: once, whatever the retries after (the
/// event's id derives from the command's).
pub struct Stall<'a> {
    pub after: Duration,
    /// Copied only when the router is told (most deliveries never stall).
    pub content: &'a Content,
}

impl Stall<'_> {
    fn is_due(&self, envelope: &Envelope) -> bool {
        let age_ms = handoff_bus::now_ms().saturating_sub(envelope.accepted_at_ms);
        !self.after.is_zero() && u128::try_from(age_ms).unwrap_or(0) >= self.after.as_millis()
    }
}

/// The purpose of a `DeliveryStalled` event: its id is `derived_id(command, STALLED, 0)`.
pub const STALLED: &str = "stalled";

/// An adapter's successful attempt: nothing more to say, or a result event for the router
/// (a bot's answer, a Livechat acceptance).
pub type Delivered = Option<(&'static str, Body)>;

/// Settles one attempt at command `envelope` to `target`'s platform.
///
/// - Success: counted as delivered; its result event, if any, is published before the
///   command is acknowledged.
/// - A transient failure within `horizon` (counted from the command's acceptance, so a
///   restart does not reset it): retried after a delay that grows with the command's age.
/// - Anything else: `failure` says what the router is told; the command is parked if it
///   says so, else done.
pub async fn settle(
    client: &OutboundClient,
    bus: &Bus,
    envelope: &Envelope,
    target: &Channel,
    horizon: Horizon,
    attempt: Result<Delivered, DeliveryError>,
    failure: impl FnOnce(&DeliveryError) -> Failure,
) -> Handled {
    settle_watched(
        client, bus, envelope, target, horizon, attempt, failure, None,
    )
    .await
}

/// Settles one attempt at a best-effort command (a copy for agents watching a bot
/// conversation): retried like the others within `horizon`, then dropped with a warning,
/// since nobody is owed it and a dead letter of it would only be noise.
pub fn settle_best_effort(
    client: &OutboundClient,
    envelope: &Envelope,
    target: &Channel,
    horizon: Horizon,
    attempt: Result<(), DeliveryError>,
) -> Handled {
    let error = match attempt {
        Ok(()) => {
            crate::metrics::delivered(envelope, target.platform.as_str());
            return Handled::Done;
        }
        Err(e) => e,
    };
    client
        .later(&error, envelope, target, horizon)
        .unwrap_or_else(|| {
            tracing::warn!(error = %error, target = %target.id, kind = envelope.kind(), "a best-effort command failed; dropped");
            Handled::Done
        })
}

/// [`settle`], and a retry past `stall`'s time tells the router the delivery is stalled.
#[allow(clippy::too_many_arguments)]
pub async fn settle_watched(
    client: &OutboundClient,
    bus: &Bus,
    envelope: &Envelope,
    target: &Channel,
    horizon: Horizon,
    attempt: Result<Delivered, DeliveryError>,
    failure: impl FnOnce(&DeliveryError) -> Failure,
    stall: Option<Stall<'_>>,
) -> Handled {
    let error = match attempt {
        Ok(result) => {
            crate::metrics::delivered(envelope, target.platform.as_str());
            return match result {
                Some((purpose, event)) => {
                    bus.publish_then(envelope, purpose, &target.id, event, Handled::Done)
                        .await
                }
                None => Handled::Done,
            };
        }
        Err(e) => e,
    };
    if let Some(retry) = client.later(&error, envelope, target, horizon) {
        return match stall {
            Some(stall) if stall.is_due(envelope) => {
                let stalled = Body::DeliveryStalled(DeliveryStalled {
                    content: Some(stall.content.clone()),
                    reason: error.to_string(),
                    status: error.status().unwrap_or_default().into(),
                });
                bus.publish_then(envelope, STALLED, &target.id, stalled, retry)
                    .await
            }
            _ => retry,
        };
    }
    tracing::warn!(error = %error, target = %target.id, kind = envelope.kind(), "a command failed for good");
    let Failure {
        purpose,
        event,
        park,
    } = failure(&error);
    let then = if park {
        Handled::Park {
            reason: format!("{} to `{}` failed: {error}", envelope.kind(), target.id),
        }
    } else {
        Handled::Done
    };
    bus.publish_then(envelope, purpose, &target.id, event, then)
        .await
}

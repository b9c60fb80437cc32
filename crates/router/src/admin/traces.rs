//! Traces: where a message went, step by step, from the receipts every service reports.

use handoff_proto::admin::{self as api};
use tonic::Status;
use uuid::Uuid;

use super::{AdminService, internal, ts};
use crate::store;

impl AdminService {
    pub(super) async fn trace_message_(
        &self,
        request: api::TraceMessageRequest,
    ) -> Result<api::MessageTrace, Status> {
        let id = request.id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: give a message id"));
        }
        let root = self.trace_root(&id).await?;
        // The message, what it caused (commands, a bot's answer, that answer's delivery),
        // and so on: causation links them.
        let rows = store::steps::chain(&self.pool, &root)
            .await
            .map_err(internal)?;
        let mut trace = api::MessageTrace {
            event_id: root.clone(),
            ..Default::default()
        };
        let mut seen_accepted = std::collections::HashSet::new();
        for r in rows {
            let store::steps::Step {
                event_id,
                member_id,
                kind,
                service,
                channel,
                outcome,
                detail,
                attempt,
                accepted_at,
                at,
            } = r;
            if event_id == root {
                trace.member_id = member_id;
                trace.kind.clone_from(&kind);
            }
            if seen_accepted.insert(event_id.clone()) {
                let what = if event_id == root {
                    "accepted"
                } else {
                    "issued"
                };
                trace.steps.push(api::TraceStep {
                    at: ts(Some(accepted_at)),
                    step: what.into(),
                    service: String::new(),
                    detail: format!("{kind} on `{channel}` ({event_id})"),
                });
            }
            let step = match (service.as_str(), outcome.as_str()) {
                ("router", "done") => "routed",
                (_, "done") => "delivered",
                (_, "retry") => "retrying",
                (_, "parked") => "parked",
                (_, other) => other,
            };
            trace.steps.push(api::TraceStep {
                at: ts(Some(at)),
                step: step.into(),
                service,
                detail: format!(
                    "{kind} to `{channel}`, attempt {attempt}{}{detail}",
                    if detail.is_empty() { "" } else { ": " }
                ),
            });
        }
        if trace.steps.is_empty() {
            // Known to the transcript but not yet (or no longer) to the steps: say so.
            trace.steps.push(api::TraceStep {
                at: String::new(),
                step: "accepted".into(),
                service: String::new(),
                detail: "stored; no handling recorded yet".into(),
            });
        }
        Ok(trace)
    }

    /// The event a trace starts from: Handoff's event id (a UUID, found by index), else a
    /// platform's message id (searched in the transcript).
    async fn trace_root(&self, id: &str) -> Result<String, Status> {
        let known = match id.parse::<Uuid>() {
            Ok(uuid) => store::steps::known_event(&self.pool, uuid).await,
            Err(_) => store::messages::event_with_source_id(&self.pool, id).await,
        }
        .map_err(internal)?;
        known.ok_or_else(|| {
            Status::not_found(format!(
                "no message `{id}` (an event id from a webhook's answer, or the platform's message id)"
            ))
        })
    }
}

//! Conversations: listing, one with its transcript, and an operator's close, published
//! into the member's lane like the handoff.

use handoff_proto::admin::{self as api};
use handoff_proto::{Body, OperatorClose};
use tonic::Status;

use super::{AdminService, internal, ts, uuid_arg};
use crate::history::line_text;
use crate::model::ConvState;
use crate::store;

impl AdminService {
    pub(super) async fn list_conversations_(
        &self,
        request: api::ListConversationsRequest,
    ) -> Result<api::ListConversationsResponse, Status> {
        let state = match request.state.as_str() {
            "" => None,
            "pending" => Some(ConvState::Pending),
            "live" => Some(ConvState::Live),
            "closed" => Some(ConvState::Closed),
            other => {
                return Err(Status::invalid_argument(format!(
                    "state: `{other}` is not pending, live or closed"
                )));
            }
        };
        let limit = if request.limit <= 0 {
            100
        } else {
            request.limit.min(1000)
        };
        let channel = Some(request.channel.as_str()).filter(|c| !c.is_empty());
        let rows = store::conversations::list(&self.pool, state, channel, i64::from(limit))
            .await
            .map_err(internal)?;
        let mut conversations: Vec<api::Conversation> = rows.into_iter().map(shown).collect();
        if conversations.iter().any(|c| c.closed_at.is_empty()) {
            self.with_timers(&mut conversations).await?;
        }
        Ok(api::ListConversationsResponse { conversations })
    }

    pub(super) async fn get_conversation_(
        &self,
        request: api::GetConversationRequest,
    ) -> Result<api::ConversationDetail, Status> {
        let id = uuid_arg("id", &request.id)?;
        let row = store::conversations::view(&self.pool, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id}")))?;
        let lines = store::messages::of_conversation(&self.pool, id)
            .await
            .map_err(internal)?;
        let mut conversation = [shown(row)];
        if conversation[0].closed_at.is_empty() {
            self.with_timers(&mut conversation).await?;
        }
        let [conversation] = conversation;
        Ok(api::ConversationDetail {
            conversation: Some(conversation),
            transcript: lines
                .into_iter()
                .map(|l| api::TranscriptLine {
                    seq: l.id,
                    at: ts(Some(l.created_at)),
                    author: l.author.as_str().into(),
                    channel: l.channel_id,
                    text: line_text(&l.content),
                    event_id: l.event_id.to_string(),
                    source_message_id: l.source_message_id.unwrap_or_default(),
                    withheld: l.withheld,
                })
                .collect(),
        })
    }

    pub(super) async fn close_conversation_(
        &self,
        request: api::CloseConversationRequest,
    ) -> Result<api::Accepted, Status> {
        let id = uuid_arg("id", &request.id)?;
        let row = store::conversations::view(&self.pool, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id}")))?;
        if row.state == ConvState::Closed {
            return Err(Status::failed_precondition(format!(
                "conversation {id} is already closed"
            )));
        }
        let member = self
            .member_row(&api::FindMemberRequest {
                id: row.member_id.to_string(),
                ..Default::default()
            })
            .await?;
        let reason = if request.reason.is_empty() {
            "closed_by_operator".to_string()
        } else {
            request.reason
        };
        self.publish(
            &member,
            Some(&id.to_string()),
            Body::OperatorClose(OperatorClose { reason }),
        )
        .await
    }
}

impl AdminService {
    /// Which timer of each open conversation fires next, and when.
    async fn with_timers(&self, conversations: &mut [api::Conversation]) -> Result<(), Status> {
        let ids: Vec<uuid::Uuid> = conversations
            .iter()
            .filter_map(|c| c.id.parse().ok())
            .collect();
        let waiting: std::collections::HashMap<String, _> =
            store::conversations::waiting(&self.pool, Some(&ids))
                .await
                .map_err(internal)?
                .into_iter()
                .map(|w| (w.id.to_string(), w))
                .collect();
        let catalog = self.catalog.load();
        let now = time::OffsetDateTime::now_utc();
        for c in conversations.iter_mut() {
            let Some(row) = waiting.get(&c.id) else {
                continue;
            };
            let Some(inlet) = catalog.channels.get(&row.channel_id) else {
                continue;
            };
            let outlet = catalog.channels.get(&row.outlet_channel_id);
            if let Some((name, secs)) = crate::timeouts::next_due(inlet, outlet.map(|o| &**o), row)
            {
                c.next_timer = name.into();
                c.next_timer_at = ts(Some(now + time::Duration::seconds_f64(secs.max(0.0))));
            }
        }
        Ok(())
    }
}

fn shown(c: store::conversations::ConversationView) -> api::Conversation {
    api::Conversation {
        id: c.id.to_string(),
        member_id: c.member_id.to_string(),
        inlet_channel: c.inlet,
        external_id: c.external_id,
        outlet_channel: c.outlet_channel_id,
        state: c.state.as_str().into(),
        trigger: c.trigger,
        opened_at: ts(Some(c.opened_at)),
        state_changed_at: ts(Some(c.state_changed_at)),
        closed_at: ts(c.closed_at),
        close_reason: c.close_reason.unwrap_or_default(),
        outlet_conversation_id: c.outlet_ref.unwrap_or_default(),
        csat: c.csat_answer.unwrap_or_default(),
        next_timer: String::new(),
        next_timer_at: String::new(),
    }
}

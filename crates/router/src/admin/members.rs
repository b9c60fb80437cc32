//! Members: finding one, and an operator's handoff, published into the member's lane so
//! the state machine applies it in order with the member's own messages.

use handoff_bus::{new_event_id, now_ms};
use handoff_proto::admin::{self as api};
use handoff_proto::{Body, Envelope, HandoffDetails, HandoffRequested};
use tonic::Status;

use super::{AdminService, internal, ts, uuid_arg};
use crate::model::ConvState;
use crate::store;

impl AdminService {
    pub(super) async fn find_member_(
        &self,
        request: api::FindMemberRequest,
    ) -> Result<api::Member, Status> {
        self.member_row(&request).await
    }

    pub(super) async fn request_handoff_(
        &self,
        request: api::RequestHandoffRequest,
    ) -> Result<api::Accepted, Status> {
        let member = self
            .member_row(&api::FindMemberRequest {
                id: request.member_id.clone(),
                ..Default::default()
            })
            .await?;
        if member.state != "bot" {
            return Err(Status::failed_precondition(format!(
                "member {} is already {} in conversation {}",
                member.id, member.state, member.conversation_id
            )));
        }
        let reason = if request.reason.is_empty() {
            "requested by an operator".to_string()
        } else {
            request.reason
        };
        let details = HandoffDetails {
            summary: reason,
            ..Default::default()
        };
        self.publish(
            &member,
            None,
            Body::HandoffRequested(HandoffRequested {
                details: Some(details),
            }),
        )
        .await
    }

    pub(super) async fn member_row(
        &self,
        request: &api::FindMemberRequest,
    ) -> Result<api::Member, Status> {
        let id = match (request.id.is_empty(), request.channel.is_empty()) {
            (false, _) => uuid_arg("id", &request.id)?,
            (true, false) if !request.external_id.is_empty() => {
                handoff_config::member_id(&request.channel, &request.external_id)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "give a member id, or a channel and an externalId",
                ));
            }
        };
        let m = store::members::view(&self.pool, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no member {id}")))?;
        Ok(api::Member {
            id: id.to_string(),
            channel: m.channel_id,
            external_id: m.external_id,
            profile_json: m.profile.to_string(),
            state: m.state.map_or("bot", ConvState::as_str).into(),
            conversation_id: m.conversation_id.map(|c| c.to_string()).unwrap_or_default(),
            created_at: ts(Some(m.created_at)),
            updated_at: ts(Some(m.updated_at)),
        })
    }

    /// Publishes an operator's event into the member's lane.
    pub(super) async fn publish(
        &self,
        member: &api::Member,
        conversation: Option<&str>,
        body: Body,
    ) -> Result<api::Accepted, Status> {
        let org = self
            .catalog
            .load()
            .channels
            .get(&member.channel)
            .map(|c| c.org.clone())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the member's channel `{}` is not configured",
                    member.channel
                ))
            })?;
        let envelope = Envelope {
            event_id: new_event_id(),
            org,
            channel: member.channel.clone(),
            member_id: member.id.clone(),
            conversation_id: conversation.unwrap_or_default().to_string(),
            occurred_at_ms: now_ms(),
            accepted_at_ms: now_ms(),
            body: Some(body),
            ..Default::default()
        };
        self.bus.publish_event(&envelope).await.map_err(internal)?;
        Ok(api::Accepted {
            event_id: envelope.event_id,
        })
    }
}

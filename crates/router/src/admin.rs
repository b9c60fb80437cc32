//! The admin API (`proto/handoff/admin/v1`): gRPC on its own port, every call behind the
//! configured bearer token, plus gRPC health and server reflection.
//!
//! Reads answer from Postgres. Changes to a conversation (hand off, close) are published
//! as events into the member's partition, so they are applied by the same state machine,
//! in order with the member's own messages, and appear in the transcript like them.

use std::collections::HashMap;

use handoff_bus::{Bus, new_event_id, now_ms};
use handoff_platforms::Catalog;
use handoff_proto::admin::admin_server::{Admin, AdminServer};
use handoff_proto::admin::{self as api};
use handoff_proto::{Body, Envelope, HandoffDetails, HandoffRequested, OperatorClose};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::Value;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::dead_letters::{self, DeadLetterError};
use crate::history::line_text;

pub(crate) struct AdminService {
    pub pool: PgPool,
    pub bus: Bus,
    pub catalog: Catalog,
    /// The shared channels catalog, when a key is configured.
    pub store: Option<handoff_bus::catalog::CatalogStore>,
}

/// Serves the admin API on `listener` until `stop`.
pub(crate) async fn serve(
    service: AdminService,
    token: SecretString,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AdminServer<AdminService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(handoff_proto::admin::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let admin = AdminServer::with_interceptor(service, move |request: Request<()>| {
        authorize(&token, &request)?;
        Ok(request)
    });
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stop.cancelled_owned(),
        )
        .await?;
    Ok(())
}

fn authorize(token: &SecretString, request: &Request<()>) -> Result<(), Status> {
    use subtle::ConstantTimeEq as _;
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("send `authorization: Bearer <admin token>`"))?;
    let expected = token.expose_secret().as_bytes();
    if bool::from(presented.as_bytes().ct_eq(expected)) {
        Ok(())
    } else {
        Err(Status::unauthenticated("the admin token is not valid"))
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "admin call failed");
    Status::unavailable(e.to_string())
}

fn ts(t: Option<OffsetDateTime>) -> String {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

fn uuid_arg(field: &str, value: &str) -> Result<Uuid, Status> {
    value
        .parse()
        .map_err(|_| Status::invalid_argument(format!("{field}: `{value}` is not a UUID")))
}

const CONVERSATION_COLUMNS: &str = "c.id, c.member_id, m.channel_id AS inlet, m.external_id,
    c.outlet_channel_id, c.state, c.trigger, c.opened_at, c.state_changed_at, c.closed_at,
    c.close_reason, c.external_id AS outlet_ref";

fn conversation(r: &sqlx::postgres::PgRow) -> api::Conversation {
    api::Conversation {
        id: r.get::<Uuid, _>("id").to_string(),
        member_id: r.get::<Uuid, _>("member_id").to_string(),
        inlet_channel: r.get("inlet"),
        external_id: r.get("external_id"),
        outlet_channel: r.get("outlet_channel_id"),
        state: r.get("state"),
        trigger: r.get("trigger"),
        opened_at: ts(r.get("opened_at")),
        state_changed_at: ts(r.get("state_changed_at")),
        closed_at: ts(r.get("closed_at")),
        close_reason: r
            .get::<Option<String>, _>("close_reason")
            .unwrap_or_default(),
        outlet_conversation_id: r.get::<Option<String>, _>("outlet_ref").unwrap_or_default(),
    }
}

fn dead_letter_status(e: DeadLetterError) -> Status {
    match e {
        DeadLetterError::NotFound(_) => Status::not_found(e.to_string()),
        DeadLetterError::NotParked(..) | DeadLetterError::Truncated(_) => {
            Status::failed_precondition(e.to_string())
        }
        other => internal(other),
    }
}

impl AdminService {
    async fn channel_row(&self, id: &str) -> Result<Option<api::Channel>, Status> {
        Ok(self.channel_rows(Some(id)).await?.into_iter().next())
    }

    /// The channels in force (the catalog), with when Postgres saw each last change.
    async fn channel_rows(&self, id: Option<&str>) -> Result<Vec<api::Channel>, Status> {
        let rows = sqlx::query("SELECT id, config, updated_at FROM channels")
            .fetch_all(&self.pool)
            .await
            .map_err(internal)?;
        let stored: HashMap<String, (Value, Option<OffsetDateTime>)> = rows
            .iter()
            .map(|r| (r.get("id"), (r.get("config"), r.get("updated_at"))))
            .collect();
        let snapshot = self.catalog.load();
        let mut channels: Vec<api::Channel> = snapshot
            .channels
            .iter()
            .filter(|c| id.is_none_or(|id| c.id == id))
            .map(|c| {
                let (config, updated_at) = stored.get(&c.id).cloned().unwrap_or_default();
                api::Channel {
                    id: c.id.clone(),
                    org: c.org.clone(),
                    platform: c.platform.as_str().into(),
                    role: c.role.as_str().into(),
                    enabled: snapshot.channels.is_enabled(&c.id),
                    bot: c.bot.clone().unwrap_or_default(),
                    outlet: c.outlet.clone().unwrap_or_default(),
                    settings_json: config.to_string(),
                    updated_at: ts(updated_at),
                }
            })
            .collect();
        channels.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(channels)
    }

    async fn member_row(&self, request: &api::FindMemberRequest) -> Result<api::Member, Status> {
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
        let row = sqlx::query(
            "SELECT m.id, m.channel_id, m.external_id, m.profile, m.created_at, m.updated_at,
                    c.id AS conversation_id, c.state
             FROM members m
             LEFT JOIN conversations c ON c.member_id = m.id AND c.state <> 'closed'
             WHERE m.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no member {id}")))?;
        Ok(api::Member {
            id: id.to_string(),
            channel: row.get("channel_id"),
            external_id: row.get("external_id"),
            profile_json: row.get::<Value, _>("profile").to_string(),
            state: row
                .get::<Option<String>, _>("state")
                .unwrap_or_else(|| "bot".into()),
            conversation_id: row
                .get::<Option<Uuid>, _>("conversation_id")
                .map(|c| c.to_string())
                .unwrap_or_default(),
            created_at: ts(row.get("created_at")),
            updated_at: ts(row.get("updated_at")),
        })
    }

    /// Publishes an operator's event into the member's lane.
    async fn publish(
        &self,
        member: &api::Member,
        conversation: Option<&str>,
        body: Body,
    ) -> Result<Response<api::Accepted>, Status> {
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
        Ok(Response::new(api::Accepted {
            event_id: envelope.event_id,
        }))
    }

    /// The event a trace starts from: Handoff's event id (a UUID, found by index), else a
    /// platform's message id (searched in the transcript).
    async fn trace_root(&self, id: &str) -> Result<String, Status> {
        let known: Option<String> = match id.parse::<Uuid>() {
            Ok(uuid) => sqlx::query_scalar(
                "SELECT event_id FROM message_steps WHERE event_id = $1
                 UNION ALL
                 SELECT event_id::text FROM messages WHERE event_id = $2
                 LIMIT 1",
            )
            .bind(id)
            .bind(uuid),
            Err(_) => sqlx::query_scalar(
                "SELECT event_id::text FROM messages WHERE source_message_id = $1
                 ORDER BY id DESC LIMIT 1",
            )
            .bind(id),
        }
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?;
        known.ok_or_else(|| {
            Status::not_found(format!(
                "no message `{id}` (an event id from a webhook's answer, or the platform's message id)"
            ))
        })
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_channels(
        &self,
        _request: Request<api::ListChannelsRequest>,
    ) -> Result<Response<api::ListChannelsResponse>, Status> {
        Ok(Response::new(api::ListChannelsResponse {
            channels: self.channel_rows(None).await?,
        }))
    }

    async fn get_channel(
        &self,
        request: Request<api::GetChannelRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        let id = request.into_inner().id;
        self.channel_row(&id)
            .await?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no channel `{id}`")))
    }

    async fn apply_channels(
        &self,
        request: Request<api::ApplyChannelsRequest>,
    ) -> Result<Response<api::ApplyChannelsResponse>, Status> {
        crate::catalog::apply(
            &self.pool,
            &self.catalog,
            self.store.as_ref(),
            request.into_inner(),
        )
        .await
    }

    async fn disable_channel(
        &self,
        request: Request<api::SetChannelEnabledRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.set_enabled(request.into_inner().id, false).await
    }

    async fn enable_channel(
        &self,
        request: Request<api::SetChannelEnabledRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.set_enabled(request.into_inner().id, true).await
    }

    async fn find_member(
        &self,
        request: Request<api::FindMemberRequest>,
    ) -> Result<Response<api::Member>, Status> {
        self.member_row(request.get_ref()).await.map(Response::new)
    }

    async fn list_conversations(
        &self,
        request: Request<api::ListConversationsRequest>,
    ) -> Result<Response<api::ListConversationsResponse>, Status> {
        let request = request.into_inner();
        if !["", "pending", "live", "closed"].contains(&request.state.as_str()) {
            return Err(Status::invalid_argument(format!(
                "state: `{}` is not pending, live or closed",
                request.state
            )));
        }
        let limit = if request.limit <= 0 {
            100
        } else {
            request.limit.min(1000)
        };
        let rows = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS}
             FROM conversations c JOIN members m ON m.id = c.member_id
             WHERE (($1 = '' AND c.state <> 'closed') OR c.state = $1)
               AND ($2 = '' OR m.channel_id = $2 OR c.outlet_channel_id = $2)
             ORDER BY c.opened_at DESC LIMIT $3"
        ))
        .bind(&request.state)
        .bind(&request.channel)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        Ok(Response::new(api::ListConversationsResponse {
            conversations: rows.iter().map(conversation).collect(),
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<api::GetConversationRequest>,
    ) -> Result<Response<api::ConversationDetail>, Status> {
        let id = uuid_arg("id", &request.into_inner().id)?;
        let row = sqlx::query(&format!(
            "SELECT {CONVERSATION_COLUMNS}
             FROM conversations c JOIN members m ON m.id = c.member_id WHERE c.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| Status::not_found(format!("no conversation {id}")))?;
        let lines = sqlx::query(
            "SELECT id, created_at, author, channel_id, content, event_id, source_message_id
             FROM messages WHERE conversation_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        Ok(Response::new(api::ConversationDetail {
            conversation: Some(conversation(&row)),
            transcript: lines
                .iter()
                .map(|l| api::TranscriptLine {
                    seq: l.get("id"),
                    at: ts(l.get("created_at")),
                    author: l.get("author"),
                    channel: l.get("channel_id"),
                    text: line_text(&l.get::<Value, _>("content")),
                    event_id: l.get::<Uuid, _>("event_id").to_string(),
                    source_message_id: l
                        .get::<Option<String>, _>("source_message_id")
                        .unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn request_handoff(
        &self,
        request: Request<api::RequestHandoffRequest>,
    ) -> Result<Response<api::Accepted>, Status> {
        let request = request.into_inner();
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

    async fn close_conversation(
        &self,
        request: Request<api::CloseConversationRequest>,
    ) -> Result<Response<api::Accepted>, Status> {
        let request = request.into_inner();
        let id = uuid_arg("id", &request.id)?;
        let row = sqlx::query("SELECT member_id, state FROM conversations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no conversation {id}")))?;
        if row.get::<String, _>("state") == "closed" {
            return Err(Status::failed_precondition(format!(
                "conversation {id} is already closed"
            )));
        }
        let member = self
            .member_row(&api::FindMemberRequest {
                id: row.get::<Uuid, _>("member_id").to_string(),
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

    async fn trace_message(
        &self,
        request: Request<api::TraceMessageRequest>,
    ) -> Result<Response<api::MessageTrace>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument("id: give a message id"));
        }
        let root = self.trace_root(&id).await?;
        // The message, what it caused (commands, a bot's answer, that answer's delivery),
        // and so on: causation links them.
        let rows = sqlx::query(
            "WITH RECURSIVE chain(event_id, depth) AS (
                 SELECT $1::text, 0
               UNION
                 SELECT s.event_id, chain.depth + 1
                 FROM message_steps s JOIN chain ON s.causation_id = chain.event_id
                 WHERE chain.depth < 8
             )
             SELECT s.event_id, s.member_id, s.kind, s.service, s.channel, s.outcome,
                    s.detail, s.attempt, s.accepted_at, s.at
             FROM message_steps s
             WHERE s.event_id IN (SELECT event_id FROM chain)
             ORDER BY s.at, s.id",
        )
        .bind(&root)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        let mut trace = api::MessageTrace {
            event_id: root.clone(),
            ..Default::default()
        };
        let mut seen_accepted = std::collections::HashSet::new();
        for r in &rows {
            let event_id: String = r.get("event_id");
            let kind: String = r.get("kind");
            let channel: String = r.get("channel");
            if event_id == root {
                trace.member_id = r.get("member_id");
                trace.kind.clone_from(&kind);
            }
            if seen_accepted.insert(event_id.clone()) {
                let what = if event_id == root {
                    "accepted"
                } else {
                    "issued"
                };
                trace.steps.push(api::TraceStep {
                    at: ts(r.get("accepted_at")),
                    step: what.into(),
                    service: String::new(),
                    detail: format!("{kind} on `{channel}` ({event_id})"),
                });
            }
            let outcome: String = r.get("outcome");
            let service: String = r.get("service");
            let step = match (service.as_str(), outcome.as_str()) {
                ("router", "done") => "routed",
                (_, "done") => "delivered",
                (_, "retry") => "retrying",
                (_, "parked") => "parked",
                (_, other) => other,
            };
            let detail: String = r.get("detail");
            let attempt: i32 = r.get("attempt");
            trace.steps.push(api::TraceStep {
                at: ts(r.get("at")),
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
        Ok(Response::new(trace))
    }

    async fn list_dead_letters(
        &self,
        request: Request<api::ListDeadLettersRequest>,
    ) -> Result<Response<api::ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let limit = if request.limit <= 0 {
            100
        } else {
            request.limit
        };
        let letters = dead_letters::list(&self.pool, request.all, limit)
            .await
            .map_err(internal)?;
        Ok(Response::new(api::ListDeadLettersResponse {
            dead_letters: letters,
        }))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<api::DeadLetterRequest>,
    ) -> Result<Response<api::DeadLetter>, Status> {
        let id = request.into_inner().id;
        dead_letters::replay(&self.pool, &self.bus, id)
            .await
            .map_err(dead_letter_status)?;
        self.one_dead_letter(id).await
    }

    async fn drop_dead_letter(
        &self,
        request: Request<api::DeadLetterRequest>,
    ) -> Result<Response<api::DeadLetter>, Status> {
        let id = request.into_inner().id;
        dead_letters::drop(&self.pool, id)
            .await
            .map_err(dead_letter_status)?;
        self.one_dead_letter(id).await
    }
}

impl AdminService {
    async fn set_enabled(
        &self,
        id: String,
        enabled: bool,
    ) -> Result<Response<api::Channel>, Status> {
        crate::catalog::set_enabled(&self.pool, &self.catalog, self.store.as_ref(), &id, enabled)
            .await?;
        self.get_channel(Request::new(api::GetChannelRequest { id }))
            .await
    }

    async fn one_dead_letter(&self, id: i64) -> Result<Response<api::DeadLetter>, Status> {
        dead_letters::get(&self.pool, id)
            .await
            .map_err(internal)?
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("no dead letter {id}")))
    }
}

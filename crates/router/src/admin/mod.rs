//! The admin API (`proto/handoff/admin/v1`): gRPC on its own port, every call behind the
//! configured bearer token, plus gRPC health and server reflection.
//!
//! Reads answer from Postgres. Changes to a conversation (hand off, close) are published
//! as events into the member's partition, so they are applied by the same state machine,
//! in order with the member's own messages, and appear in the transcript like them.

mod channels;
mod conversations;
mod dead_letters;
mod members;
mod traces;

use handoff_bus::Bus;
use handoff_platforms::Catalog;
use handoff_proto::admin::admin_server::{Admin, AdminServer};
use handoff_proto::admin::{self as api};
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub(crate) struct AdminService {
    pub pool: PgPool,
    pub bus: Bus,
    pub catalog: Catalog,
    /// The shared channels catalog, when a key is configured.
    pub store: Option<handoff_platforms::catalog_store::CatalogStore>,
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

/// A failure of the router's own parts (Postgres, NATS): logged with its detail, answered
/// without it (a database error names tables, constraints and values).
fn internal(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "admin call failed");
    Status::unavailable("the router could not complete this call; try again (its log says why)")
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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_channels(
        &self,
        request: Request<api::ListChannelsRequest>,
    ) -> Result<Response<api::ListChannelsResponse>, Status> {
        self.list_channels_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_channel(
        &self,
        request: Request<api::GetChannelRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.get_channel_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn apply_channels(
        &self,
        request: Request<api::ApplyChannelsRequest>,
    ) -> Result<Response<api::ApplyChannelsResponse>, Status> {
        self.apply_channels_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn disable_channel(
        &self,
        request: Request<api::SetChannelEnabledRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.disable_channel_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn enable_channel(
        &self,
        request: Request<api::SetChannelEnabledRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.enable_channel_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn set_availability(
        &self,
        request: Request<api::SetAvailabilityRequest>,
    ) -> Result<Response<api::Channel>, Status> {
        self.set_availability_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn find_member(
        &self,
        request: Request<api::FindMemberRequest>,
    ) -> Result<Response<api::Member>, Status> {
        self.find_member_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_conversations(
        &self,
        request: Request<api::ListConversationsRequest>,
    ) -> Result<Response<api::ListConversationsResponse>, Status> {
        self.list_conversations_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_conversation(
        &self,
        request: Request<api::GetConversationRequest>,
    ) -> Result<Response<api::ConversationDetail>, Status> {
        self.get_conversation_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn request_handoff(
        &self,
        request: Request<api::RequestHandoffRequest>,
    ) -> Result<Response<api::Accepted>, Status> {
        self.request_handoff_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn close_conversation(
        &self,
        request: Request<api::CloseConversationRequest>,
    ) -> Result<Response<api::Accepted>, Status> {
        self.close_conversation_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn trace_message(
        &self,
        request: Request<api::TraceMessageRequest>,
    ) -> Result<Response<api::MessageTrace>, Status> {
        self.trace_message_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_dead_letters(
        &self,
        request: Request<api::ListDeadLettersRequest>,
    ) -> Result<Response<api::ListDeadLettersResponse>, Status> {
        self.list_dead_letters_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn replay_dead_letter(
        &self,
        request: Request<api::DeadLetterRequest>,
    ) -> Result<Response<api::DeadLetter>, Status> {
        self.replay_dead_letter_(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn drop_dead_letter(
        &self,
        request: Request<api::DeadLetterRequest>,
    ) -> Result<Response<api::DeadLetter>, Status> {
        self.drop_dead_letter_(request.into_inner())
            .await
            .map(Response::new)
    }
}

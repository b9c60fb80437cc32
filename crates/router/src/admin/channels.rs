//! Channels: the catalog in force, with when Postgres saw each last change; apply, enable
//! and disable go through the shared catalog (`crate::catalog`).

use handoff_proto::admin::{self as api};
use tonic::Status;

use super::{AdminService, internal, ts};
use crate::store;

impl AdminService {
    pub(super) async fn list_channels_(
        &self,
        _request: api::ListChannelsRequest,
    ) -> Result<api::ListChannelsResponse, Status> {
        Ok(api::ListChannelsResponse {
            channels: self.channel_rows(None).await?,
        })
    }

    pub(super) async fn get_channel_(
        &self,
        request: api::GetChannelRequest,
    ) -> Result<api::Channel, Status> {
        let id = request.id;
        self.channel_rows(Some(&id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found(format!("no channel `{id}`")))
    }

    pub(super) async fn apply_channels_(
        &self,
        request: api::ApplyChannelsRequest,
    ) -> Result<api::ApplyChannelsResponse, Status> {
        crate::catalog::apply(&self.pool, &self.catalog, self.store.as_ref(), request)
            .await
            .map(tonic::Response::into_inner)
    }

    pub(super) async fn disable_channel_(
        &self,
        request: api::SetChannelEnabledRequest,
    ) -> Result<api::Channel, Status> {
        self.set_enabled(request.id, false).await
    }

    pub(super) async fn enable_channel_(
        &self,
        request: api::SetChannelEnabledRequest,
    ) -> Result<api::Channel, Status> {
        self.set_enabled(request.id, true).await
    }

    pub(super) async fn set_availability_(
        &self,
        request: api::SetAvailabilityRequest,
    ) -> Result<api::Channel, Status> {
        crate::catalog::set_available(
            &self.pool,
            &self.catalog,
            self.store.as_ref(),
            &request.id,
            request.available,
        )
        .await?;
        self.get_channel_(api::GetChannelRequest { id: request.id })
            .await
    }

    async fn set_enabled(&self, id: String, enabled: bool) -> Result<api::Channel, Status> {
        crate::catalog::set_enabled(&self.pool, &self.catalog, self.store.as_ref(), &id, enabled)
            .await?;
        self.get_channel_(api::GetChannelRequest { id }).await
    }

    /// The channels in force (the catalog), with when Postgres saw each last change.
    async fn channel_rows(&self, id: Option<&str>) -> Result<Vec<api::Channel>, Status> {
        let stored = store::channels::stored(&self.pool)
            .await
            .map_err(internal)?;
        let snapshot = self.catalog.load();
        let mut channels: Vec<api::Channel> = snapshot
            .channels
            .iter()
            .filter(|c| id.is_none_or(|id| c.id == id))
            .map(|c| {
                let (config, updated_at) = stored
                    .get(&c.id)
                    .map(|(config, at)| (config.clone(), Some(*at)))
                    .unwrap_or_default();
                api::Channel {
                    id: c.id.clone(),
                    org: c.org.clone(),
                    platform: c.platform.as_str().into(),
                    role: c.role.as_str().into(),
                    enabled: snapshot.channels.is_enabled(&c.id),
                    available: snapshot.channels.is_available(&c.id),
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
}

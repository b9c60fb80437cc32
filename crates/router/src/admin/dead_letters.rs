//! Dead letters: list, replay, drop (`crate::dead_letters` does the work).

use handoff_proto::admin::{self as api};
use tonic::Status;

use super::{AdminService, internal};
use crate::dead_letters::{self, DeadLetterError};

impl AdminService {
    pub(super) async fn list_dead_letters_(
        &self,
        request: api::ListDeadLettersRequest,
    ) -> Result<api::ListDeadLettersResponse, Status> {
        let limit = if request.limit <= 0 {
            100
        } else {
            request.limit
        };
        let letters = dead_letters::list(&self.pool, request.all, limit)
            .await
            .map_err(internal)?;
        Ok(api::ListDeadLettersResponse {
            dead_letters: letters,
        })
    }

    pub(super) async fn replay_dead_letter_(
        &self,
        request: api::DeadLetterRequest,
    ) -> Result<api::DeadLetter, Status> {
        dead_letters::replay(&self.pool, &self.bus, request.id)
            .await
            .map_err(status)?;
        self.one(request.id).await
    }

    pub(super) async fn drop_dead_letter_(
        &self,
        request: api::DeadLetterRequest,
    ) -> Result<api::DeadLetter, Status> {
        dead_letters::drop(&self.pool, request.id)
            .await
            .map_err(status)?;
        self.one(request.id).await
    }

    async fn one(&self, id: i64) -> Result<api::DeadLetter, Status> {
        dead_letters::get(&self.pool, id)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no dead letter {id}")))
    }
}

fn status(e: DeadLetterError) -> Status {
    match e {
        DeadLetterError::NotFound(_) => Status::not_found(e.to_string()),
        DeadLetterError::NotParked(..) | DeadLetterError::Truncated(_) => {
            Status::failed_precondition(e.to_string())
        }
        other => internal(other),
    }
}

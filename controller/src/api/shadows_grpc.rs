//! `weft.v1.ShadowService`: shadow environments over gRPC, the same operations and errors
//! as REST ([`super::shadows_routes`]), and the shadows' events
//! ([`super::shadow_events`]) as a server stream. Wire types stop here.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::shadow_service_server::{ShadowService, ShadowServiceServer};
use weft_shadows::{CreateRequest, ShadowError, ShadowPolicy};

use super::grpc::required;
use super::shadow_events;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct ShadowApi {
    state: AppState,
}

impl ShadowApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    pub fn into_service(self) -> ShadowServiceServer<Self> {
        ShadowServiceServer::new(self)
    }
}

/// The REST mapping's gRPC twin: 422 -> INVALID_ARGUMENT (naming the field), 404 ->
/// NOT_FOUND, 409 -> ALREADY_EXISTS.
pub fn status(e: ShadowError) -> Status {
    match e {
        e @ ShadowError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        ShadowError::NotFound(m) => Status::not_found(m),
        ShadowError::Exists(m) => Status::already_exists(m),
        ShadowError::Internal(m) => Status::internal(m),
    }
}

fn missing(id: &str) -> Status {
    Status::not_found(format!(
        "shadow {id:?} does not exist; list the shadows with ListShadows"
    ))
}

fn policy(p: Option<&wire::ShadowPolicy>) -> ShadowPolicy {
    p.map(ShadowPolicy::from_wire).unwrap_or_default()
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::CloudEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ShadowService for ShadowApi {
    async fn create_shadow(
        &self,
        request: Request<wire::CreateShadowRequest>,
    ) -> Result<Response<wire::ShadowInfo>, Status> {
        let r = request.into_inner();
        let info = self
            .state
            .shadows
            .create(CreateRequest {
                policy: policy(r.policy.as_ref()),
                id: r.id,
                production: r.production,
                nodes: r.nodes,
                hosts: r.hosts,
                noise_baseline: r.noise_baseline,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn get_shadow(
        &self,
        request: Request<wire::GetShadowRequest>,
    ) -> Result<Response<wire::ShadowInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self.state.shadows.info(id).ok_or_else(|| missing(id))?;
        Ok(Response::new(info.to_wire()))
    }

    async fn list_shadows(
        &self,
        _request: Request<wire::ListShadowsRequest>,
    ) -> Result<Response<wire::ListShadowsResponse>, Status> {
        Ok(Response::new(wire::ListShadowsResponse {
            shadows: self
                .state
                .shadows
                .infos()
                .iter()
                .map(|i| i.to_wire())
                .collect(),
        }))
    }

    async fn update_shadow_policy(
        &self,
        request: Request<wire::UpdateShadowPolicyRequest>,
    ) -> Result<Response<wire::ShadowInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let Some(p) = r.policy.as_ref() else {
            return Err(Status::invalid_argument(
                "field `policy` must be given (it replaces the shadow's)",
            ));
        };
        let info = self
            .state
            .shadows
            .update_policy(id, ShadowPolicy::from_wire(p))
            .await
            .map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn run_synthetic_load(
        &self,
        request: Request<wire::RunSyntheticLoadRequest>,
    ) -> Result<Response<wire::ShadowInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self
            .state
            .shadows
            .synthetic(id, r.multiplier, r.duration_seconds)
            .await
            .map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn delete_shadow(
        &self,
        request: Request<wire::DeleteShadowRequest>,
    ) -> Result<Response<wire::ShadowInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self.state.shadows.delete(id).await.map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    type WatchShadowEventsStream = EventStream;

    async fn watch_shadow_events(
        &self,
        request: Request<wire::WatchShadowEventsRequest>,
    ) -> Result<Response<Self::WatchShadowEventsStream>, Status> {
        let shadow = Some(request.into_inner().shadow_id)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        let stream = shadow_events::subscribe(&self.state, shadow).map(|e| Ok(e.to_wire()));
        Ok(Response::new(Box::pin(stream)))
    }
}

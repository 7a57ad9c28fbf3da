//! `weft.v1.WeaveService`: weaves over gRPC, the same operations and errors as REST
//! ([`super::weaves_routes`]), and the weaves' events ([`super::weave_events`]) as a
//! server stream. Wire types stop here.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::weave_service_server::{WeaveService, WeaveServiceServer};
use weft_weaves::WeaveError;

use super::grpc::required;
use super::weave_events;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct WeaveApi {
    state: AppState,
}

impl WeaveApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    pub fn into_service(self) -> WeaveServiceServer<Self> {
        WeaveServiceServer::new(self)
    }
}

/// The REST mapping's gRPC twin: 422 -> INVALID_ARGUMENT (naming the field), 404 ->
/// NOT_FOUND, 409 -> FAILED_PRECONDITION, 504 -> DEADLINE_EXCEEDED.
pub fn status(e: WeaveError) -> Status {
    match e {
        e @ WeaveError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        WeaveError::NotFound(m) => Status::not_found(m),
        WeaveError::Conflict(m) => Status::failed_precondition(m),
        WeaveError::Timeout(m) => Status::deadline_exceeded(m),
        WeaveError::Internal(m) => Status::internal(m),
    }
}

fn missing(id: &str) -> Status {
    Status::not_found(format!(
        "weave {id:?} does not exist; list the weaves with ListWeaves"
    ))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::CloudEvent, Status>> + Send>>;

#[tonic::async_trait]
impl WeaveService for WeaveApi {
    async fn create_weave(
        &self,
        request: Request<wire::CreateWeaveRequest>,
    ) -> Result<Response<wire::WeaveInfo>, Status> {
        let r = request.into_inner();
        let at = (r.at_unix_ns != 0).then_some(r.at_unix_ns);
        let id = Some(r.id).filter(|i| !i.trim().is_empty());
        let info = self
            .state
            .weaves
            .create(r.environment.trim(), at, id)
            .await
            .map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn get_weave(
        &self,
        request: Request<wire::GetWeaveRequest>,
    ) -> Result<Response<wire::WeaveInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self.state.weaves.info(id).ok_or_else(|| missing(id))?;
        Ok(Response::new(info.to_wire()))
    }

    async fn list_weaves(
        &self,
        request: Request<wire::ListWeavesRequest>,
    ) -> Result<Response<wire::ListWeavesResponse>, Status> {
        let r = request.into_inner();
        let env = Some(r.environment.trim()).filter(|e| !e.is_empty());
        Ok(Response::new(wire::ListWeavesResponse {
            weaves: self
                .state
                .weaves
                .infos(env)
                .iter()
                .map(|i| i.to_wire())
                .collect(),
        }))
    }

    async fn delete_weave(
        &self,
        request: Request<wire::DeleteWeaveRequest>,
    ) -> Result<Response<wire::WeaveInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self.state.weaves.delete(id).await.map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn route_traffic(
        &self,
        request: Request<wire::RouteTrafficRequest>,
    ) -> Result<Response<wire::WeaveInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let node = Some(r.node.as_str()).filter(|n| !n.trim().is_empty());
        if r.header.is_empty() && !r.header_value.is_empty() {
            return Err(Status::invalid_argument(
                "header_value: a header value without a header: set header too",
            ));
        }
        let by_request = (!r.header.is_empty()).then(|| weft_weaves::RequestMatch {
            header: r.header.clone(),
            value: r.header_value.clone(),
        });
        let info = self
            .state
            .weaves
            .route(id, r.target_port, node, by_request.as_ref(), r.remove)
            .await
            .map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn activate_weave(
        &self,
        request: Request<wire::ActivateWeaveRequest>,
    ) -> Result<Response<wire::WeaveInfo>, Status> {
        let r = request.into_inner();
        let id = required("id", &r.id)?;
        let info = self.state.weaves.activate(id).await.map_err(status)?;
        Ok(Response::new(info.to_wire()))
    }

    async fn sync_volumes(
        &self,
        request: Request<wire::SyncVolumesRequest>,
    ) -> Result<Response<wire::SyncVolumesResponse>, Status> {
        let r = request.into_inner();
        let source = required("source", &r.source)?;
        let destination = required("destination", &r.destination)?;
        let volume = required("volume", &r.volume)?;
        let result = self
            .state
            .weaves
            .sync(source, destination, volume)
            .await
            .map_err(status)?;
        Ok(Response::new(result.to_wire()))
    }

    type WatchWeaveEventsStream = EventStream;

    async fn watch_weave_events(
        &self,
        request: Request<wire::WatchWeaveEventsRequest>,
    ) -> Result<Response<Self::WatchWeaveEventsStream>, Status> {
        let id = Some(request.into_inner().id)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        let stream =
            weave_events::subscribe(&self.state, id).map(|e| Ok(weave_events::to_wire(&e)));
        Ok(Response::new(Box::pin(stream)))
    }
}

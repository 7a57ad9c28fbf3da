//! `weft.v1.ShardService`: the shard manager over gRPC, the same operations as REST.
//! Wire types stop here.

use std::net::IpAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::shard_service_server::{ShardService, ShardServiceServer};

use super::grpc::required;
use super::shards_routes::{ListQuery, list_page, parse_create};
use crate::state::AppState;
use weft_shards::{
    Allocation, Deallocation, Family, Migration, Shard, ShardError, ShardManager, ShardStatus,
};

#[derive(Debug, Clone)]
pub struct ShardApi {
    state: AppState,
}

impl ShardApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    pub fn into_service(self) -> ShardServiceServer<Self> {
        ShardServiceServer::new(self)
    }

    fn shards(&self) -> &ShardManager {
        &self.state.shards
    }
}

fn status(e: ShardError) -> Status {
    match e {
        e @ ShardError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        ShardError::NotFound(m) => Status::not_found(m),
        ShardError::Conflict(m) => Status::failed_precondition(m),
        ShardError::Internal(m) => Status::internal(m),
    }
}

fn api_status(e: super::ApiError) -> Status {
    match e.status().as_u16() {
        400 => Status::invalid_argument(e.to_string()),
        404 => Status::not_found(e.to_string()),
        409 => Status::failed_precondition(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn family(value: &str) -> Result<Family, Status> {
    if value.is_empty() {
        return Ok(Family::Ipv4);
    }
    value
        .parse::<Family>()
        .map_err(|e| Status::invalid_argument(format!("field `family`: {e}")))
}

fn shard_info(s: &Shard) -> wire::ShardInfo {
    wire::ShardInfo {
        id: s.id.clone(),
        cidr: s.cidr.to_string(),
        family: s.family.as_str().into(),
        prefix_len: u32::from(s.cidr.prefix_len),
        size: u64::try_from(s.cidr.size()).unwrap_or(u64::MAX),
        gateway: s.gateway.to_string(),
        network_id: s.network_id.clone().unwrap_or_default(),
        status: s.status.as_str().into(),
        resource_count: s.resource_count,
        last_accessed_unix_ns: s.last_accessed_ns,
        created_unix_ns: s.created_ns,
    }
}

fn allocation(a: &Allocation) -> wire::AddressAllocation {
    wire::AddressAllocation {
        address: a.address.to_string(),
        cidr: a.cidr(),
        gateway: a.gateway().to_string(),
        shard_id: a.shard_id.clone(),
        network_id: a.network_id.clone(),
        workload: a.workload.clone(),
        host_id: a.host_id.clone(),
        seq: a.seq,
    }
}

fn migration_info(m: &Migration) -> wire::MigrationInfo {
    wire::MigrationInfo {
        id: m.id.clone(),
        shard_id: m.shard_id.clone(),
        network_id: m.network_id.clone(),
        state: format!("{:?}", m.state),
        error: m.error.clone(),
        created_unix_ns: m.created_ns,
        updated_unix_ns: m.updated_ns,
        finished_unix_ns: m.finished_ns,
        moves: m
            .moves
            .iter()
            .map(|mv| wire::WorkloadMoveInfo {
                workload: mv.workload.clone(),
                host_id: mv.host_id.clone(),
                old_address: mv.old_address.to_string(),
                old_seq: mv.old_seq,
                new_address: mv.new_address.map(|a| a.to_string()).unwrap_or_default(),
                new_seq: mv.new_seq,
                state: format!("{:?}", mv.state),
                error: mv.error.clone(),
                down_us: mv.down_us,
            })
            .collect(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::ShardEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ShardService for ShardApi {
    async fn create_shard(
        &self,
        request: Request<wire::CreateShardRequest>,
    ) -> Result<Response<wire::ShardInfo>, Status> {
        let r = request.into_inner();
        // One parser for both edges: the REST body's rules (size vs prefix_len, bounds).
        let mut body = serde_json::Map::new();
        if r.size != 0 {
            body.insert("size".into(), r.size.into());
        }
        if r.prefix_len != 0 {
            body.insert("prefix_len".into(), r.prefix_len.into());
        }
        if !r.family.is_empty() {
            body.insert("family".into(), r.family.into());
        }
        if !r.network_id.is_empty() {
            body.insert("network_id".into(), r.network_id.into());
        }
        body.insert("reserved".into(), r.reserved.into());
        let req = parse_create(&body).map_err(api_status)?;
        let shard = self.shards().create_shard(req).await.map_err(status)?;
        Ok(Response::new(shard_info(&shard)))
    }

    async fn get_shard(
        &self,
        request: Request<wire::GetShardRequest>,
    ) -> Result<Response<wire::ShardInfo>, Status> {
        let id = request.into_inner().shard_id;
        let shard = self
            .shards()
            .shard(required("shard_id", &id)?)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "shard {id} does not exist; list the shards with ListShards"
                ))
            })?;
        Ok(Response::new(shard_info(&shard)))
    }

    async fn list_shards(
        &self,
        request: Request<wire::ListShardsRequest>,
    ) -> Result<Response<wire::ListShardsResponse>, Status> {
        let r = request.into_inner();
        let status_filter = match r.status.as_str() {
            "" => None,
            s => Some(ShardStatus::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "field `status`: `{s}` is not Available, In-Use, Migrating or Reserved"
                ))
            })?),
        };
        let q = ListQuery {
            network_id: Some(r.network_id).filter(|n| !n.is_empty()),
            status: status_filter,
            family: if r.family.is_empty() {
                None
            } else {
                Some(family(&r.family)?)
            },
            limit: match r.page_size {
                0 => 100,
                n @ 1..=1000 => n as usize,
                n => {
                    return Err(Status::invalid_argument(format!(
                        "field `page_size`: {n} is more than 1000"
                    )));
                }
            },
            page_token: Some(r.page_token).filter(|t| !t.is_empty()),
        };
        let (page, next) = list_page(&self.state, &q);
        Ok(Response::new(wire::ListShardsResponse {
            shards: page.iter().map(shard_info).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn delete_shard(
        &self,
        request: Request<wire::DeleteShardRequest>,
    ) -> Result<Response<wire::ShardInfo>, Status> {
        let id = request.into_inner().shard_id;
        let shard = self
            .shards()
            .delete_shard(required("shard_id", &id)?)
            .await
            .map_err(status)?;
        Ok(Response::new(shard_info(&shard)))
    }

    async fn allocate_shard(
        &self,
        request: Request<wire::NetworkShardRequest>,
    ) -> Result<Response<wire::ShardInfo>, Status> {
        let r = request.into_inner();
        let shard = self
            .shards()
            .assign_shard(
                required("network_id", &r.network_id)?,
                required("shard_id", &r.shard_id)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(shard_info(&shard)))
    }

    async fn deallocate_shard(
        &self,
        request: Request<wire::NetworkShardRequest>,
    ) -> Result<Response<wire::DeallocateShardResponse>, Status> {
        let r = request.into_inner();
        let d = self
            .shards()
            .deallocate_shard(
                required("network_id", &r.network_id)?,
                required("shard_id", &r.shard_id)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(match d {
            Deallocation::Released(s) => wire::DeallocateShardResponse {
                shard: Some(shard_info(&s)),
                migration_id: String::new(),
            },
            Deallocation::Migrating(m) => {
                let shard = self.shards().shard(&m.shard_id).map(|s| shard_info(&s));
                wire::DeallocateShardResponse {
                    shard,
                    migration_id: m.id,
                }
            }
        }))
    }

    async fn get_migration(
        &self,
        request: Request<wire::GetMigrationRequest>,
    ) -> Result<Response<wire::MigrationInfo>, Status> {
        let id = request.into_inner().migration_id;
        let m = self
            .shards()
            .migration(required("migration_id", &id)?)
            .ok_or_else(|| Status::not_found(format!("migration {id} does not exist")))?;
        Ok(Response::new(migration_info(&m)))
    }

    async fn cancel_migration(
        &self,
        request: Request<wire::CancelMigrationRequest>,
    ) -> Result<Response<wire::MigrationInfo>, Status> {
        let id = request.into_inner().migration_id;
        let m = self
            .shards()
            .cancel_migration(required("migration_id", &id)?)
            .await
            .map_err(status)?;
        Ok(Response::new(migration_info(&m)))
    }

    async fn allocate_address(
        &self,
        request: Request<wire::AllocateAddressRequest>,
    ) -> Result<Response<wire::AddressAllocation>, Status> {
        let r = request.into_inner();
        let a = self
            .shards()
            .allocate_address(
                required("network_id", &r.network_id)?,
                required("workload", &r.workload)?,
                required("host_id", &r.host_id)?,
                family(&r.family)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(allocation(&a)))
    }

    async fn release_address(
        &self,
        request: Request<wire::ReleaseAddressRequest>,
    ) -> Result<Response<wire::AddressAllocation>, Status> {
        let r = request.into_inner();
        let address: IpAddr = r.address.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "field `address`: `{}` is not an IPv4 or IPv6 address",
                r.address
            ))
        })?;
        let a = self
            .shards()
            .release_address(required("network_id", &r.network_id)?, address, r.seq)
            .await
            .map_err(status)?;
        Ok(Response::new(allocation(&a)))
    }

    async fn release_workload(
        &self,
        request: Request<wire::ReleaseWorkloadRequest>,
    ) -> Result<Response<wire::ReleaseWorkloadResponse>, Status> {
        let r = request.into_inner();
        let released = self
            .shards()
            .release_workload(
                required("network_id", &r.network_id)?,
                required("workload", &r.workload)?,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(wire::ReleaseWorkloadResponse {
            released: released.iter().map(allocation).collect(),
        }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<wire::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let from = match request.into_inner().from_sequence {
            0 => self.shards().next_event(),
            n => n,
        };
        let stream = weft_shards::events::stream_from(self.shards().clone(), from).map(|e| {
            Ok(wire::ShardEvent {
                sequence: e.sequence,
                specversion: e.specversion.clone(),
                r#type: e.event_type.clone(),
                source: e.source.clone(),
                id: e.id.clone(),
                time: e.time.clone(),
                subject: e.subject.clone(),
                data_json: e.data.to_string(),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

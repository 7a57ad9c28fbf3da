//! `weft.v1.MirrorService`: TDL networks and their mirrors over gRPC, the same operations
//! and errors as REST ([`super::networks_routes`]), and the networks' events
//! ([`super::network_events`]) as a server stream. Wire types stop here.

use std::pin::Pin;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use weft_networks::{CreateRequest, MirrorRequest, NetworkError, NetworkRecord, Role, SourceDrift};
use weft_proto::v1 as wire;
use weft_proto::v1::mirror_service_server::{MirrorService, MirrorServiceServer};

use super::grpc::required;
use super::network_events;
use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct MirrorApi {
    state: AppState,
}

impl MirrorApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    pub fn into_service(self) -> MirrorServiceServer<Self> {
        MirrorServiceServer::new(self)
    }
}

/// The REST mapping's gRPC twin: 422 -> INVALID_ARGUMENT (the TDL's `file:line:col`
/// errors as they are), 404 -> NOT_FOUND, 409 -> ALREADY_EXISTS (the id is taken) or
/// FAILED_PRECONDITION.
pub fn status(e: NetworkError) -> Status {
    match e {
        NetworkError::Invalid(m) => Status::invalid_argument(m),
        NetworkError::NotFound(m) => Status::not_found(m),
        NetworkError::Exists(m) => Status::already_exists(m),
        NetworkError::Conflict(m) => Status::failed_precondition(m),
        NetworkError::Timeout(m) => Status::deadline_exceeded(m),
        NetworkError::Internal(m) => Status::internal(m),
    }
}

fn missing(id: &str) -> Status {
    Status::not_found(format!(
        "network {id:?} does not exist; list the networks with ListNetworks"
    ))
}

fn role(r: &NetworkRecord) -> (&'static str, String) {
    match &r.role {
        Role::Source => ("source", String::new()),
        Role::Mirror { source } => ("mirror", source.clone().unwrap_or_default()),
        Role::Weave { environment, .. } => ("weave", environment.clone()),
    }
}

/// A network without its definition and nodes (ListNetworks).
fn summary(r: &NetworkRecord) -> wire::NetworkInfo {
    let (role, source) = role(r);
    wire::NetworkInfo {
        network_id: r.id.clone(),
        role: role.into(),
        source,
        vni: r.vni,
        hosts: r.hosts(),
        node_count: u32::try_from(r.network.nodes.len()).unwrap_or(u32::MAX),
        revision: r.revision,
        created_unix_ns: r.created_unix_ns,
        nodes: Vec::new(),
        tdl: String::new(),
        synced_unix_ns: r.synced_unix_ns,
        source_drift: if r.role == Role::Source {
            r.source_drift.as_str().into()
        } else {
            String::new()
        },
    }
}

/// A network with its nodes (host, addresses, namespace) and canonical TDL.
fn detail(r: &NetworkRecord) -> wire::NetworkInfo {
    let mut info = summary(r);
    info.nodes = r
        .network
        .nodes
        .keys()
        .map(|n| wire::NetworkNodeInfo {
            name: n.clone(),
            host: r.placement.get(n).cloned().unwrap_or_default(),
            addresses: r
                .addresses
                .get(n)
                .map(|a| a.iter().map(|x| x.cidr.clone()).collect())
                .unwrap_or_default(),
            namespace: agent_common::netnames::netns(
                agent_common::netnames::DEFAULT_NETNS_PREFIX,
                &r.id,
                n,
            ),
        })
        .collect();
    info.tdl = weft_tdl::format(&r.network);
    info
}

fn status_info(s: &weft_networks::NetworkStatus) -> wire::NetworkStatusInfo {
    wire::NetworkStatusInfo {
        network_id: s.network.clone(),
        role: s.role.into(),
        source: s.source.clone().unwrap_or_default(),
        revision: s.revision,
        vni: s.vni,
        in_sync: s.in_sync,
        last_sync_unix_ns: s.last_sync_unix_ns,
        hosts: s
            .hosts
            .iter()
            .map(|h| wire::HostNetworkStatusInfo {
                host: h.host.clone(),
                desired_generation: h.desired_generation,
                applied_generation: h.applied_generation,
                applied: h.applied,
                resources: h
                    .resources
                    .iter()
                    .map(|r| wire::NetworkResourceStatus {
                        kind: r.kind.clone(),
                        key: r.key.clone(),
                        state: r.state.into(),
                        error: r.error.clone(),
                        observed: r.observed.clone(),
                    })
                    .collect(),
                drift: h
                    .drift
                    .iter()
                    .map(|d| wire::NetworkDrift {
                        kind: d.kind.clone(),
                        key: d.key.clone(),
                        what: d.what.clone(),
                        detected_unix_ns: d.detected_unix_ns,
                        repaired_unix_ns: d.repaired_unix_ns,
                        error: d.error.clone(),
                        kept: d.kept,
                    })
                    .collect(),
            })
            .collect(),
        source_drift: s.source_drift.unwrap_or_default().into(),
        hand_changes: s
            .hand_changes
            .iter()
            .map(|(node, h)| wire::NetworkHandChanges {
                node: node.clone(),
                host: h.host.clone(),
                changes: h.changes.clone(),
                addresses: h.addresses.clone().unwrap_or_default(),
                firewall: h
                    .firewall
                    .iter()
                    .flatten()
                    .map(weft_networks::HandRule::to_wire)
                    .collect(),
                foreign_rules: h.foreign_rules.clone(),
                adopted_unix_ns: h.adopted_unix_ns,
                addresses_changed: h.addresses.is_some(),
                firewall_changed: h.firewall.is_some(),
            })
            .collect(),
    }
}

fn event(e: &network_events::NetworkCloudEvent) -> wire::NetworkEvent {
    wire::NetworkEvent {
        specversion: "1.0".into(),
        r#type: e.event_type.into(),
        source: network_events::SOURCE.into(),
        id: e.id.clone(),
        time: agent_common::time::rfc3339(e.time_unix_ns),
        subject: e.subject.clone(),
        network_id: e.network.clone(),
        data_json: e.data.to_string(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::NetworkEvent, Status>> + Send>>;

#[tonic::async_trait]
impl MirrorService for MirrorApi {
    async fn create_network(
        &self,
        request: Request<wire::CreateNetworkRequest>,
    ) -> Result<Response<wire::NetworkInfo>, Status> {
        let r = request.into_inner();
        required("tdl", &r.tdl)?;
        let rec = self
            .state
            .networks
            .create(CreateRequest {
                tdl: r.tdl,
                file_name: r.file_name,
                hosts: r.hosts,
                source_drift: match r.source_drift.as_str() {
                    "" => SourceDrift::default(),
                    s => s.parse().map_err(|e: String| {
                        Status::invalid_argument(format!("field `source_drift`: {e}"))
                    })?,
                },
            })
            .await
            .map_err(status)?;
        Ok(Response::new(detail(&rec)))
    }

    async fn create_mirror(
        &self,
        request: Request<wire::CreateMirrorRequest>,
    ) -> Result<Response<wire::NetworkInfo>, Status> {
        let r = request.into_inner();
        let destination = required("destination", &r.destination)?.to_owned();
        let rec = self
            .state
            .networks
            .mirror(MirrorRequest {
                source: Some(r.source).filter(|s| !s.trim().is_empty()),
                tdl: Some(r.tdl).filter(|t| !t.trim().is_empty()),
                file_name: r.file_name,
                destination,
                hosts: r.hosts,
            })
            .await
            .map_err(status)?;
        Ok(Response::new(detail(&rec)))
    }

    async fn update_network(
        &self,
        request: Request<wire::UpdateNetworkRequest>,
    ) -> Result<Response<wire::UpdateNetworkResponse>, Status> {
        let r = request.into_inner();
        let id = required("network_id", &r.network_id)?;
        required("tdl", &r.tdl)?;
        let (rec, changes) = self
            .state
            .networks
            .update(id, &r.tdl, &r.file_name)
            .await
            .map_err(status)?;
        Ok(Response::new(wire::UpdateNetworkResponse {
            network: Some(detail(&rec)),
            changes,
        }))
    }

    async fn get_network(
        &self,
        request: Request<wire::GetNetworkRequest>,
    ) -> Result<Response<wire::NetworkInfo>, Status> {
        let r = request.into_inner();
        let id = required("network_id", &r.network_id)?;
        let rec = self.state.networks.get(id).ok_or_else(|| missing(id))?;
        Ok(Response::new(detail(&rec)))
    }

    async fn list_networks(
        &self,
        _request: Request<wire::ListNetworksRequest>,
    ) -> Result<Response<wire::ListNetworksResponse>, Status> {
        Ok(Response::new(wire::ListNetworksResponse {
            networks: self.state.networks.list().iter().map(summary).collect(),
        }))
    }

    async fn get_network_status(
        &self,
        request: Request<wire::GetNetworkRequest>,
    ) -> Result<Response<wire::NetworkStatusInfo>, Status> {
        let r = request.into_inner();
        let id = required("network_id", &r.network_id)?;
        let s = self.state.networks.status(id).ok_or_else(|| missing(id))?;
        Ok(Response::new(status_info(&s)))
    }

    async fn delete_network(
        &self,
        request: Request<wire::DeleteNetworkRequest>,
    ) -> Result<Response<wire::NetworkInfo>, Status> {
        let r = request.into_inner();
        let id = required("network_id", &r.network_id)?;
        let rec = self.state.networks.delete(id).await.map_err(status)?;
        Ok(Response::new(summary(&rec)))
    }

    type WatchNetworkEventsStream = EventStream;

    async fn watch_network_events(
        &self,
        request: Request<wire::WatchNetworkEventsRequest>,
    ) -> Result<Response<Self::WatchNetworkEventsStream>, Status> {
        let network = Some(request.into_inner().network_id)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty());
        let stream = network_events::subscribe(&self.state, network).map(|e| Ok(event(&e)));
        Ok(Response::new(Box::pin(stream)))
    }
}

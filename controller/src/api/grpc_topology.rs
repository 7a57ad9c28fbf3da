//! `weft.v1.TopologyService`: the REST topology and analytics functions over gRPC.

use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::topology_service_server::{TopologyService, TopologyServiceServer};
use weft_topology::analytics::{self, LatencyStat, TrafficDirection};
use weft_topology::history::{DiffThresholds, diff};
use weft_topology::time::{now_unix_ns, parse_time, rfc3339};
use weft_topology::topology::{DependencyView, ServiceView, TopologySnapshot, Window};

use crate::state::AppState;

#[derive(Debug, Clone)]
pub struct TopologyApi {
    state: AppState,
    /// Controller replicas on etcd: answers merge every replica's topology.
    replicas: Option<std::sync::Arc<crate::replicas::Replicas>>,
}

impl TopologyApi {
    pub fn new(state: AppState) -> Self {
        Self {
            state,
            replicas: None,
        }
    }

    /// Answers from the replicas' merged topology.
    pub fn with_replicas(
        self,
        replicas: Option<std::sync::Arc<crate::replicas::Replicas>>,
    ) -> Self {
        Self { replicas, ..self }
    }

    /// The state whose topology answers: this one's, or the replicas' merged.
    fn view(&self) -> Result<AppState, Status> {
        let Some(replicas) = &self.replicas else {
            return Ok(self.state.clone());
        };
        match tokio::task::block_in_place(|| replicas.merged(&self.state)) {
            Ok(Some((merged, _))) => Ok(merged),
            Ok(None) => Ok(self.state.clone()),
            Err(error) => Err(Status::unavailable(format!(
                "merging the replicas' topologies: {error}"
            ))),
        }
    }

    pub fn into_service(self) -> TopologyServiceServer<Self> {
        TopologyServiceServer::new(self)
    }

    /// A slot of the render class, as REST's topology views and analytics take
    /// (`--http-render-concurrency`, waiting `--http-queue-wait`): `UNAVAILABLE` without.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        let limits = &self.state.limits;
        let wait = limits.config.http_queue_wait;
        match tokio::time::timeout(wait, limits.render.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                limits.hit(crate::limits::Guard::HttpRender);
                Err(Status::unavailable(format!(
                    "{} topology views and analytics are being served and none finished within {wait:?} (--http-render-concurrency); try again",
                    limits.config.http_render_concurrency
                )))
            }
        }
    }

    fn snapshot(&self, query: Option<&wire::TopologyQuery>) -> Result<TopologySnapshot, Status> {
        let window = window(query)?;
        Ok(self.view()?.snapshot_in(&window))
    }
}

fn time(field: &str, text: &str, now: u64) -> Result<Option<u64>, Status> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    parse_time(text, now)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("field `{field}`: {e}")))
}

fn window(query: Option<&wire::TopologyQuery>) -> Result<Window, Status> {
    let Some(query) = query else {
        return Ok(Window::ALL);
    };
    let now = now_unix_ns();
    let since = time("since", &query.since, now)?;
    let until = time("until", &query.until, now)?;
    if let (Some(s), Some(u)) = (since, until)
        && u < s
    {
        return Err(Status::invalid_argument("field `until`: is before `since`"));
    }
    Ok(Window { since, until })
}

fn service(s: &ServiceView) -> wire::TopologyServiceInfo {
    wire::TopologyServiceInfo {
        name: s.name.clone(),
        service_type: s.service_type.as_str().to_owned(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| wire::TopologyEndpoint {
                address: e.address.clone(),
                port: u32::from(e.port),
                protocol: e.protocol.clone(),
            })
            .collect(),
        host: s.host.clone().unwrap_or_default(),
        first_seen: s.first_seen.clone().unwrap_or_default(),
        last_seen: s.last_seen.clone().unwrap_or_default(),
    }
}

fn dependency(d: &DependencyView) -> wire::TopologyDependencyInfo {
    wire::TopologyDependencyInfo {
        source: d.source.clone(),
        target: d.target.clone(),
        transport: d.transport.clone(),
        port: u32::from(d.port),
        protocol: d.protocol.clone(),
        requests: d.requests,
        errors: d.errors,
        bytes_sent: d.bytes_sent,
        bytes_received: d.bytes_received,
        avg_latency_ms: d.latency_ms.avg,
        p50_latency_ms: d.latency_ms.p50,
        p95_latency_ms: d.latency_ms.p95,
        p99_latency_ms: d.latency_ms.p99,
        first_seen: d.first_seen.clone().unwrap_or_default(),
        last_seen: d.last_seen.clone().unwrap_or_default(),
        flows: d.flows,
    }
}

fn edge(source: &str, target: &str, protocol: &str) -> wire::TopologyEdge {
    wire::TopologyEdge {
        source: source.to_owned(),
        target: target.to_owned(),
        protocol: protocol.to_owned(),
    }
}

#[tonic::async_trait]
impl TopologyService for TopologyApi {
    async fn get_topology(
        &self,
        request: Request<wire::TopologyQuery>,
    ) -> Result<Response<wire::TopologyMap>, Status> {
        let _slot = self.slot().await?;
        let snapshot = self.snapshot(Some(request.get_ref()))?;
        Ok(Response::new(wire::TopologyMap {
            generated_at: snapshot.generated_at.clone(),
            services: snapshot.services.iter().map(service).collect(),
            dependencies: snapshot.dependencies.iter().map(dependency).collect(),
        }))
    }

    async fn list_services(
        &self,
        request: Request<wire::TopologyQuery>,
    ) -> Result<Response<wire::TopologyServiceList>, Status> {
        let _slot = self.slot().await?;
        let snapshot = self.snapshot(Some(request.get_ref()))?;
        Ok(Response::new(wire::TopologyServiceList {
            services: snapshot.services.iter().map(service).collect(),
        }))
    }

    async fn get_dependencies(
        &self,
        request: Request<wire::GetDependenciesRequest>,
    ) -> Result<Response<wire::TopologyDependencyList>, Status> {
        let _slot = self.slot().await?;
        let request = request.into_inner();
        let direction: TrafficDirection = if request.direction.is_empty() {
            TrafficDirection::Both
        } else {
            request
                .direction
                .parse()
                .map_err(|e| Status::invalid_argument(format!("field `direction`: {e}")))?
        };
        if request.service.trim().is_empty() {
            return Err(Status::invalid_argument(
                "field `service`: must not be empty",
            ));
        }
        let snapshot = self.snapshot(request.window.as_ref())?;
        if snapshot.service(&request.service).is_none() {
            return Err(Status::not_found(format!(
                "no service `{}`",
                request.service
            )));
        }
        Ok(Response::new(wire::TopologyDependencyList {
            dependencies: analytics::dependencies_of(&snapshot, &request.service, direction)
                .into_iter()
                .map(dependency)
                .collect(),
        }))
    }

    async fn find_critical(
        &self,
        request: Request<wire::TopologyQuery>,
    ) -> Result<Response<wire::CriticalServiceList>, Status> {
        let _slot = self.slot().await?;
        let snapshot = self.snapshot(Some(request.get_ref()))?;
        Ok(Response::new(wire::CriticalServiceList {
            services: analytics::critical_services(&snapshot)
                .into_iter()
                .map(|c| wire::CriticalService {
                    service: c.service,
                    connections: c.connections as u64,
                    disconnects: c.disconnects as u64,
                    articulation_point: c.articulation_point,
                })
                .collect(),
        }))
    }

    async fn find_bottlenecks(
        &self,
        request: Request<wire::FindBottlenecksRequest>,
    ) -> Result<Response<wire::TopologyDependencyList>, Status> {
        let _slot = self.slot().await?;
        let request = request.into_inner();
        if !request.threshold_ms.is_finite() || request.threshold_ms < 0.0 {
            return Err(Status::invalid_argument(format!(
                "field `threshold_ms`: must be a number >= 0, got {}",
                request.threshold_ms
            )));
        }
        let stat: LatencyStat = if request.stat.is_empty() {
            LatencyStat::Avg
        } else {
            request
                .stat
                .parse()
                .map_err(|e| Status::invalid_argument(format!("field `stat`: {e}")))?
        };
        let snapshot = self.snapshot(request.window.as_ref())?;
        Ok(Response::new(wire::TopologyDependencyList {
            dependencies: analytics::bottlenecks(&snapshot, request.threshold_ms, stat)
                .into_iter()
                .map(dependency)
                .collect(),
        }))
    }

    async fn analyze_patterns(
        &self,
        request: Request<wire::TopologyQuery>,
    ) -> Result<Response<wire::TrafficPatterns>, Status> {
        let _slot = self.slot().await?;
        let p = analytics::analyze_traffic_patterns(&self.snapshot(Some(request.get_ref()))?);
        Ok(Response::new(wire::TrafficPatterns {
            total_observations: p.total_observations,
            total_bytes: p.total_bytes,
            total_errors: p.total_errors,
            avg_latency_ms: p.avg_latency_ms,
            p50_latency_ms: p.p50_latency_ms,
            p95_latency_ms: p.p95_latency_ms,
            p99_latency_ms: p.p99_latency_ms,
            error_rate: p.error_rate,
            protocol_distribution: p.protocol_distribution.into_iter().collect(),
            service_count: p.service_count as u64,
            dependency_count: p.dependency_count as u64,
        }))
    }

    async fn diff(
        &self,
        request: Request<wire::TopologyDiffRequest>,
    ) -> Result<Response<wire::TopologyDiff>, Status> {
        let _slot = self.slot().await?;
        let request = request.into_inner();
        let now = now_unix_ns();
        let from = time("from", &request.from, now)?
            .ok_or_else(|| Status::invalid_argument("field `from`: is required"))?;
        let to = time("to", &request.to, now)?;
        let history = &self.state.history;
        let internal = |e: weft_topology::history::HistoryError| Status::internal(e.to_string());
        let before = history
            .snapshot_at(from)
            .map_err(internal)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "field `from`: no snapshot was taken at or before {}",
                    rfc3339(from)
                ))
            })?;
        let after = match to {
            None => self.view()?.snapshot(),
            Some(to) => history.snapshot_at(to).map_err(internal)?.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "field `to`: no snapshot was taken at or before {}",
                    rfc3339(to)
                ))
            })?,
        };
        let d = diff(&before, &after, DiffThresholds::default());
        Ok(Response::new(wire::TopologyDiff {
            from: d.from,
            to: d.to,
            appeared: d
                .appeared
                .iter()
                .map(|e| edge(&e.source, &e.target, &e.protocol))
                .collect(),
            vanished: d
                .vanished
                .iter()
                .map(|e| edge(&e.source, &e.target, &e.protocol))
                .collect(),
            changed: d
                .changed
                .iter()
                .map(|c| wire::TopologyEdgeChange {
                    edge: Some(edge(&c.source, &c.target, &c.protocol)),
                    avg_latency_ms_before: c.avg_latency_ms.0,
                    avg_latency_ms_after: c.avg_latency_ms.1,
                    p99_latency_ms_before: c.p99_latency_ms.0,
                    p99_latency_ms_after: c.p99_latency_ms.1,
                    error_rate_before: c.error_rate.0,
                    error_rate_after: c.error_rate.1,
                    reasons: c.reasons.iter().map(|r| (*r).to_owned()).collect(),
                })
                .collect(),
        }))
    }
}

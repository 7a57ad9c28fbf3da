//! `weft.v1.AgentService`: agents register, then push batches of flow records.

use std::time::Instant;

use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_service_server::{AgentService, AgentServiceServer};

use weft_topology::topology::Ingested;

use crate::api::convert;
use crate::state::AppState;

/// The agent-facing gRPC service.
#[derive(Debug, Clone)]
pub struct AgentApi {
    state: AppState,
}

impl AgentApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    /// The tonic service to add to a server.
    pub fn into_service(self) -> AgentServiceServer<Self> {
        AgentServiceServer::new(self)
    }
}

/// `value` trimmed, or INVALID_ARGUMENT naming `field` when it is empty (every gRPC
/// service of the controller checks its request fields with it).
pub(crate) fn required<'a>(field: &str, value: &'a str) -> Result<&'a str, Status> {
    let value = value.trim();
    if value.is_empty() {
        Err(Status::invalid_argument(format!(
            "field `{field}` must not be empty"
        )))
    } else {
        Ok(value)
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn register(
        &self,
        request: Request<wire::RegisterRequest>,
    ) -> Result<Response<wire::RegisterResponse>, Status> {
        self.state
            .auth
            .config
            .agents
            .check(&request, request.get_ref().host_id.trim())?;
        let request = request.into_inner();
        let host_id = required("host_id", &request.host_id)?;
        let agent_instance = required("agent_instance", &request.agent_instance)?;
        let workloads = request
            .workloads
            .iter()
            .map(convert::workload_from_wire)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let underlay = match request.underlay_address.trim() {
            "" => None,
            a => Some(a.parse::<std::net::IpAddr>().map_err(|_| {
                Status::invalid_argument(format!("underlay_address {a:?} is not an IP address"))
            })?),
        };
        let workload_count = workloads.len();
        if self.state.hosts.set_underlay(host_id, underlay) {
            self.state.networks.republish();
            self.state.shadows.republish();
            self.state.weaves.republish();
        }
        let last_sequence =
            self.state
                .registry
                .register(host_id, agent_instance, workloads, Instant::now());
        tracing::info!(
            host_id,
            agent_instance,
            agent_version = %request.agent_version,
            workloads = workload_count,
            last_sequence,
            "agent registered"
        );
        let durable_sequence = self
            .state
            .registry
            .agent(host_id, agent_instance)
            .map_or(0, |agent| registry_durable(&self.state, &agent));
        Ok(Response::new(wire::RegisterResponse {
            controller_instance: self.state.controller_instance.to_string(),
            last_sequence,
            durable_sequence,
        }))
    }

    async fn push_flows(
        &self,
        request: Request<wire::FlowBatch>,
    ) -> Result<Response<wire::PushFlowsResponse>, Status> {
        self.state
            .auth
            .config
            .agents
            .check(&request, request.get_ref().host_id.trim())?;
        let batch = request.into_inner();
        let agent = self
            .state
            .registry
            .agent(&batch.host_id, &batch.agent_instance)
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        agent.touch(Instant::now());
        agent.set_dropped_records_total(batch.dropped_records_total);

        let metrics = &self.state.metrics;
        if batch.records.is_empty() {
            metrics.heartbeat();
            return Ok(Response::new(wire::PushFlowsResponse {
                accepted: 0,
                durable_sequence: registry_durable(&self.state, &agent),
            }));
        }

        let topology = &self.state.topology;
        let limits = &self.state.limits;
        let registry = self.state.registry.as_ref();
        let recent = self.state.flows.as_ref();
        // A checkpoint waits for this batch to be merged whole (or merges it after).
        let merging = registry.merging();
        let merged = agent.merge_batch(batch.sequence, || {
            // Records beyond the agent's rate are dropped (and counted) before any work.
            let records = u64::try_from(batch.records.len()).unwrap_or(u64::MAX);
            let admitted = limits.admit_records(&batch.host_id, records);
            let admitted = usize::try_from(admitted).unwrap_or(usize::MAX);
            let mut accepted = 0u64;
            let mut rejected = 0u64;
            let mut first_rejection: Option<(usize, &'static str, String)> = None;
            let mut reject = |index: usize, field: &'static str, error: String| {
                metrics.record_rejected();
                rejected += 1;
                first_rejection.get_or_insert((index, field, error));
            };
            for (index, record) in batch.records.iter().take(admitted).enumerate() {
                match convert::flow_from_wire(record) {
                    Ok(observation) => {
                        let ingested = topology.ingest(&observation, registry);
                        // Shown per flow as reported (the server side's record of a flow
                        // the client side also reported is its own row).
                        if !matches!(ingested, Ingested::BadTimestamp(_)) {
                            recent.record(&batch.host_id, &observation);
                        }
                        match ingested {
                            Ingested::Counted | Ingested::ServerSideDuplicate => accepted += 1,
                            Ingested::BadTimestamp(error) => {
                                reject(index, error.field, error.to_string());
                            }
                            // Counted by the topology per limit, and logged per interval.
                            Ingested::Full(_) => {}
                        }
                    }
                    Err(error) => reject(index, error.field(), error.to_string()),
                }
            }
            // One line per batch, not per record: a batch of bad records is one event.
            if let Some((index, field, error)) = first_rejection {
                tracing::warn!(
                    host_id = %batch.host_id,
                    sequence = batch.sequence,
                    rejected,
                    first_index = index,
                    field,
                    %error,
                    "skipping invalid flow records"
                );
            }
            if admitted < batch.records.len() {
                tracing::debug!(
                    host_id = %batch.host_id,
                    sequence = batch.sequence,
                    dropped = batch.records.len() - admitted,
                    rate = limits.config.agent_record_rate,
                    "records over the agent's rate dropped"
                );
            }
            accepted
        });
        drop(merging);
        let accepted = match merged {
            Some(accepted) => {
                metrics.batch_merged();
                accepted
            }
            None => {
                metrics.batch_duplicate();
                tracing::debug!(
                    host_id = %batch.host_id,
                    sequence = batch.sequence,
                    last_sequence = agent.last_sequence(),
                    "ignoring batch already merged"
                );
                0
            }
        };
        Ok(Response::new(wire::PushFlowsResponse {
            accepted,
            durable_sequence: registry_durable(&self.state, &agent),
        }))
    }
}

/// What the agent may forget: its batches the controller holds durably.
fn registry_durable(state: &AppState, agent: &weft_topology::registry::Agent) -> u64 {
    state.registry.durable_sequence(agent)
}

//! `weft.v1.AgentControlService`: the desired-state stream to each agent and its reports.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_control_service_server::{AgentControlService, AgentControlServiceServer};

use super::{ControlHub, HostDesired, HostObserved, WorkloadObserved};

#[derive(Debug, Clone)]
pub struct ControlApi {
    hub: Arc<ControlHub>,
}

impl ControlApi {
    pub fn new(hub: Arc<ControlHub>) -> Self {
        Self { hub }
    }

    pub fn into_service(self) -> AgentControlServiceServer<Self> {
        AgentControlServiceServer::new(self)
    }
}

fn to_wire(d: &HostDesired) -> wire::DesiredState {
    wire::DesiredState {
        generation: d.generation,
        workloads: d
            .workloads
            .iter()
            .map(|(name, addrs)| wire::WorkloadDesired {
                workload: name.clone(),
                addresses: addrs
                    .iter()
                    .map(|a| wire::AddressAssignment {
                        cidr: a.cidr.clone(),
                        gateway: a.gateway.clone(),
                        shard_id: a.shard_id.clone(),
                        allocation_seq: a.allocation_seq,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn required(field: &str, value: &str) -> Result<String, Status> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Status::invalid_argument(format!("field `{field}` must not be empty")));
    }
    Ok(v.to_owned())
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<wire::DesiredState, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControlService for ControlApi {
    type WatchDesiredStateStream = DesiredStream;

    async fn watch_desired_state(
        &self,
        request: Request<wire::WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        let r = request.into_inner();
        let host = required("host_id", &r.host_id)?;
        tracing::info!(host_id = %host, instance = %r.agent_instance, "agent watches its desired state");
        let rx = self.hub.watch(&host);
        // The current state first, then each change (intermediate states may be skipped:
        // the state is level-triggered, only the latest matters).
        let stream = futures::stream::unfold((rx, true), |(mut rx, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let d = to_wire(&rx.borrow_and_update());
            Some((Ok(d), (rx, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_observed(
        &self,
        request: Request<wire::ObservedState>,
    ) -> Result<Response<wire::ReportObservedResponse>, Status> {
        let r = request.into_inner();
        let host = required("host_id", &r.host_id)?;
        let workloads = r
            .workloads
            .into_iter()
            .map(|w| {
                (
                    w.workload,
                    WorkloadObserved {
                        addresses: w.addresses,
                        link_up: w.link_up,
                        error: w.error,
                        readdress_down_us: w.readdress_down_us,
                    },
                )
            })
            .collect();
        self.hub.report(
            &host,
            HostObserved { applied_generation: r.applied_generation, workloads, reported_at: Some(Instant::now()) },
        );
        Ok(Response::new(wire::ReportObservedResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::AddressAssignment;
    use tokio_stream::StreamExt as _;
    use weft_proto::v1::agent_control_service_client::AgentControlServiceClient;

    #[tokio::test]
    async fn stream_delivers_current_state_then_changes_and_reports_arrive() {
        let hub = Arc::new(ControlHub::default());
        hub.set_workload("hv1", "web", vec![AddressAssignment {
            cidr: "198.18.128.5/22".into(),
            gateway: "198.18.128.1".into(),
            shard_id: "s1".into(),
            allocation_seq: 1,
        }]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = ControlApi::new(hub.clone()).into_service();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        let mut client = AgentControlServiceClient::connect(format!("http://{addr}")).await.unwrap();
        let mut stream = client
            .watch_desired_state(wire::WatchDesiredStateRequest { host_id: "hv1".into(), agent_instance: "i".into() })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(first.workloads[0].addresses[0].gateway, "198.18.128.1");
        hub.set_workload("hv1", "web", vec![]);
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!((second.generation, second.workloads.len()), (2, 0));

        client
            .report_observed(wire::ObservedState {
                host_id: "hv1".into(),
                agent_instance: "i".into(),
                applied_generation: 2,
                workloads: vec![wire::WorkloadObserved { workload: "web".into(), link_up: true, ..Default::default() }],
            })
            .await
            .unwrap();
        assert_eq!(hub.observed("hv1").applied_generation, 2);
        let err = client
            .watch_desired_state(wire::WatchDesiredStateRequest { host_id: " ".into(), agent_instance: "i".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}

//! A follower replica's answer to an agent's desired-state stream: `UNAVAILABLE`, naming
//! why, so that the agent takes its control stream to the next controller of its list
//! (the leader serves it) while its flow records stay with this one.

use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_control_service_server::{
    AgentControlService, AgentControlServiceServer,
};

/// What the agent looks for in the message to move on.
pub const FOLLOWER: &str = "follower replica";

#[derive(Debug, Clone, Copy, Default)]
pub struct FollowerControl;

impl FollowerControl {
    pub fn service() -> AgentControlServiceServer<Self> {
        AgentControlServiceServer::new(Self)
    }
}

fn refused() -> Status {
    Status::unavailable(format!(
        "this controller is a {FOLLOWER}: the leader serves desired state; try the next controller"
    ))
}

#[tonic::async_trait]
impl AgentControlService for FollowerControl {
    type WatchDesiredStateStream =
        tokio_stream::wrappers::ReceiverStream<Result<wire::DesiredState, Status>>;

    async fn watch_desired_state(
        &self,
        _: Request<wire::WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        Err(refused())
    }

    async fn report_observed(
        &self,
        _: Request<wire::ObservedState>,
    ) -> Result<Response<wire::ReportObservedResponse>, Status> {
        Err(refused())
    }
}

//! `weft.v1.AgentControlService`: the desired-state stream to each agent and its reports.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tonic::{Request, Response, Status};
use weft_proto::v1 as wire;
use weft_proto::v1::agent_control_service_server::{
    AgentControlService, AgentControlServiceServer,
};

use super::{
    ControlHub, DriftRepaired, HostDesired, HostObserved, ResourceKey, ResourceObserved,
    ResourceStatus,
};

/// Decides whether a caller may speak for a host, given the leaf certificate (DER) it
/// presented, if any; the controller binds it to mutual TLS. The error is returned as is.
pub type HostCheck = Arc<dyn Fn(Option<&[u8]>, &str) -> Result<(), Status> + Send + Sync>;

#[derive(Clone)]
pub struct ControlApi {
    hub: Arc<ControlHub>,
    host_check: HostCheck,
}

impl std::fmt::Debug for ControlApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlApi")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

impl ControlApi {
    /// A service that lets any caller speak for any host (tests, `--insecure`); see
    /// [`with_host_check`](Self::with_host_check).
    pub fn new(hub: Arc<ControlHub>) -> Self {
        Self {
            hub,
            host_check: Arc::new(|_, _| Ok(())),
        }
    }

    /// Every request is checked with `check` against the host id it names.
    pub fn with_host_check(self, check: HostCheck) -> Self {
        Self {
            host_check: check,
            ..self
        }
    }

    fn check<T>(&self, request: &Request<T>, host: &str) -> Result<(), Status> {
        let certs = request.peer_certs();
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        (self.host_check)(leaf, host)
    }

    pub fn into_service(self) -> AgentControlServiceServer<Self> {
        AgentControlServiceServer::new(self)
    }
}

fn to_wire(d: &HostDesired) -> wire::DesiredState {
    wire::DesiredState {
        controller_epoch: d.epoch,
        generation: d.generation,
        resources: d
            .resources
            .iter()
            .map(|(rk, r)| wire::Resource {
                kind: rk.kind.clone(),
                key: rk.key.clone(),
                generation: r.generation,
                spec: Some(r.spec.clone()),
            })
            .collect(),
    }
}

fn required(field: &str, value: &str) -> Result<String, Status> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Status::invalid_argument(format!(
            "field `{field}` must not be empty"
        )));
    }
    Ok(v.to_owned())
}

/// One resource's report (wire types stop here).
fn resource_observed(
    i: usize,
    r: wire::ResourceObserved,
) -> Result<(ResourceKey, ResourceObserved), Status> {
    let kind = required(&format!("resources[{i}].kind"), &r.kind)?;
    let status = match wire::ResourceStatus::try_from(r.status) {
        Ok(wire::ResourceStatus::Applied) => ResourceStatus::Applied,
        Ok(wire::ResourceStatus::Failed) => ResourceStatus::Failed,
        Ok(wire::ResourceStatus::Unsupported) => ResourceStatus::Unsupported,
        Ok(wire::ResourceStatus::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "field `resources[{i}].status` ({}) must be APPLIED, FAILED or UNSUPPORTED",
                r.status
            )));
        }
    };
    let observed = ResourceObserved {
        generation: r.generation,
        status,
        error: r.error,
        measurements: r
            .measurements
            .into_iter()
            .filter(|(_, v)| v.is_finite())
            .collect(),
        observed: r.observed,
        hand_changes: match r.hand_changes {
            Some(h) => Some(checked_hand_changes(i, h)?),
            None => None,
        },
        shadow: match r.shadow {
            Some(s) if s.endpoints.len() > SHADOW_ENDPOINTS => {
                return Err(Status::invalid_argument(format!(
                    "field `resources[{i}].shadow.endpoints` has {} items; at most {SHADOW_ENDPOINTS}",
                    s.endpoints.len()
                )));
            }
            s => s,
        },
        snapshots: if r.snapshots.len() > VOLUME_ITEMS {
            return Err(Status::invalid_argument(format!(
                "field `resources[{i}].snapshots` has {} items; at most {VOLUME_ITEMS}",
                r.snapshots.len()
            )));
        } else {
            r.snapshots
        },
        syncs: if r.syncs.len() > VOLUME_ITEMS {
            return Err(Status::invalid_argument(format!(
                "field `resources[{i}].syncs` has {} items; at most {VOLUME_ITEMS}",
                r.syncs.len()
            )));
        } else {
            r.syncs
        },
    };
    Ok((ResourceKey { kind, key: r.key }, observed))
}

/// Most snapshots (and syncs) of one network node's report (`keep` plus the pinned ones:
/// tens; more is a broken or hostile agent).
const VOLUME_ITEMS: usize = 4096;

/// Most endpoints of one shadow sink's report (request kinds: a few hundred at most; the
/// agent folds the rest into one).
const SHADOW_ENDPOINTS: usize = 4096;

/// Most items of each list of a report's hand changes (a node has a few addresses and
/// tens of rules; more is a broken or hostile agent).
const HAND_CHANGE_ITEMS: usize = 1024;

fn checked_hand_changes(
    i: usize,
    h: wire::NodeHandChanges,
) -> Result<wire::NodeHandChanges, Status> {
    for (field, n) in [
        ("addresses", h.addresses.len()),
        ("firewall", h.firewall.len()),
        ("foreign_rules", h.foreign_rules.len()),
        ("changes", h.changes.len()),
    ] {
        if n > HAND_CHANGE_ITEMS {
            return Err(Status::invalid_argument(format!(
                "field `resources[{i}].hand_changes.{field}` has {n} items; at most {HAND_CHANGE_ITEMS}"
            )));
        }
    }
    for (j, a) in h.addresses.iter().enumerate() {
        let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "field `resources[{i}].hand_changes.addresses[{j}]` ({a:?}) is not an address/prefix"
            )));
        }
    }
    Ok(h)
}

type DesiredStream = Pin<Box<dyn Stream<Item = Result<wire::DesiredState, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControlService for ControlApi {
    type WatchDesiredStateStream = DesiredStream;

    async fn watch_desired_state(
        &self,
        request: Request<wire::WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        let host = required("host_id", &request.get_ref().host_id)?;
        self.check(&request, &host)?;
        let r = request.into_inner();
        tracing::info!(host_id = %host, instance = %r.agent_instance, kinds = ?r.kinds, "agent watches its desired state");
        self.hub.announce(&host, r.kinds);
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
        let host = required("host_id", &request.get_ref().host_id)?;
        self.check(&request, &host)?;
        let r = request.into_inner();
        let resources = r
            .resources
            .into_iter()
            .enumerate()
            .map(|(i, o)| resource_observed(i, o))
            .collect::<Result<_, _>>()?;
        let drift = r
            .drift
            .into_iter()
            .map(|d| DriftRepaired {
                host: host.clone(),
                resource: ResourceKey {
                    kind: d.kind,
                    key: d.key,
                },
                what: d.what,
                detected_unix_ns: d.detected_unix_ns,
                repaired_unix_ns: d.repaired_unix_ns,
                error: d.error,
                kept: d.kept,
            })
            .collect();
        let current = self.hub.report(
            &host,
            HostObserved {
                epoch: r.controller_epoch,
                applied_generation: r.applied_generation,
                resources,
                reported_at: Some(Instant::now()),
            },
        );
        // Drift is news whatever the epoch: something on the host changed.
        self.hub.drift(drift);
        if !current {
            return Err(Status::failed_precondition(format!(
                "the report answers controller epoch {}, this controller is at epoch {}: apply the current desired state and report again",
                r.controller_epoch,
                self.hub.epoch()
            )));
        }
        Ok(Response::new(wire::ReportObservedResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;
    use weft_proto::v1::agent_control_service_client::AgentControlServiceClient;
    use weft_proto::v1::resource::Spec;

    #[tokio::test]
    async fn stream_delivers_current_state_then_changes_and_reports_arrive() {
        let hub = Arc::new(ControlHub::with_epoch(7));
        let spec = Spec::WorkloadAddresses(wire::WorkloadAddresses {
            workload: "web".into(),
            addresses: vec![wire::AddressAssignment {
                cidr: "198.18.128.5/22".into(),
                gateway: "198.18.128.1".into(),
                shard_id: "s1".into(),
                allocation_seq: 1,
            }],
        });
        let g1 = hub.publish("hv1", "web", spec);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = ControlApi::new(hub.clone()).into_service();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        let mut client = AgentControlServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let watch = wire::WatchDesiredStateRequest {
            host_id: "hv1".into(),
            agent_instance: "i".into(),
            kinds: vec![crate::kinds::WORKLOAD_ADDRESSES.into()],
        };
        let mut stream = client
            .watch_desired_state(watch)
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.controller_epoch, first.generation), (7, g1));
        assert_eq!(first.resources[0].kind, "workload-addresses");
        assert_eq!(first.resources[0].generation, g1);
        let Some(Spec::WorkloadAddresses(w)) = &first.resources[0].spec else {
            panic!("{first:?}")
        };
        assert_eq!(w.addresses[0].gateway, "198.18.128.1");
        assert_eq!(hub.kinds("hv1"), vec!["workload-addresses".to_owned()]);
        let g2 = hub.withdraw("hv1", "workload-addresses", "web");
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!((second.generation, second.resources.len()), (g2, 0));

        let report = |epoch: u64, status: i32| wire::ObservedState {
            host_id: "hv1".into(),
            agent_instance: "i".into(),
            controller_epoch: epoch,
            applied_generation: g2,
            resources: vec![wire::ResourceObserved {
                kind: "workload-addresses".into(),
                key: "web".into(),
                generation: g1,
                status,
                measurements: [("readdress_down_seconds".to_owned(), 0.001)].into(),
                ..Default::default()
            }],
            drift: vec![wire::DriftRepaired {
                kind: "workload-addresses".into(),
                key: "web".into(),
                what: "address 198.18.128.5/22 removed".into(),
                detected_unix_ns: 1,
                repaired_unix_ns: 2,
                error: String::new(),
                kept: false,
            }],
        };
        client
            .report_observed(report(7, wire::ResourceStatus::Applied as i32))
            .await
            .unwrap();
        let o = hub.observed("hv1");
        assert_eq!(o.applied_generation, g2);
        assert_eq!(
            o.resources.values().next().unwrap().measurements["readdress_down_seconds"],
            0.001
        );
        assert_eq!(
            hub.drift_of("hv1")[0].what,
            "address 198.18.128.5/22 removed"
        );

        let stale = client
            .report_observed(report(6, wire::ResourceStatus::Applied as i32))
            .await
            .unwrap_err();
        assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
        assert!(stale.message().contains("epoch 6"), "{}", stale.message());
        let bad = client.report_observed(report(7, 0)).await.unwrap_err();
        assert!(
            bad.message().contains("resources[0].status"),
            "{}",
            bad.message()
        );

        let err = client
            .watch_desired_state(wire::WatchDesiredStateRequest {
                host_id: " ".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}

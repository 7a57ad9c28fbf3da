//! Root-only tests on real network namespaces (skipped with a printed reason otherwise):
//! each test builds its namespaces through [`TestNetns`], whose `Drop` removes them, puts
//! a dummy `eth0` in the "workload" namespace and drives the realizer or the control
//! client against it. Addresses are from 198.18.0.0/15 and fd00::/8 only.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use weft_proto::v1::{
    AddressAssignment, DesiredState, ObservedState, ReportObservedResponse, Resource,
    ResourceObserved, ResourceStatus, WatchDesiredStateRequest, WorkloadAddresses,
    agent_control_service_server::{AgentControlService, AgentControlServiceServer},
    resource::Spec,
};

use super::diff::Cidr;
use super::{AddressReconciler, DesiredAddress, DesiredWorkload, Realizer, netns};
use crate::config::{Netns, WorkloadSpec};
use crate::control::ControlMetrics;
use crate::control::driver::ControlDriver;
use crate::hostevents::HostEvents;

use crate::testns::{TestNetns, require_root};

/// What these tests need of a test namespace beyond the shared guard.
trait RealizeNetns {
    /// A netlink connection into the namespace, as the realizer makes them.
    async fn nl(&self) -> netns::NetnsHandle;
    async fn dummy(&self, name: &str) -> u32;
}

impl RealizeNetns for TestNetns {
    async fn nl(&self) -> netns::NetnsHandle {
        netns::connect(Some(&self.path))
            .await
            .expect("netlink in the test namespace")
    }

    /// A veth device (down) in this namespace, its peer (`<name>p`, up) beside it; returns
    /// the device's index. (veth rather than dummy: the dummy module is not everywhere.)
    async fn dummy(&self, name: &str) -> u32 {
        let h = self.nl().await;
        let peer = format!("{name}p");
        h.handle
            .link()
            .add(LinkVeth::new(name, &peer).build())
            .execute()
            .await
            .expect("adding a veth pair");
        let p = index_of(&h, &peer).await;
        h.handle
            .link()
            .set(LinkUnspec::new_with_index(p).up().build())
            .execute()
            .await
            .expect("peer up");
        index_of(&h, name).await
    }
}

async fn index_of(h: &netns::NetnsHandle, name: &str) -> u32 {
    crate::testns::index_of(&h.handle, name).await
}

async fn add_address(h: &netns::NetnsHandle, index: u32, cidr: &str) {
    let c: Cidr = cidr.parse().unwrap();
    h.handle
        .address()
        .add(index, c.addr, c.prefix)
        .execute()
        .await
        .expect("adding an address");
}

/// Default-route gateways through the device, read independently of the realizer.
async fn gateways(ns: &TestNetns, index: u32) -> Vec<IpAddr> {
    let h = ns.nl().await;
    super::apply::read_current_for_tests(&h.handle, index)
        .await
        .default_gateways
}

fn spec(name: &str, netns: Option<Netns>, device: &str, statics: &[&str]) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        interface: format!("wl-{name}"),
        addresses: statics.iter().map(|s| s.parse().unwrap()).collect(),
        netns,
        device: device.into(),
    }
}

fn want(name: &str, addrs: &[(&str, Option<&str>)]) -> DesiredWorkload {
    DesiredWorkload {
        name: name.into(),
        addresses: addrs
            .iter()
            .map(|(c, g)| DesiredAddress {
                cidr: c.parse().unwrap(),
                gateway: g.map(|g| g.parse().unwrap()),
            })
            .collect(),
    }
}

async fn link_mac(h: &netns::NetnsHandle, index: u32) -> Vec<u8> {
    let link = h
        .handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .unwrap()
        .expect("the link");
    link.attributes
        .iter()
        .find_map(|a| match a {
            rtnetlink::packet_route::link::LinkAttribute::Address(m) => Some(m.clone()),
            _ => None,
        })
        .expect("a hardware address")
}

fn cidrs(list: &[Cidr]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn addresses_are_added_unmanaged_ones_kept_and_reapplying_changes_nothing() {
    require_root!();
    let ns = TestNetns::new();
    let idx = ns.dummy("eth0").await;
    {
        let h = ns.nl().await;
        add_address(&h, idx, "198.19.7.7/24").await; // not weft's: outside every shard range
        add_address(&h, idx, "198.18.128.200/22").await; // static in the workloads file
    }
    let r = Realizer::new(&[spec(
        "web",
        Some(Netns::Named(ns.name.clone())),
        "eth0",
        &["198.18.128.200"],
    )]);
    let desired = want(
        "web",
        &[
            ("198.18.128.5/22", Some("198.18.128.1")),
            ("fd00:80::5/64", Some("fd00:80::1")),
        ],
    );

    let first = r.apply(vec![desired.clone()]).await;
    assert_eq!(first.len(), 1);
    let a = &first[0];
    assert_eq!(a.error, None);
    assert!(a.link_up);
    let have = cidrs(&a.addresses);
    for c in [
        "198.18.128.5/22",
        "fd00:80::5/64",
        "198.19.7.7/24",
        "198.18.128.200/22",
    ] {
        assert!(have.contains(&c.to_owned()), "{c} missing from {have:?}");
    }
    assert!(a.changes >= 5, "2 addresses, link up, 2 routes: {a:?}");
    assert_eq!(a.readdress_down, None);
    let gws = gateways(&ns, idx).await;
    assert!(
        gws.contains(&"198.18.128.1".parse().unwrap())
            && gws.contains(&"fd00:80::1".parse().unwrap()),
        "{gws:?}"
    );

    let again = r.apply(vec![desired.clone()]).await;
    assert_eq!(again[0].error, None);
    assert_eq!(
        again[0].changes, 0,
        "re-applying the same state is a no-op: {:?}",
        again[0]
    );
    assert_eq!(cidrs(&again[0].addresses), have);
    // One into the workload's namespace, one into the neighbour namespace (the test's own
    // here) where the gateway's hardware address was looked for.
    assert_eq!(
        r.open_connections(),
        2,
        "one netlink connection per namespace, kept"
    );

    // Drift behind the realizer's back: a changes-only apply does not look (same desired
    // state: the last report is given again); a full apply repairs it.
    {
        let h = ns.nl().await;
        let msgs: Vec<_> = h
            .handle
            .address()
            .get()
            .set_link_index_filter(idx)
            .execute()
            .try_collect()
            .await
            .unwrap();
        let v4 = msgs
            .into_iter()
            .find(|m| m.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(ip) if ip.to_string() == "198.18.128.5")))
            .expect("the desired address is there");
        h.handle
            .address()
            .del(v4)
            .execute()
            .await
            .expect("removing it by hand");
    }
    let unchanged = r.apply_changed(vec![desired.clone()]).await;
    assert_eq!(
        (unchanged[0].changes, cidrs(&unchanged[0].addresses)),
        (0, have.clone())
    );
    let repaired = r.apply(vec![desired]).await;
    assert_eq!(repaired[0].error, None);
    assert!(repaired[0].changes >= 1, "{:?}", repaired[0]);
    assert!(
        cidrs(&repaired[0].addresses).contains(&"198.18.128.5/22".to_owned()),
        "{:?}",
        repaired[0]
    );
}

#[tokio::test]
async fn readdress_swaps_the_address_replaces_the_route_and_flushes_old_neighbours() {
    require_root!();
    let ns = TestNetns::new();
    let hv = TestNetns::new();
    ns.dummy("eth0").await;
    let idx = index_of(&ns.nl().await, "eth0").await;
    // The hypervisor side: a bridge that has learnt the old address's MAC.
    let br = {
        let h = hv.nl().await;
        h.handle
            .link()
            .add(LinkBridge::new("br0").build())
            .execute()
            .await
            .expect("adding a bridge");
        let br = index_of(&h, "br0").await;
        // The gateway's side of the shard: the route that says where its addresses live.
        h.handle
            .link()
            .set(LinkUnspec::new_with_index(br).up().build())
            .execute()
            .await
            .expect("bridge up");
        add_address(&h, br, "198.18.128.1/22").await;
        add_address(&h, br, "198.18.132.1/22").await;
        h.handle
            .neighbours()
            .add(br, "198.18.128.5".parse().unwrap())
            .link_local_address(&[0x02, 0, 0, 0, 0, 0x05])
            .state(NeighbourState::Stale)
            .execute()
            .await
            .expect("adding a neighbour entry");
        br
    };
    // A static IPv6 address the workloads file lists: the link going down drops it, the
    // realizer puts it back.
    add_address(&ns.nl().await, idx, "fd00:99::7/64").await;
    let r = Realizer::new(&[spec(
        "web",
        Some(Netns::Path(ns.path.clone())),
        "eth0",
        &["fd00:99::7"],
    )])
    .with_neighbour_netns(Some(hv.path.clone()))
    .with_old_neighbour_grace(Duration::from_millis(100));
    let v6 = ("fd00:80::5/64", Some("fd00:80::1"));
    let first = r
        .apply(vec![want(
            "web",
            &[("198.18.128.5/22", Some("198.18.128.1")), v6],
        )])
        .await;
    assert_eq!(first[0].error, None);

    let moved = r
        .apply(vec![want(
            "web",
            &[("198.18.132.9/22", Some("198.18.132.1")), v6],
        )])
        .await;
    let a = &moved[0];
    assert_eq!(a.error, None);
    let mut have = cidrs(&a.addresses);
    have.sort();
    assert_eq!(have, ["198.18.132.9/22", "fd00:80::5/64", "fd00:99::7/64"]);
    assert!(a.link_up);
    let down = a
        .readdress_down
        .expect("a re-address reports its down time");
    eprintln!(
        "re-address down time: {} us ({} netlink changes)",
        down.as_micros(),
        a.changes
    );
    assert!(
        down > Duration::ZERO && down < Duration::from_millis(50),
        "{down:?}"
    );
    let gws = gateways(&ns, idx).await;
    assert_eq!(
        gws,
        [
            "198.18.132.1".parse::<IpAddr>().unwrap(),
            "fd00:80::1".parse().unwrap()
        ]
    );
    let again = r
        .apply(vec![want(
            "web",
            &[("198.18.132.9/22", Some("198.18.132.1")), v6],
        )])
        .await;
    assert_eq!(again[0].changes, 0, "{:?}", again[0]);
    assert_eq!(a.neighbours_set, 1, "the new address's entry set");
    let h = hv.nl().await;
    // The old address's entry goes after the grace period.
    let mut left: Vec<_> = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left = h
            .handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .unwrap();
        let old_there = left.iter().any(|n| {
            n.attributes.iter().any(|a| {
                matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) if v4.to_string() == "198.18.128.5")
            })
        });
        if !old_there {
            break;
        }
    }
    let entry = |ip: &str| {
        left.iter().find(|n| {
            n.header.ifindex == br
                && n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) if v4.to_string() == ip)
                })
        })
    };
    assert!(
        entry("198.18.128.5").is_none(),
        "the old address's neighbour entry is gone"
    );
    let mac_of = |n: &rtnetlink::packet_route::neighbour::NeighbourMessage| {
        n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLocalAddress(m) => Some(m.clone()),
            _ => None,
        })
    };
    let workload_mac = link_mac(&ns.nl().await, idx).await;
    let new_entry = entry("198.18.132.9").expect("the hypervisor has an entry for the new address");
    assert_eq!(
        mac_of(new_entry),
        Some(workload_mac),
        "pointing at the workload's device"
    );
    // The workload was told its new gateway's hardware address (no ARP broadcast needed).
    let br_mac = link_mac(&h, br).await;
    let wl: Vec<_> = ns
        .nl()
        .await
        .handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .unwrap();
    let gw = wl
        .iter()
        .find(|n| {
            n.header.ifindex == idx
                && n.attributes.iter().any(|a| {
                    matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) if v4.to_string() == "198.18.132.1")
                })
        })
        .expect("the workload has an entry for its new gateway");
    assert_eq!(mac_of(gw), Some(br_mac));

    // Emptied: the managed address goes, nothing else changes, and the route through a
    // weft gateway goes with it.
    let emptied = r.apply(vec![]).await;
    assert_eq!(
        emptied.len(),
        1,
        "a workload weft addressed before is still reconciled"
    );
    assert_eq!(emptied[0].error, None);
    assert_eq!(
        cidrs(&emptied[0].addresses),
        ["fd00:99::7/64"],
        "{:?}",
        emptied[0]
    );
    assert!(gateways(&ns, idx).await.is_empty());
}

#[tokio::test]
async fn a_restarted_agent_removes_the_old_address_only_if_it_kept_its_state() {
    require_root!();
    let state_dir = std::env::temp_dir().join(format!("weft-lab-state-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let state = state_dir.join("agent-state.json");
    let _ = std::fs::remove_file(&state);
    let moved = want("web", &[("198.18.132.9/22", None)]);
    let run = |with_state: bool| {
        let ns = TestNetns::new();
        let state = state.clone();
        let moved = moved.clone();
        async move {
            ns.dummy("eth0").await;
            let specs = [spec("web", Some(Netns::Path(ns.path.clone())), "eth0", &[])];
            let _ = std::fs::remove_file(&state);
            // Before the restart: the workload got its address from the first shard.
            let before = Realizer::new(&specs)
                .with_state_file(&state)
                .expect("a fresh state file");
            assert_eq!(
                before
                    .apply(vec![want("web", &[("198.18.128.5/22", None)])])
                    .await[0]
                    .error,
                None
            );
            drop(before);
            // After it: the desired state names the new shard's address only.
            let after = if with_state {
                Realizer::new(&specs)
                    .with_state_file(&state)
                    .expect("the kept state")
            } else {
                Realizer::new(&specs)
            };
            let applied = after.apply(vec![moved]).await;
            assert_eq!(applied[0].error, None);
            cidrs(&applied[0].addresses)
        }
    };
    assert_eq!(
        run(true).await,
        ["198.18.132.9/22"],
        "the kept state names the old address as weft's"
    );
    let forgot = run(false).await;
    assert!(
        forgot.contains(&"198.18.128.5/22".to_owned()),
        "without it the old address is not recognised (left on the device): {forgot:?}"
    );
    let _ = std::fs::remove_dir_all(&state_dir);
}

#[tokio::test]
async fn an_ipv6_address_moves_although_the_link_going_down_took_it_already() {
    require_root!();
    let ns = TestNetns::new();
    ns.dummy("eth0").await;
    let r = Realizer::new(&[spec("web", Some(Netns::Path(ns.path.clone())), "eth0", &[])]);
    let first = r
        .apply(vec![want("web", &[("fd00:80::5/64", Some("fd00:80::1"))])])
        .await;
    assert_eq!(first[0].error, None);
    let moved = r
        .apply(vec![want("web", &[("fd00:81::9/64", Some("fd00:81::1"))])])
        .await;
    assert_eq!(moved[0].error, None, "{:?}", moved[0]);
    assert!(
        moved[0].readdress_down.is_some(),
        "a re-address: {:?}",
        moved[0]
    );
    assert_eq!(cidrs(&moved[0].addresses), ["fd00:81::9/64"]);
}

#[tokio::test]
async fn missing_namespace_or_device_fails_that_workload_only() {
    require_root!();
    let ns = TestNetns::new();
    ns.dummy("eth0").await;
    let r = Realizer::new(&[
        spec(
            "ghost",
            Some(Netns::Named(format!("{}-gone", ns.name))),
            "eth0",
            &[],
        ),
        spec("nodev", Some(Netns::Path(ns.path.clone())), "eth9", &[]),
        spec("plain", None, "eth0", &[]),
        spec("web", Some(Netns::Path(ns.path.clone())), "eth0", &[]),
    ]);
    let out = r
        .apply(vec![
            want("ghost", &[("198.18.128.7/22", None)]),
            want("nodev", &[("198.18.128.8/22", None)]),
            want("plain", &[("198.18.128.9/22", None)]),
            want("stranger", &[("198.18.128.10/22", None)]),
            want("web", &[("fd00:80::5/64", None)]),
        ])
        .await;
    let by = |n: &str| out.iter().find(|a| a.workload == n).unwrap().clone();
    let err = |n: &str| by(n).error.unwrap_or_default();
    assert!(
        err("ghost").contains("opening network namespace") && err("ghost").contains("-gone"),
        "{}",
        err("ghost")
    );
    assert!(
        err("nodev").contains("\"eth9\" not found"),
        "{}",
        err("nodev")
    );
    assert!(err("plain").contains("no `netns`"), "{}", err("plain"));
    assert!(
        err("stranger").contains("not in this host's workloads file"),
        "{}",
        err("stranger")
    );
    assert_eq!(by("web").error, None);
    assert_eq!(
        cidrs(&by("web").addresses),
        vec!["fd00:80::5/64".to_owned()]
    );
}

#[tokio::test]
async fn workload_no_longer_desired_whose_namespace_is_gone_is_forgotten() {
    require_root!();
    let ns = TestNetns::new();
    ns.dummy("eth0").await;
    let r = Realizer::new(&[spec("web", Some(Netns::Path(ns.path.clone())), "eth0", &[])]);
    assert_eq!(
        r.apply(vec![want("web", &[("198.18.128.5/22", None)])])
            .await[0]
            .error,
        None
    );
    drop(ns);
    assert!(
        r.apply(vec![]).await.is_empty(),
        "nothing to clean, nothing to report"
    );
    let asked = r
        .apply(vec![want("web", &[("198.18.128.5/22", None)])])
        .await;
    assert!(
        asked[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("opening network namespace"),
        "{asked:?}"
    );
}

/// A controller that streams the desired states it is given and records the reports.
#[derive(Clone, Default)]
struct FakeController {
    states: Arc<Mutex<VecDeque<DesiredState>>>,
    watchers: Arc<Mutex<Vec<WatchDesiredStateRequest>>>,
    reports: Arc<Mutex<Vec<ObservedState>>>,
}

#[tonic::async_trait]
impl AgentControlService for FakeController {
    type WatchDesiredStateStream =
        Pin<Box<dyn futures::Stream<Item = Result<DesiredState, Status>> + Send + 'static>>;

    async fn watch_desired_state(
        &self,
        req: Request<WatchDesiredStateRequest>,
    ) -> Result<Response<Self::WatchDesiredStateStream>, Status> {
        self.watchers.lock().unwrap().push(req.into_inner());
        let (tx, rx) = mpsc::channel(4);
        let states: Vec<DesiredState> = self.states.lock().unwrap().iter().cloned().collect();
        let reports = self.reports.clone();
        tokio::spawn(async move {
            // One generation at a time: the next goes out once the previous is reported.
            for (i, s) in states.into_iter().enumerate() {
                while reports.lock().unwrap().len() < i {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
            }
            // Keep the stream open until the client goes away.
            tx.closed().await;
        });
        Ok(Response::new(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        ))))
    }

    async fn report_observed(
        &self,
        req: Request<ObservedState>,
    ) -> Result<Response<ReportObservedResponse>, Status> {
        self.reports.lock().unwrap().push(req.into_inner());
        Ok(Response::new(ReportObservedResponse {}))
    }
}

fn wire(workload: &str, cidr: &str, gateway: &str, shard: &str, seq: u64) -> Resource {
    Resource {
        kind: "workload-addresses".into(),
        key: workload.into(),
        generation: seq,
        spec: Some(Spec::WorkloadAddresses(WorkloadAddresses {
            workload: workload.into(),
            addresses: vec![AddressAssignment {
                cidr: cidr.into(),
                gateway: gateway.into(),
                shard_id: shard.into(),
                allocation_seq: seq,
            }],
        })),
    }
}

async fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A fake controller on a loopback port; the returned server task is aborted by the test.
async fn serve(
    fake: &FakeController,
) -> (
    String,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), server)
}

fn driver(
    controller: String,
    realizer: Realizer,
    events: Option<HostEvents>,
    metrics: Arc<ControlMetrics>,
) -> ControlDriver {
    let addresses = AddressReconciler {
        realizer: Arc::new(realizer),
        metrics: metrics.clone(),
    };
    ControlDriver {
        controller: crate::controller_link::ControllerLink::plain(&controller),
        host_id: "hv-test".into(),
        instance: "00000000000000aa".into(),
        reconcilers: vec![Arc::new(addresses)],
        events,
        signals: None,
        metrics,
    }
}

fn resource<'a>(r: &'a ObservedState, key: &str) -> &'a ResourceObserved {
    r.resources
        .iter()
        .find(|o| o.key == key)
        .unwrap_or_else(|| panic!("no report of {key}: {r:?}"))
}

#[tokio::test]
async fn control_driver_applies_two_generations_and_reports_them() {
    require_root!();
    let ns = TestNetns::new();
    ns.dummy("eth0").await;
    let fake = FakeController::default();
    let mut unknown = wire("vm9", "198.18.128.7/22", "", "shard-a", 1);
    unknown.kind = "weave-route".into();
    unknown.spec = None; // a spec case this agent was built without
    fake.states.lock().unwrap().extend([
        DesiredState {
            controller_epoch: 4,
            generation: 1,
            resources: vec![
                wire("web", "198.18.128.5/22", "198.18.128.1", "shard-a", 1),
                wire("ghost", "198.18.128.6/22", "", "shard-a", 1),
                unknown.clone(),
            ],
        },
        DesiredState {
            controller_epoch: 4,
            generation: 2,
            resources: vec![
                wire("web", "198.18.132.9/22", "198.18.132.1", "shard-b", 2),
                wire("ghost", "198.18.128.6/22", "", "shard-a", 1),
                unknown,
            ],
        },
    ]);
    let (url, server) = serve(&fake).await;
    let metrics = Arc::new(ControlMetrics::default());
    let realizer = Realizer::new(&[
        spec("web", Some(Netns::Named(ns.name.clone())), "eth0", &[]),
        spec(
            "ghost",
            Some(Netns::Named(format!("{}-gone", ns.name))),
            "eth0",
            &[],
        ),
    ]);
    let client = driver(url, realizer, None, metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(client.run(stop_rx));
    let reports = fake.reports.clone();
    assert!(
        eventually(Duration::from_secs(10), || reports.lock().unwrap().len()
            >= 2)
        .await,
        "two reports"
    );
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("client stops on shutdown")
        .unwrap();
    server.abort();

    let watchers = fake.watchers.lock().unwrap().clone();
    assert_eq!(watchers[0].host_id, "hv-test");
    assert_eq!(watchers[0].agent_instance, "00000000000000aa");
    assert_eq!(
        watchers[0].kinds,
        vec!["workload-addresses".to_owned()],
        "the agent announces its kinds"
    );
    let reports = reports.lock().unwrap().clone();
    let (r1, r2) = (&reports[0], &reports[1]);
    assert_eq!((r1.applied_generation, r2.applied_generation), (1, 2));
    assert_eq!((r1.controller_epoch, r1.host_id.as_str()), (4, "hv-test"));
    let web1 = resource(r1, "web");
    assert_eq!(
        web1.observed,
        vec!["198.18.128.5/22".to_owned(), "link up".to_owned()]
    );
    assert_eq!(
        (web1.status, web1.generation),
        (ResourceStatus::Applied as i32, 1)
    );
    assert!(
        web1.error.is_empty() && web1.measurements.is_empty(),
        "{web1:?}"
    );
    let web2 = resource(r2, "web");
    assert_eq!(web2.observed[0], "198.18.132.9/22");
    assert_eq!(web2.generation, 2);
    let down = web2.measurements["readdress_down_seconds"];
    assert!(down > 0.0, "{web2:?}");
    eprintln!(
        "re-address down time over the control path: {:.0} us",
        down * 1e6
    );
    for r in [r1, r2] {
        let ghost = resource(r, "ghost");
        assert_eq!(ghost.status, ResourceStatus::Failed as i32);
        assert!(
            ghost.error.contains("opening network namespace"),
            "{ghost:?}"
        );
        let vm9 = resource(r, "vm9");
        assert_eq!(
            (vm9.kind.as_str(), vm9.status),
            ("weave-route", ResourceStatus::Unsupported as i32),
            "{vm9:?}"
        );
        assert!(vm9.error.contains("no reconciler"), "{vm9:?}");
    }
    assert_eq!(metrics.desired_generation.get(), 2);
    assert_eq!(metrics.applied_generation.get(), 2);
    assert_eq!(metrics.readdress_total.get(), 1);
    assert_eq!(metrics.apply_errors_total.get(), 2);
    assert_eq!(metrics.unsupported_resources.get(), 1);
}

/// The addresses on `device` in `ns` now, read with `ip` (independently of the agent).
fn ip_addresses(ns: &TestNetns, device: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-o", "addr", "show", "dev", device])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &TestNetns, args: &[&str]) {
    let status = std::process::Command::new("ip")
        .arg("-n")
        .arg(&ns.name)
        .args(args)
        .status()
        .expect("running ip");
    assert!(status.success(), "ip -n {} {args:?}", ns.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_deleted_by_hand_is_restored_at_once_and_reported_as_drift() {
    require_root!();
    let ns = TestNetns::new();
    ns.dummy("eth0").await;
    let fake = FakeController::default();
    fake.states.lock().unwrap().push_back(DesiredState {
        controller_epoch: 1,
        generation: 1,
        resources: vec![wire("web", "198.18.128.5/22", "198.18.128.1", "shard-a", 1)],
    });
    let (url, server) = serve(&fake).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(ControlMetrics::new(&mut registry));
    let events =
        HostEvents::start(crate::hostevents::Config::default()).expect("a netlink listener");
    let realizer = Realizer::new(&[spec(
        "web",
        Some(Netns::Named(ns.name.clone())),
        "eth0",
        &[],
    )]);
    let client = driver(url, realizer, Some(events), metrics.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(client.run(stop_rx));
    let reports = fake.reports.clone();
    assert!(
        eventually(Duration::from_secs(10), || !reports
            .lock()
            .unwrap()
            .is_empty())
        .await,
        "first report"
    );
    assert!(ip_addresses(&ns, "eth0").contains("198.18.128.5/22"));

    // Behind the agent's back, three times: the address, the default route, the link.
    let mut restored = Vec::new();
    for (undo, what) in [
        (
            vec!["addr", "del", "198.18.128.5/22", "dev", "eth0"],
            "address 198.18.128.5/22 removed from eth0",
        ),
        (
            vec!["route", "del", "default"],
            "default route via 198.18.128.1 removed",
        ),
        (vec!["link", "set", "eth0", "down"], "eth0 set down"),
    ] {
        let before = metrics.drift_repaired_total.get();
        let t0 = std::time::Instant::now();
        ip(&ns, &undo);
        let back = eventually(Duration::from_secs(5), || {
            let a = ip_addresses(&ns, "eth0");
            metrics.drift_repaired_total.get() > before && a.contains("198.18.128.5/22")
        })
        .await;
        assert!(
            back,
            "{what}: not repaired (metrics {:?})",
            crate::metrics::render(&registry)
        );
        restored.push(t0.elapsed());
        let reported = eventually(Duration::from_secs(5), || {
            reports
                .lock()
                .unwrap()
                .iter()
                .flat_map(|r| r.drift.iter())
                .any(|d| d.what.contains(what))
        })
        .await;
        assert!(
            reported,
            "no drift report naming {what:?}: {:?}",
            reports.lock().unwrap().last()
        );
    }
    let gws = gateways(&ns, {
        let h = ns.nl().await;
        index_of(&h, "eth0").await
    })
    .await;
    assert_eq!(
        gws,
        vec!["198.18.128.1".parse::<IpAddr>().unwrap()],
        "the default route is back"
    );
    assert!(
        ip_addresses(&ns, "eth0").contains("state UP")
            || ip_addresses(&ns, "eth0").contains("198.18.128.5")
    );
    let drift = reports
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.drift.clone())
        .collect::<Vec<_>>();
    assert!(
        drift.iter().all(|d| d.kind == "workload-addresses"
            && d.key == "web"
            && d.repaired_unix_ns >= d.detected_unix_ns),
        "{drift:?}"
    );
    eprintln!("drift restored after (including `ip` runs): {restored:?}");
    let _ = stop_tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("driver stops")
        .unwrap();
    server.abort();
}

#[tokio::test]
async fn only_the_net_effect_of_a_burst_of_host_events_is_drift() {
    use crate::hostevents::{Change, HostEvent};
    require_root!();
    let ns = TestNetns::new();
    let idx = ns.dummy("eth0").await;
    let r = Realizer::new(&[spec(
        "web",
        Some(Netns::Named(ns.name.clone())),
        "eth0",
        &[],
    )]);
    let applied = r
        .apply(vec![want(
            "web",
            &[("198.18.128.5/22", Some("198.18.128.1"))],
        )])
        .await;
    assert_eq!(applied[0].error, None, "{applied:?}");
    let addr: IpAddr = "198.18.128.5".parse().unwrap();
    let ev = |change: Change| HostEvent {
        netns: Some(ns.path.clone()),
        at: std::time::Instant::now(),
        change,
    };
    let del = || {
        ev(Change::AddrDel {
            ifindex: idx,
            addr,
            prefix: 22,
        })
    };
    let add = || {
        ev(Change::AddrNew {
            ifindex: idx,
            addr,
            prefix: 22,
        })
    };
    let down = || {
        ev(Change::LinkNew {
            ifindex: idx,
            name: "eth0".into(),
            up: false,
            kind: None,
        })
    };
    let up = || {
        ev(Change::LinkNew {
            ifindex: idx,
            name: "eth0".into(),
            up: true,
            kind: None,
        })
    };
    assert!(
        r.drifted(&[del(), add()]).is_empty(),
        "removed and added back in one burst"
    );
    assert!(r.drifted(&[down(), up()]).is_empty(), "down and up again");
    assert_eq!(
        r.drifted(&[add(), del()]),
        vec![(
            "web".to_owned(),
            "address 198.18.128.5/22 removed from eth0".to_owned()
        )]
    );
    assert_eq!(
        r.drifted(&[up(), down()]),
        vec![("web".to_owned(), "eth0 set down".to_owned())]
    );
    let mut other = del();
    other.netns = Some(PathBuf::from("/run/netns/not-a-workload"));
    assert!(r.drifted(&[other]).is_empty(), "another namespace");
    let mut old = del();
    old.at -= Duration::from_secs(60);
    assert!(
        r.drifted(&[old]).is_empty(),
        "from before the last read-back: the apply's own"
    );
}

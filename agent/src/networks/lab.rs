//! The network kinds against real namespaces (root only): a "hypervisor" namespace gets a
//! network's bridge and nodes; the nodes reach each other through it; drift is repaired;
//! removal leaves nothing behind.

use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use weft_proto::v1::resource::Spec;
use weft_proto::v1::{AddressAssignment, FirewallRule, NetworkNode, NetworkSegment, PortRange};

use super::{
    Networks, NetworksConfig, NodeReconciler, SegmentReconciler, links, names, namespaces,
};
use crate::control::{DesiredResource, DriftSignal, Reconciler, ResourceReport, Scope};
use crate::hostevents::in_netns;
use crate::testns::{TestNetns, require_root};

static NEXT: AtomicU32 = AtomicU32::new(0);

fn prefix() -> String {
    // The lab's naming (`wft-<pid hex>-...`): a sweep of a killed run's leftovers finds them.
    format!(
        "wft-{:x}-nd{}",
        std::process::id(),
        NEXT.fetch_add(1, Relaxed)
    )
}

/// Removes what a test's nodes left, also when it fails.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        if let Ok(dir) = std::fs::read_dir(namespaces::NETNS_DIR) {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.0))
                {
                    let _ = namespaces::remove(&e.path());
                }
            }
        }
    }
}

fn segment(network: &str, vni: u32, local: &str, peers: &[&str]) -> DesiredResource {
    DesiredResource {
        key: network.into(),
        generation: 1,
        spec: Spec::NetworkSegment(NetworkSegment {
            network: network.into(),
            vni,
            local: local.into(),
            peers: peers.iter().map(|p| (*p).into()).collect(),
            mtu: 0,
        }),
    }
}

fn node(network: &str, name: &str, cidr: &str, generation: u64) -> DesiredResource {
    DesiredResource {
        key: format!("{network}/{name}"),
        generation,
        spec: Spec::NetworkNode(NetworkNode {
            network: network.into(),
            node: name.into(),
            addresses: vec![AddressAssignment {
                cidr: cidr.into(),
                gateway: String::new(),
                shard_id: "s".into(),
                allocation_seq: 1,
            }],
            // Inbound: tcp 7800-7899 from the network only.
            firewall: vec![FirewallRule {
                sources: vec!["198.18.70.0/24".into()],
                protocol: "tcp".into(),
                ports: vec![PortRange {
                    first: 7800,
                    last: 7899,
                }],
                accept: true,
            }],
            ..Default::default()
        }),
    }
}

fn ok(reports: &[ResourceReport]) {
    for r in reports {
        assert!(r.error.is_none(), "{}: {:?}", r.key, r.error);
    }
}

struct Setup {
    hv: TestNetns,
    net: Arc<Networks>,
    seg: SegmentReconciler,
    nodes: NodeReconciler,
    signals: tokio::sync::mpsc::Receiver<DriftSignal>,
    _sweep: Sweep,
}

async fn setup() -> Setup {
    let hv = TestNetns::new();
    let p = prefix();
    let net = Networks::new(
        NetworksConfig {
            netns_prefix: p.clone(),
            ..Default::default()
        },
        None,
        Some(&hv.path),
    )
    .await
    .expect("networks");
    let seg = SegmentReconciler {
        networks: net.clone(),
    };
    let (tx, signals) = tokio::sync::mpsc::channel(64);
    let root = std::env::temp_dir().join(format!("{p}-nodes"));
    let mut cfg = weft_noderun::SupervisorConfig::new(root.clone());
    cfg.cgroup_root = p.clone();
    let supervisor = Arc::new(weft_noderun::Supervisor::new(cfg).expect("supervisor"));
    let nodes = NodeReconciler::new(net.clone(), tx, supervisor, root);
    Setup {
        hv,
        net,
        seg,
        nodes,
        signals,
        _sweep: Sweep(p),
    }
}

fn node_path(net: &Networks, network: &str, node: &str) -> std::path::PathBuf {
    namespaces::path_of(&names::netns(&net.config.netns_prefix, network, node))
}

/// A TCP connection from namespace `from` to `to`:`port` (a listener started in `to`).
async fn connects(from: &Path, to: &Path, addr: IpAddr, port: u16) -> bool {
    let listener = in_netns(to, move || TcpListener::bind((addr, port)))
        .await
        .expect("enter")
        .expect("bind");
    // Bounded: a listener left waiting would hold the namespace (and its veth) alive.
    listener.set_nonblocking(true).expect("nonblocking");
    let accept = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    });
    let connected = in_netns(from, move || {
        TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2)).is_ok()
    })
    .await
    .expect("enter");
    let accepted = accept.join().unwrap_or(false);
    connected && accepted
}

struct NodeSpecFirewall(weft_firewall::Ruleset);

fn firewall_of(r: &DesiredResource) -> NodeSpecFirewall {
    let Spec::NetworkNode(n) = &r.spec else {
        panic!("not a node")
    };
    NodeSpecFirewall(super::spec::NodeSpec::from_wire(n, 1500).unwrap().firewall)
}

#[tokio::test]
async fn nodes_are_made_reach_each_other_drift_is_repaired_and_removal_leaves_nothing() {
    require_root!();
    let Setup {
        hv,
        net,
        seg,
        nodes,
        mut signals,
        _sweep,
    } = setup().await;
    let h = hv.handle().await;

    // No segment yet: the node fails and says why.
    let early = nodes
        .reconcile(&[node("lab", "a", "198.18.70.2/24", 1)], Scope::All)
        .await;
    assert!(
        early[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("no bridge"),
        "{early:?}"
    );

    ok(&seg
        .reconcile(&[segment("lab", 0, "", &[])], Scope::All)
        .await);
    let bridge = links::by_name(&h, &names::bridge("lab"))
        .await
        .unwrap()
        .expect("bridge");
    assert!(bridge.up);

    let want = vec![
        node("lab", "a", "198.18.70.2/24", 2),
        node("lab", "b", "198.18.70.3/24", 2),
        node("lab", "c", "198.18.70.4/24", 2),
    ];
    let first = nodes.reconcile(&want, Scope::All).await;
    ok(&first);
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|r| r.changes > 0), "{first:?}");
    for n in ["a", "b", "c"] {
        let p = node_path(&net, "lab", n);
        assert!(namespaces::is_mounted(&p), "{}", p.display());
        let veth = links::by_name(&h, &names::host_veth("lab", n))
            .await
            .unwrap()
            .expect("veth");
        assert_eq!(veth.controller, Some(bridge.index), "{n} on the bridge");
        assert!(veth.up);
    }
    let (a, b) = (node_path(&net, "lab", "a"), node_path(&net, "lab", "b"));
    assert!(connects(&a, &b, "198.18.70.3".parse().unwrap(), 7801).await);
    // Inbound is default deny: a port no rule allows is not reachable.
    assert!(!connects(&a, &b, "198.18.70.3".parse().unwrap(), 7950).await);

    // The same state again changes nothing, in full and as "changed".
    for scope in [Scope::All, Scope::Changed] {
        let again = nodes.reconcile(&want, scope).await;
        ok(&again);
        assert!(again.iter().all(|r| r.changes == 0), "{scope:?}: {again:?}");
    }

    // Drift: b's address removed and its eth0 set down by hand, then repaired.
    let bh = TestNetns::handle_of(&b).await;
    let eth0 = links::by_name(&bh, names::NODE_IF).await.unwrap().unwrap();
    links::del_address(&bh, eth0.index, "198.18.70.3/24".parse().unwrap())
        .await
        .unwrap();
    links::set(&bh, eth0.index, names::NODE_IF, false, None, None)
        .await
        .unwrap();
    let key = vec!["lab/b".to_string()];
    let repaired = nodes.reconcile(&want, Scope::Only(&key)).await;
    ok(&repaired);
    assert_eq!(repaired.len(), 1);
    assert!(repaired[0].changes >= 2, "{repaired:?}");
    assert!(connects(&a, &b, "198.18.70.3".parse().unwrap(), 7802).await);

    // Drift in the firewall: the table deleted by hand is signalled and put back.
    while signals.try_recv().is_ok() {}
    let name = names::netns(&net.config.netns_prefix, "lab", "a");
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", &name, "nft", "delete", "table", "inet", "weft",
        ])
        .output()
        .expect("nft");
    assert!(out.status.success(), "{out:?}");
    let signal = tokio::time::timeout(Duration::from_secs(2), signals.recv())
        .await
        .expect("a drift signal within 2 s")
        .expect("channel open");
    assert_eq!(signal.drift.key, "lab/a");
    // The rest of the burst (rules, chain, table, generation).
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(s) = signals.try_recv() {
        assert_eq!(s.drift.key, "lab/a");
    }
    let key = vec!["lab/a".to_string()];
    let repaired = nodes.reconcile(&want, Scope::Only(&key)).await;
    ok(&repaired);
    assert_eq!(repaired[0].changes, 1, "{repaired:?}");
    let observed = weft_firewall::read(Some(&a)).expect("read the firewall");
    let NodeSpecFirewall(rules) = firewall_of(&want[0]);
    assert!(weft_firewall::drift(&rules, &observed).is_empty());
    // Our own repair is not signalled as drift.
    if let Ok(s) = tokio::time::timeout(Duration::from_millis(300), signals.recv()).await {
        panic!("the repair came back as drift: {s:?}");
    }

    // A changed address moves; the old one goes.
    let mut moved = want.clone();
    moved[2] = node("lab", "c", "198.18.70.14/24", 3);
    ok(&nodes.reconcile(&moved, Scope::Changed).await);
    let ch = TestNetns::handle_of(&node_path(&net, "lab", "c")).await;
    let ceth = links::by_name(&ch, names::NODE_IF).await.unwrap().unwrap();
    let addrs: Vec<String> = links::addresses(&ch, ceth.index)
        .await
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(addrs, vec!["198.18.70.14/24".to_string()]);

    // Nothing desired: every namespace and veth goes (our own handles into b and c would
    // keep theirs alive).
    drop((bh, ch));
    let gone = nodes.reconcile(&[], Scope::All).await;
    ok(&gone);
    assert_eq!(gone.len(), 3);
    for n in ["a", "b", "c"] {
        assert!(!node_path(&net, "lab", n).exists());
    }
    // The veths go with their namespaces (the kernel's teardown, a moment later).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for n in ["a", "b", "c"] {
        while links::by_name(&h, &names::host_veth("lab", n))
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "veth of {n} still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ok(&seg.reconcile(&[], Scope::All).await);
    assert!(
        links::by_name(&h, &names::bridge("lab"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn a_segment_spanning_hosts_gets_a_vxlan_device_with_its_peers_as_flood_list() {
    require_root!();
    let Setup {
        hv, seg, _sweep, ..
    } = setup().await;
    let h = hv.handle().await;
    ok(&seg
        .reconcile(
            &[segment(
                "span",
                4242,
                "198.19.9.65",
                &["198.19.9.66", "198.19.9.67"],
            )],
            Scope::All,
        )
        .await);
    let vx = links::by_name(&h, &names::vxlan("span"))
        .await
        .unwrap()
        .expect("vxlan");
    assert_eq!(vx.vni, Some(4242));
    let bridge = links::by_name(&h, &names::bridge("span"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vx.controller, Some(bridge.index));
    let peers = links::flood_peers(&h, vx.index).await.unwrap();
    assert_eq!(
        peers,
        vec![
            "198.19.9.66".parse::<IpAddr>().unwrap(),
            "198.19.9.67".parse().unwrap()
        ]
    );
    // A peer leaves, another comes; a new VNI replaces the device.
    ok(&seg
        .reconcile(
            &[segment("span", 4242, "198.19.9.65", &["198.19.9.68"])],
            Scope::All,
        )
        .await);
    let peers = links::flood_peers(&h, vx.index).await.unwrap();
    assert_eq!(peers, vec!["198.19.9.68".parse::<IpAddr>().unwrap()]);
    let again = seg
        .reconcile(
            &[segment("span", 4242, "198.19.9.65", &["198.19.9.68"])],
            Scope::All,
        )
        .await;
    assert_eq!(again[0].changes, 0, "{again:?}");
    ok(&seg
        .reconcile(
            &[segment("span", 4243, "198.19.9.65", &["198.19.9.68"])],
            Scope::All,
        )
        .await);
    let vx2 = links::by_name(&h, &names::vxlan("span"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(vx2.vni, Some(4243));
    // Down to one host: the VXLAN device goes, the bridge stays.
    ok(&seg
        .reconcile(&[segment("span", 0, "", &[])], Scope::All)
        .await);
    assert!(
        links::by_name(&h, &names::vxlan("span"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        links::by_name(&h, &names::bridge("span"))
            .await
            .unwrap()
            .is_some()
    );
}

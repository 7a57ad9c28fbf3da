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

/// A node running a shell command that appends a line to `starts` in its volume `data`
/// at each start and keeps that file open while it runs.
fn volume_node(name: &str, cidr: &str, ops: impl FnOnce(&mut NetworkNode)) -> DesiredResource {
    let DesiredResource { key, spec, .. } = node("cow", name, cidr, 1);
    let Spec::NetworkNode(mut n) = spec else {
        unreachable!()
    };
    n.firewall.clear();
    n.runtime = Some(weft_proto::v1::NodeRuntime {
        command: vec![
            "echo start >> {volume:data}/starts; exec 3>>{volume:data}/starts; exec sleep 1000"
                .into(),
        ],
        volumes: vec![weft_proto::v1::NodeVolume {
            name: "data".into(),
            path: "/data".into(),
            size_bytes: 0,
        }],
        ..Default::default()
    });
    ops(&mut n);
    DesiredResource {
        key,
        generation: 1,
        spec: Spec::NetworkNode(n),
    }
}

fn snapshots_asked(generation: u64) -> weft_proto::v1::VolumeSnapshots {
    weft_proto::v1::VolumeSnapshots {
        interval_seconds: 0,
        keep: 3,
        generation,
        pinned: Vec::new(),
    }
}

/// The pid in a node report's "command pid N running" line.
fn pid_of(r: &ResourceReport) -> u32 {
    r.observed
        .iter()
        .find_map(|o| {
            o.strip_prefix("command pid ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no pid in {:?}", r.observed))
}

fn by_key<'a>(reports: &'a [ResourceReport], key: &str) -> &'a ResourceReport {
    reports
        .iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("no report of {key}: {reports:?}"))
}

/// Waits (bounded) until `path` has `lines` lines: a node's start writes there.
async fn lines_reach(path: &Path, lines: usize) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} has {:?}, not {lines} lines",
            path.display(),
            text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn snapshots_leave_a_node_running_clones_start_from_them_and_a_sync_restarts_the_node() {
    require_root!();
    // Declared first: dropped last (unmounted after the nodes are gone).
    let pool = super::cow::lab::Lab::new(super::cow::StoreKind::Btrfs);
    let Setup {
        seg,
        nodes,
        _sweep,
        hv: _hv,
        mut signals,
        ..
    } = setup().await;
    let nodes = nodes.with_volume_store(Some(pool.store().clone()));
    let root = std::env::temp_dir().join(format!("{}-nodes", _sweep.0));
    ok(&seg
        .reconcile(&[segment("cow", 0, "", &[])], Scope::All)
        .await);
    let src_vol = root.join("cow/src/volumes/data");
    let w_vol = root.join("cow/w/volumes/data");

    // Production with snapshots asked for: generation 1.
    let src = |g: u64| {
        volume_node("src", "198.18.71.2/24", |n| {
            n.snapshots = Some(snapshots_asked(g))
        })
    };
    let first = nodes.reconcile(&[src(1)], Scope::All).await;
    ok(&first);
    let p1 = pid_of(&first[0]);
    assert_eq!(first[0].snapshots.len(), 1, "{:?}", first[0]);
    assert_eq!(first[0].snapshots[0].method, "btrfs");
    lines_reach(&src_vol.join("starts"), 1).await;
    std::fs::write(src_vol.join("file"), "prod-v1").unwrap();

    // Another snapshot: the node keeps running (same pid, nothing stopped).
    let second = nodes.reconcile(&[src(2)], Scope::All).await;
    ok(&second);
    assert_eq!(pid_of(&second[0]), p1, "{:?}", second[0].observed);
    assert!(
        !second[0].observed.iter().any(|o| o.contains("stopped")),
        "{:?}",
        second[0].observed
    );
    assert!(
        second[0]
            .measurements
            .iter()
            .any(|(n, _)| n == "volume_snapshot_seconds")
    );
    let snap = second[0]
        .snapshots
        .iter()
        .find(|s| s.generation == 2)
        .expect("the generation 2 snapshot")
        .clone();
    std::fs::write(src_vol.join("file"), "prod-v2").unwrap();

    // The weave's node starts from the snapshot: production's state of then.
    let w = |sync: u64| {
        let id = snap.id.clone();
        volume_node("w", "198.18.71.3/24", move |n| {
            n.clone = Some(weft_proto::v1::VolumeClone {
                source: "cow/src".into(),
                snapshot: id,
                generation: 0,
            });
            if sync > 0 {
                n.sync_from = vec![weft_proto::v1::VolumeSyncFrom {
                    volume: "data".into(),
                    source: "cow/src".into(),
                    generation: sync,
                }];
            }
        })
    };
    let third = nodes.reconcile(&[src(2), w(0)], Scope::All).await;
    ok(&third);
    let pw1 = pid_of(by_key(&third, "cow/w"));
    assert_eq!(pid_of(by_key(&third, "cow/src")), p1);
    assert_eq!(
        std::fs::read_to_string(w_vol.join("file")).unwrap(),
        "prod-v1"
    );
    // Production's start line, then the weave node's own.
    lines_reach(&w_vol.join("starts"), 2).await;
    std::fs::write(w_vol.join("file"), "weave").unwrap();
    assert_eq!(
        std::fs::read_to_string(src_vol.join("file")).unwrap(),
        "prod-v2"
    );

    // A sync: the weave node is stopped, gets production's current state, is started.
    let fourth = nodes.reconcile(&[src(2), w(1)], Scope::All).await;
    ok(&fourth);
    let wr = by_key(&fourth, "cow/w");
    assert_ne!(pid_of(wr), pw1, "restarted by the sync: {:?}", wr.observed);
    assert_eq!(
        pid_of(by_key(&fourth, "cow/src")),
        p1,
        "production untouched"
    );
    assert_eq!(wr.syncs.len(), 1, "{wr:?}");
    assert_eq!(wr.syncs[0].generation, 1);
    assert!(
        wr.measurements
            .iter()
            .any(|(n, _)| n == "volume_sync_seconds")
    );
    assert_eq!(
        std::fs::read_to_string(w_vol.join("file")).unwrap(),
        "prod-v2"
    );
    lines_reach(&w_vol.join("starts"), 2).await;
    // The same spec again syncs nothing and restarts nothing.
    let fifth = nodes.reconcile(&[src(2), w(1)], Scope::All).await;
    ok(&fifth);
    assert_eq!(pid_of(by_key(&fifth, "cow/w")), pid_of(wr));

    // A weave from "now": its node clones the snapshot of a generation the source's spec
    // does not ask for yet, and takes it itself (production keeps running); the source's
    // apply with that generation then finds it answered and takes none.
    std::fs::write(src_vol.join("file"), "prod-v3").unwrap();
    let w2_vol = root.join("cow/w2/volumes/data");
    let w2 = volume_node("w2", "198.18.71.4/24", |n| {
        n.clone = Some(weft_proto::v1::VolumeClone {
            source: "cow/src".into(),
            snapshot: String::new(),
            generation: 3,
        });
    });
    let sixth = nodes
        .reconcile(&[src(2), w(1), w2.clone()], Scope::All)
        .await;
    ok(&sixth);
    let w2r = by_key(&sixth, "cow/w2");
    assert!(
        w2r.observed
            .iter()
            .any(|o| o.contains("of cow/src taken") && o.contains("generation 3")),
        "{:?}",
        w2r.observed
    );
    assert_eq!(
        std::fs::read_to_string(w2_vol.join("file")).unwrap(),
        "prod-v3"
    );
    assert_eq!(pid_of(by_key(&sixth, "cow/src")), p1);
    let seventh = nodes
        .reconcile(&[src(3), w(1), w2.clone()], Scope::All)
        .await;
    ok(&seventh);
    let sr = by_key(&seventh, "cow/src");
    assert_eq!(
        sr.snapshots.iter().filter(|s| s.generation == 3).count(),
        1,
        "one snapshot for generation 3: {:?}",
        sr.snapshots
    );
    assert!(
        !sr.measurements
            .iter()
            .any(|(n, _)| n == "volume_snapshot_seconds"),
        "not taken twice: {:?}",
        sr.observed
    );
    // The weave's node keeps its volume (no new snapshot, no clone) at the next apply.
    std::fs::write(w2_vol.join("file"), "w2").unwrap();
    ok(&nodes
        .reconcile(&[src(3), w(1), w2.clone()], Scope::All)
        .await);
    assert_eq!(std::fs::read_to_string(w2_vol.join("file")).unwrap(), "w2");

    // Scheduled snapshots: each one asks the driver for a report of its node (REFRESH),
    // whose reconcile (that node only) carries it; the node keeps running.
    let scheduled = |n: &mut NetworkNode| {
        n.snapshots = Some(weft_proto::v1::VolumeSnapshots {
            interval_seconds: 1,
            keep: 2,
            generation: 2,
            pinned: Vec::new(),
        })
    };
    let src_scheduled = volume_node("src", "198.18.71.2/24", scheduled);
    ok(&nodes
        .reconcile(&[src_scheduled.clone(), w(1)], Scope::All)
        .await);
    let sig = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = signals.recv().await.expect("signals open");
            if s.drift.what == crate::control::REFRESH {
                return s;
            }
        }
    })
    .await
    .expect("a REFRESH within 5 s");
    assert_eq!(sig.drift.key, "cow/src");
    let keys = vec![sig.drift.key.clone()];
    let refreshed = nodes
        .reconcile(&[src_scheduled, w(1)], Scope::Only(&keys))
        .await;
    ok(&refreshed);
    assert_eq!(refreshed.len(), 1);
    assert_eq!(pid_of(&refreshed[0]), p1);
    assert!(
        refreshed[0].snapshots.iter().any(|s| s.generation == 0),
        "{:?}",
        refreshed[0].snapshots
    );

    // Removal: the nodes' pool volumes and snapshots go.
    ok(&nodes.reconcile(&[], Scope::All).await);
    assert!(!pool.pool_dir.join("nodes/cow").exists());
    assert!(!pool.pool_dir.join("snapshots/cow").exists());
    ok(&seg.reconcile(&[], Scope::All).await);
    let _ = std::fs::remove_dir_all(&root);
}

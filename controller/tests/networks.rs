//! TDL networks through the controller's state: placed on the hosts whose agents can make
//! them, addressed from the IP shards, published as network-segment/network-node
//! resources, mirrored with the source's addresses, kept in sync, deleted without leftovers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_control::fake::FakeAgent;
use weft_control::{ResourceKey, Spec, kinds};
use weft_controller::state::AppState;
use weft_networks::{CreateRequest, MirrorRequest, NetworkEvent};
use weft_shards::{CreateShard, Family, ShardConfig};
use weft_store::MemoryStore;

const TDL: &str = "\
network: shop
addressing:
  shards: shopnet
nodes:
  web:
    image: nginx:latest
    ports: [80]
  db:
    image: postgres:16
    ports: [5432]
  cache:
    image: redis:7
    ports: [6379]
connections:
  web -> db:
    port: 5432
  web -> cache:
    port: 6379
    bandwidth: 100mbit
";

fn network_agent() -> FakeAgent {
    FakeAgent {
        kinds: Some(
            [
                kinds::NETWORK_SEGMENT,
                kinds::NETWORK_NODE,
                kinds::WORKLOAD_ADDRESSES,
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        ),
        ..Default::default()
    }
}

async fn state() -> AppState {
    let s = AppState::builder()
        .shard_config(ShardConfig {
            pools: vec!["198.18.64.0/20".parse().unwrap()],
            ..ShardConfig::default()
        })
        .start(Arc::new(MemoryStore::default()))
        .unwrap();
    s.shards
        .create_shard(CreateShard {
            family: Family::Ipv4,
            prefix_len: 24,
            network_id: Some("shopnet".into()),
            reserved: false,
        })
        .await
        .unwrap();
    for (h, a) in [
        ("hv1", "198.19.0.65"),
        ("hv2", "198.19.0.66"),
        ("hv3", "198.19.0.67"),
    ] {
        s.hosts.set_underlay(h, Some(a.parse().unwrap()));
    }
    s
}

fn node_spec(s: &AppState, host: &str, key: &str) -> Option<weft_proto::v1::NetworkNode> {
    match s
        .control
        .resource(host, kinds::NETWORK_NODE, key)
        .map(|r| r.spec)
    {
        Some(Spec::NetworkNode(n)) => Some(n),
        _ => None,
    }
}

fn host_of(s: &AppState, key: &str) -> String {
    ["hv1", "hv2", "hv3"]
        .into_iter()
        .find(|h| node_spec(s, h, key).is_some())
        .unwrap_or_else(|| panic!("{key} is on no host"))
        .to_owned()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_network_is_placed_addressed_published_mirrored_synced_and_deleted() {
    let s = state().await;
    let mut events = s.networks.subscribe();
    // No agent that can make networks yet: nowhere to place it.
    let e = s
        .networks
        .create(CreateRequest {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no hypervisor"), "{e}");
    assert!(s.networks.get("shop").is_none());

    let _a1 = network_agent().spawn(s.control.clone(), "hv1");
    let _a2 = network_agent().spawn(s.control.clone(), "hv2");
    let rec = s
        .networks
        .create(CreateRequest {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rec.hosts(), vec!["hv1".to_string(), "hv2".to_string()]);
    assert!(rec.vni >= 10_000);
    assert!(matches!(
        events.try_recv(),
        Ok(NetworkEvent::Created { .. })
    ));

    // Each node has an address from the network's shard, on the host it was placed on.
    let web_host = host_of(&s, "shop/web");
    let web = node_spec(&s, &web_host, "shop/web").unwrap();
    assert_eq!(web.addresses.len(), 1);
    assert!(
        web.addresses[0].cidr.starts_with("198.18."),
        "{:?}",
        web.addresses
    );
    assert!(!web.addresses[0].shard_id.is_empty());
    let web_ip = web.addresses[0].cidr.split('/').next().unwrap().to_owned();
    // db accepts tcp 5432 from web's address only; web accepts nothing (no connection
    // targets it); web's traffic to cache is limited to 100 Mbit/s.
    let db_host = host_of(&s, "shop/db");
    let db = node_spec(&s, &db_host, "shop/db").unwrap();
    assert_eq!(db.firewall.len(), 1, "{:?}", db.firewall);
    assert_eq!(db.firewall[0].sources, vec![format!("{web_ip}/32")]);
    assert_eq!(db.firewall[0].protocol, "tcp");
    assert_eq!(db.firewall[0].ports[0].first, 5432);
    assert!(db.firewall[0].accept);
    assert!(web.firewall.is_empty());
    assert_eq!(web.egress_limits.len(), 1);
    assert_eq!(web.egress_limits[0].bits_per_second, 100_000_000);
    assert_eq!(web.runtime.as_ref().unwrap().image, "nginx:latest");
    // The network spans two hosts: each has the segment with a VXLAN to the other.
    for (h, peer) in [("hv1", "198.19.0.66"), ("hv2", "198.19.0.65")] {
        let Some(Spec::NetworkSegment(seg)) = s
            .control
            .resource(h, kinds::NETWORK_SEGMENT, "shop")
            .map(|r| r.spec)
        else {
            panic!("no segment on {h}");
        };
        assert_eq!(seg.vni, rec.vni);
        assert_eq!(seg.peers, vec![peer.to_string()]);
    }
    // The (fake) agents apply it: the status says so per host.
    eventually("the network applied", || {
        s.networks
            .status("shop")
            .is_some_and(|st| st.in_sync && st.hosts.len() == 2)
    })
    .await;

    // A mirror of it on a third host: the same addresses, its own VNI and names.
    let _a3 = network_agent().spawn(s.control.clone(), "hv3");
    let m = s
        .networks
        .mirror(MirrorRequest {
            source: Some("shop".into()),
            destination: "shopdr".into(),
            hosts: vec!["hv3".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_ne!(m.vni, rec.vni);
    let mweb = node_spec(&s, "hv3", "shopdr/web").unwrap();
    assert_eq!(mweb.addresses[0].cidr, web.addresses[0].cidr);
    assert!(
        mweb.addresses[0].shard_id.is_empty(),
        "a mirror holds no shard addresses"
    );
    let Some(Spec::NetworkSegment(mseg)) = s
        .control
        .resource("hv3", kinds::NETWORK_SEGMENT, "shopdr")
        .map(|r| r.spec)
    else {
        panic!("no mirror segment");
    };
    assert_eq!(mseg.vni, 0, "one host: no VXLAN");
    // Replication: the mirror's database and cache are replicas of the source's, through
    // an import in the mirror node and an export of the source's host open to hv3 only.
    let mdb = node_spec(&s, "hv3", "shopdr/db").unwrap();
    let rt = mdb.runtime.as_ref().unwrap();
    assert_eq!(rt.image, "postgres:16+replica");
    assert_eq!(
        rt.env.get("WEFT_REPLICA_PORT").map(String::as_str),
        Some("5432")
    );
    assert_eq!(mdb.imports.len(), 1);
    assert_eq!(mdb.imports[0].local_port, 5432);
    let sdb = node_spec(&s, &db_host, "shop/db").unwrap();
    assert_eq!(sdb.exports.len(), 1, "{sdb:?}");
    assert_eq!(sdb.exports[0].peers, vec!["198.19.0.67".to_string()]);
    let src_underlay = if db_host == "hv1" {
        "198.19.0.65"
    } else {
        "198.19.0.66"
    };
    assert_eq!(
        mdb.imports[0].remote,
        format!("{src_underlay}:{}", sdb.exports[0].listen_port)
    );
    // The web node is not replicated.
    assert!(
        node_spec(&s, "hv3", "shopdr/web")
            .unwrap()
            .imports
            .is_empty()
    );

    // A source node's process restarted (reported by its agent as drift): the mirror's
    // copy is restarted too.
    assert_eq!(mweb.runtime.as_ref().unwrap().restart_generation, 0);
    s.control.drift(vec![weft_control::DriftRepaired {
        host: web_host.clone(),
        resource: ResourceKey::new(kinds::NETWORK_NODE, "shop/web"),
        what: "process killed by signal 9; restarted as pid 4242".into(),
        detected_unix_ns: 1,
        repaired_unix_ns: 2,
        error: String::new(),
        kept: false,
    }]);
    eventually("the mirror's web restarted", || {
        node_spec(&s, "hv3", "shopdr/web")
            .is_some_and(|n| n.runtime.is_some_and(|r| r.restart_generation == 1))
    })
    .await;
    // Other drift of the source (an address put back) restarts nothing.
    s.control.drift(vec![weft_control::DriftRepaired {
        host: web_host.clone(),
        resource: ResourceKey::new(kinds::NETWORK_NODE, "shop/web"),
        what: "address 198.18.64.2/24 removed".into(),
        detected_unix_ns: 3,
        repaired_unix_ns: 4,
        error: String::new(),
        kept: false,
    }]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = node_spec(&s, "hv3", "shopdr/web").unwrap().runtime.unwrap();
    assert_eq!(r.restart_generation, 1);

    // A change made by hand in the source (an address added, a rule added), kept by its agent and reported: taken into the source's desired
    // state and carried to the mirror's copy; the mirror's copy does not keep its own.
    let web = node_spec(&s, &web_host, "shop/web").unwrap();
    assert!(web.keep_hand_changes, "a source propagates by default");
    assert!(
        !node_spec(&s, "hv3", "shopdr/web")
            .unwrap()
            .keep_hand_changes
    );
    let mut live: Vec<String> = web.addresses.iter().map(|a| a.cidr.clone()).collect();
    live.push("198.18.99.7/24".into());
    let kept_rules = vec![weft_proto::v1::FirewallRule {
        sources: vec!["198.18.99.0/24".into()],
        protocol: "tcp".into(),
        ports: vec![weft_proto::v1::PortRange {
            first: 8080,
            last: 8080,
        }],
        accept: true,
    }];
    assert_ne!(web.firewall, kept_rules);
    let mut report = s.control.observed(&web_host);
    let rk = ResourceKey::new(kinds::NETWORK_NODE, "shop/web");
    report.resources.get_mut(&rk).unwrap().hand_changes = Some(weft_proto::v1::NodeHandChanges {
        addresses: live.clone(),
        firewall: kept_rules.clone(),
        foreign_rules: vec!["tcp dport 9999 counter accept".into()],
        changes: vec!["address 198.18.99.7/24 added".into()],
        addresses_changed: true,
        firewall_changed: true,
    });
    let mut events = s.networks.subscribe();
    assert!(s.control.report(&web_host, report));
    s.control.drift(vec![weft_control::DriftRepaired {
        host: web_host.clone(),
        resource: rk.clone(),
        what: "address 198.18.99.7/24 added".into(),
        detected_unix_ns: 5,
        repaired_unix_ns: 0,
        error: String::new(),
        kept: true,
    }]);
    eventually("the hand change carried to the mirror", || {
        node_spec(&s, "hv3", "shopdr/web").is_some_and(|n| {
            n.addresses.iter().any(|a| a.cidr == "198.18.99.7/24") && n.firewall == kept_rules
        })
    })
    .await;
    let web = node_spec(&s, &web_host, "shop/web").unwrap();
    assert!(web.addresses.iter().any(|a| a.cidr == "198.18.99.7/24"));
    assert_eq!(web.firewall, kept_rules);
    let st = s.networks.status("shopdr").unwrap();
    assert_eq!(
        st.hand_changes["web"].addresses.as_deref(),
        Some(live.as_slice())
    );
    let ev = loop {
        match events.try_recv() {
            Ok(NetworkEvent::DriftPropagated {
                node,
                mirrors,
                foreign_rules,
                ..
            }) => break (node, mirrors, foreign_rules),
            Ok(_) => continue,
            Err(e) => panic!("no drift.propagated event: {e}"),
        }
    };
    assert_eq!(ev.0, "web");
    assert_eq!(ev.1, vec!["shopdr".to_string()]);
    assert_eq!(ev.2, vec!["tcp dport 9999 counter accept".to_string()]);
    // A network that repairs takes nothing in: the report is ignored.
    // (And a new definition drops the hand changes: below, at the update.)

    // A node added to the source shows up in the mirror.
    let grown = format!("{TDL}  \nnodes_extra: []\n");
    assert!(s.networks.update("shop", &grown, "shop.tdl").await.is_err());
    let grown = TDL.replace(
        "  cache:\n",
        "  queue:\n    image: redis:7\n    ports: [6380]\n  cache:\n",
    );
    let (_, changes) = s.networks.update("shop", &grown, "shop.tdl").await.unwrap();
    assert!(changes.iter().any(|c| c.contains("queue")), "{changes:?}");
    assert!(
        changes
            .iter()
            .any(|c| c.contains("hand changes of node web dropped")),
        "{changes:?}"
    );
    assert!(
        !node_spec(&s, &web_host, "shop/web")
            .unwrap()
            .addresses
            .iter()
            .any(|a| a.cidr == "198.18.99.7/24")
    );
    eventually("the mirror's copy back to the definition", || {
        node_spec(&s, "hv3", "shopdr/web")
            .is_some_and(|n| !n.addresses.iter().any(|a| a.cidr == "198.18.99.7/24"))
    })
    .await;
    assert!(node_spec(&s, "hv3", "shopdr/queue").is_some());
    let q_host = host_of(&s, "shop/queue");
    assert!(
        !node_spec(&s, &q_host, "shop/queue")
            .unwrap()
            .addresses
            .is_empty()
    );

    // A node removed from the source goes from the mirror, and its addresses go back.
    let q_addr: std::net::IpAddr = node_spec(&s, &q_host, "shop/queue").unwrap().addresses[0]
        .cidr
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(s.shards.read().allocation(q_addr).is_some());
    s.networks.update("shop", TDL, "shop.tdl").await.unwrap();
    assert!(node_spec(&s, "hv3", "shopdr/queue").is_none());
    assert!(node_spec(&s, &q_host, "shop/queue").is_none());
    assert!(s.shards.read().allocation(q_addr).is_none());

    // A wrong TDL is refused with its position, and changes nothing.
    let before = s.networks.get("shop").unwrap().revision;
    let e = s
        .networks
        .update(
            "shop",
            "network: shop\nnodes:\n  web:\n    ports: [0]\n",
            "bad.tdl",
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("bad.tdl:4:"), "{e}");
    assert_eq!(s.networks.get("shop").unwrap().revision, before);

    // Deleting the source: its resources are withdrawn everywhere and its addresses go
    // back to the shard (the same workloads hold none).
    let web_addr: std::net::IpAddr = web_ip.parse().unwrap();
    assert!(s.shards.read().allocation(web_addr).is_some());
    s.networks.delete("shop").await.unwrap();
    for h in ["hv1", "hv2"] {
        let left: Vec<ResourceKey> = s
            .control
            .desired(h)
            .resources
            .keys()
            .filter(|k| k.key.starts_with("shop"))
            .cloned()
            .collect();
        assert!(left.is_empty(), "{h}: {left:?}");
    }
    assert!(s.shards.read().allocation(web_addr).is_none());
    assert!(s.networks.get("shop").is_none());
    // The mirror stays, with its own copy.
    assert!(node_spec(&s, "hv3", "shopdr/web").is_some());
}

//! Weaves through the controller's state, with fake agents that answer snapshots and
//! syncs: the history of an environment by time; a weave made now or from the past takes
//! the revision and, per node with volumes, the snapshot in force then, is placed on the
//! environment's hosts with clone specs, and pins its snapshots; routes, activation and
//! deactivation are steer specs (kept at share 0 when deactivated); a second weave cannot
//! take a node another holds; syncs bump generations and wait for the agents; delete
//! leaves nothing; a restarted controller publishes it all again. Then the same over REST
//! (status codes, problem+json naming the field, events) and gRPC (the real binary).

#[allow(dead_code)] // the shard helpers are not used here
mod common;
#[allow(dead_code)]
mod insecure;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use weft_control::fake::FakeAgent;
use weft_control::{Spec, kinds};
use weft_controller::AppState;
use weft_networks::{CreateRequest as NetworkCreate, Role};
use weft_proto::v1::{self as wire, NetworkNode, Steer};
use weft_store::{MemoryStore, Store};
use weft_weaves::WeaveError;

use common::{call, sse_data};

const TDL: &str = "\
network: shop
nodes:
  web:
    image: nginx
    ports: [80, 443]
    addresses: [10.9.0.2/24]
    host: hv1
    volumes: [\"static:/srv\"]
  db:
    image: alpine:3
    ports: [5432]
    addresses: [10.9.0.3/24]
    host: hv2
    volumes: [\"data:/var/lib/db\"]
  tool:
    image: alpine:3
    addresses: [10.9.0.4/24]
    host: hv1
";

/// Revision 2: a node more, `cache`.
fn tdl2() -> String {
    format!(
        "{TDL}  cache:\n    image: redis:7\n    ports: [6379]\n    addresses: [10.9.0.5/24]\n    host: hv2\n"
    )
}

const HOSTS: [(&str, &str); 2] = [("hv1", "198.19.0.65"), ("hv2", "198.19.0.66")];

fn agent(volumes: bool) -> FakeAgent {
    FakeAgent {
        kinds: Some(
            [
                kinds::NETWORK_SEGMENT,
                kinds::NETWORK_NODE,
                kinds::STEER,
                kinds::STEER_TARGET,
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        ),
        volumes,
        ..Default::default()
    }
}

fn state_on(store: Arc<dyn Store>) -> AppState {
    let s = AppState::builder().start(store).unwrap();
    for (h, a) in HOSTS {
        s.hosts.set_underlay(h, Some(a.parse().unwrap()));
    }
    // As an agent's registration with an underlay address does.
    s.networks.republish();
    s.weaves.republish();
    s.weaves.set_wait(Duration::from_secs(5));
    s
}

fn agents(s: &AppState, volumes: bool) -> Vec<tokio::task::JoinHandle<()>> {
    HOSTS
        .iter()
        .map(|(h, _)| agent(volumes).spawn(s.control.clone(), h))
        .collect()
}

/// `shop` on hv1 and hv2 with agents that answer snapshots and syncs.
async fn environment() -> (AppState, Vec<tokio::task::JoinHandle<()>>) {
    let s = state_on(Arc::new(MemoryStore::default()));
    let a = agents(&s, true);
    create_shop(&s).await;
    (s, a)
}

async fn create_shop(s: &AppState) {
    s.networks
        .create(NetworkCreate {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
}

fn steer(s: &AppState, host: &str, node: &str) -> Option<Steer> {
    match s
        .control
        .resource(host, kinds::STEER, &format!("weave/shop/{node}"))?
        .spec
    {
        Spec::Steer(st) => Some(st),
        _ => None,
    }
}

fn node_spec(s: &AppState, host: &str, network: &str, node: &str) -> NetworkNode {
    match s
        .control
        .resource(host, kinds::NETWORK_NODE, &format!("{network}/{node}"))
        .unwrap_or_else(|| panic!("no node {network}/{node} on {host}"))
        .spec
    {
        Spec::NetworkNode(n) => n,
        other => panic!("{other:?}"),
    }
}

async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

fn field(e: WeaveError) -> (String, String) {
    match e {
        WeaveError::Invalid { field, message } => (field, message),
        other => panic!("not invalid: {other:?}"),
    }
}

#[tokio::test]
async fn history_answers_which_revision_was_in_force_at_a_time() {
    let (s, _a) = environment().await;
    let first = s.networks.get("shop").unwrap();
    tick().await;
    let between = agent_common::time::now_unix_ns();
    tick().await;
    let (second, _) = s
        .networks
        .update("shop", &tdl2(), "shop.tdl")
        .await
        .unwrap();
    let history = s.networks.history("shop").unwrap();
    let revisions: Vec<u64> = history.iter().map(|h| h.revision).collect();
    assert_eq!(revisions, [first.revision, second.revision]);
    assert!(history[0].applied_unix_ns < between && between < history[1].applied_unix_ns);
    let then = s.networks.at("shop", between).unwrap();
    assert_eq!(then.revision, first.revision);
    assert!(!then.record.network.nodes.contains_key("cache"));
    let now = s
        .networks
        .at("shop", agent_common::time::now_unix_ns())
        .unwrap();
    assert_eq!(now.revision, second.revision);
    assert!(now.record.tdl.contains("cache"));
    let e = s.networks.at("shop", 1).unwrap_err().to_string();
    assert!(e.contains("first revision"), "{e}");
    // REST: the revisions with their TDL.
    let (status, _, h) = call(&s, Method::GET, "/networks/shop/history", "").await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["history"].as_array().unwrap().len(), 2);
    assert_eq!(h["history"][1]["revision"], second.revision);
    assert!(h["history"][1]["tdl"].as_str().unwrap().contains("cache"));
    assert!(h["history"][0]["applied_unix_ns"].as_u64().unwrap() > 0);
    let (status, _, _) = call(&s, Method::GET, "/networks/nope/history", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_weave_of_now_snapshots_clones_and_sits_on_the_environment_hosts() {
    let (s, _a) = environment().await;
    // The schedule is in the specs of the nodes with volumes only.
    let web = node_spec(&s, "hv1", "shop", "web");
    let sched = web.snapshots.clone().unwrap();
    assert_eq!((sched.interval_seconds, sched.keep), (300, 12));
    assert!(node_spec(&s, "hv1", "shop", "tool").snapshots.is_none());

    let info = s.weaves.create("shop", None, None).await.unwrap();
    assert_eq!(info.id, "shop-w1");
    assert_eq!(info.state, "running", "{info:?}");
    assert!(info.ready_seconds > 0.0);
    assert_eq!(
        info.environment_revision,
        s.networks.get("shop").unwrap().revision
    );
    assert_eq!(
        info.snapshots.keys().collect::<Vec<_>>(),
        ["db", "web"],
        "nodes with volumes only"
    );
    assert_eq!(info.placement["web"], "hv1");
    assert_eq!(info.placement["db"], "hv2");
    assert_eq!(info.placement["tool"], "hv1");
    let net = s.networks.get("shop-w1").unwrap();
    let env = s.networks.get("shop").unwrap();
    assert_eq!(
        net.role,
        Role::Weave {
            environment: "shop".into(),
            environment_revision: env.revision
        }
    );
    assert_ne!(net.vni, env.vni);
    assert_eq!(net.addresses["web"][0].cidr, env.addresses["web"][0].cidr);
    // Clones of the snapshot of the generation asked for (taken while the weave is made),
    // on the same host; pinned in the environment's specs.
    let cw = node_spec(&s, "hv1", "shop-w1", "web").clone.unwrap();
    assert_eq!(cw.source, "shop/web");
    assert_eq!((cw.snapshot.as_str(), cw.generation), ("", 1));
    assert!(!info.snapshots["web"].is_empty());
    assert!(node_spec(&s, "hv1", "shop-w1", "tool").clone.is_none());
    assert!(node_spec(&s, "hv1", "shop-w1", "web").snapshots.is_none());
    let pinned = node_spec(&s, "hv2", "shop", "db").snapshots.unwrap();
    assert_eq!(pinned.pinned, [info.snapshots["db"].clone()]);
    assert_eq!(pinned.generation, 1);
    // A second weave gets the next id; a weave is not an environment.
    let two = s.weaves.create("shop", None, None).await.unwrap();
    assert_eq!(two.id, "shop-w2");
    assert_eq!(
        node_spec(&s, "hv2", "shop", "db")
            .snapshots
            .unwrap()
            .pinned
            .len(),
        2
    );
    let (f, m) = field(s.weaves.create("shop-w1", None, None).await.unwrap_err());
    assert_eq!(f, "environment");
    assert!(m.contains("not the source of further weaves"), "{m}");
    // An environment with weaves is not deleted; a weave's network only as the weave.
    let e = s.networks.delete("shop").await.unwrap_err().to_string();
    assert!(
        e.contains("shop-w1") && e.contains("delete them first"),
        "{e}"
    );
    let e = s.networks.delete("shop-w1").await.unwrap_err().to_string();
    assert!(e.contains("/weaves/shop-w1"), "{e}");
}

#[tokio::test]
async fn a_weave_from_the_past_takes_the_revision_and_snapshot_in_force_then() {
    let (s, _a) = environment().await;
    tick().await;
    let before_any_snapshot = agent_common::time::now_unix_ns();
    tick().await;
    let first = s
        .networks
        .snapshot_now("shop", Duration::from_secs(5))
        .await
        .unwrap();
    tick().await;
    let t1 = agent_common::time::now_unix_ns();
    tick().await;
    let (rev2, _) = s
        .networks
        .update("shop", &tdl2(), "shop.tdl")
        .await
        .unwrap();
    let second = s
        .networks
        .snapshot_now("shop", Duration::from_secs(5))
        .await
        .unwrap();
    tick().await;
    let t2 = agent_common::time::now_unix_ns();
    assert_ne!(first["db"].id, second["db"].id);

    let old = s
        .weaves
        .create("shop", Some(t1), Some("old".into()))
        .await
        .unwrap();
    assert!(old.environment_revision < rev2.revision);
    assert_eq!(old.at_unix_ns, t1);
    assert_eq!(old.snapshots["db"], first["db"].id);
    assert_eq!(old.snapshots["web"], first["web"].id);
    assert!(
        !s.networks
            .get("old")
            .unwrap()
            .network
            .nodes
            .contains_key("cache")
    );
    assert_eq!(
        node_spec(&s, "hv2", "old", "db").clone.unwrap().snapshot,
        first["db"].id
    );

    let new = s
        .weaves
        .create("shop", Some(t2), Some("new".into()))
        .await
        .unwrap();
    assert_eq!(new.environment_revision, rev2.revision);
    assert_eq!(new.snapshots["db"], second["db"].id);
    assert_eq!(new.placement["cache"], "hv2");

    // Before the first snapshot: the error names the node and the earliest snapshot.
    let (f, m) = field(
        s.weaves
            .create("shop", Some(before_any_snapshot), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "at");
    assert!(m.contains("has no volume snapshot"), "{m}");
    assert!(
        m.contains(&first["db"].id) || m.contains(&first["web"].id),
        "{m}"
    );
    // Before the environment existed.
    let (f, m) = field(s.weaves.create("shop", Some(1), None).await.unwrap_err());
    assert_eq!(f, "at");
    assert!(m.contains("first revision"), "{m}");
    let (f, _) = field(
        s.weaves
            .create("shop", Some(u64::MAX), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "at");
    // Both pinned.
    let pinned = node_spec(&s, "hv2", "shop", "db").snapshots.unwrap().pinned;
    assert_eq!(pinned.len(), 2, "{pinned:?}");
}

#[tokio::test]
async fn routes_activation_and_deactivation_are_steer_specs() {
    let (s, _a) = environment().await;
    let w = s.weaves.create("shop", None, None).await.unwrap();
    assert!(steer(&s, "hv1", "web").is_none());

    let info = s.weaves.route(&w.id, 80, None, None, false).await.unwrap();
    assert_eq!(info.routes.len(), 1);
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(st.owner, "weave/shop-w1");
    assert_eq!((st.network.as_str(), st.node.as_str()), ("shop", "web"));
    assert_eq!(st.ports, [80]);
    assert_eq!(st.share_ppm, 1_000_000);
    assert_eq!(
        (
            st.target_network.as_str(),
            st.target_node.as_str(),
            st.target_host.as_str()
        ),
        ("shop-w1", "web", "")
    );
    assert!(steer(&s, "hv2", "db").is_none());
    s.weaves
        .route(&w.id, 443, Some("web"), None, false)
        .await
        .unwrap();
    assert_eq!(steer(&s, "hv1", "web").unwrap().ports, [80, 443]);
    // A port no node declares: the error lists the nodes' ports.
    let (f, m) = field(
        s.weaves
            .route(&w.id, 8080, None, None, false)
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "port");
    assert!(m.contains("web: 80, 443") && m.contains("db: 5432"), "{m}");
    let (f, _) = field(
        s.weaves
            .route(&w.id, 0, None, None, false)
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "port");

    // Activation: every node, every port, one spec per node; and a snapshot of the
    // environment's volumes (weave operations take one, at most one a second: a batch of
    // its own when it was taken).
    let snapshots = || s.networks.get("shop").unwrap().snapshot_generation;
    let (before, snap_before) = (s.control.generation("hv1"), snapshots());
    let info = s.weaves.activate(&w.id).await.unwrap();
    assert!(info.active);
    let snapshot_batch = snapshots() - snap_before;
    assert!(snapshot_batch <= 1);
    assert_eq!(
        s.control.generation("hv1"),
        before + 1 + snapshot_batch,
        "one batch per host for the steers"
    );
    // A second later an operation takes a snapshot again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let snap_before = snapshots();
    s.weaves.deactivate(&w.id).await.unwrap();
    assert_eq!(
        snapshots(),
        snap_before + 1,
        "deactivation snapshots the environment"
    );
    s.weaves.activate(&w.id).await.unwrap();
    assert_eq!(snapshots(), snap_before + 1, "coalesced within a second");
    for (host, node) in [("hv1", "web"), ("hv2", "db"), ("hv1", "tool")] {
        let st = steer(&s, host, node).unwrap();
        assert!(st.ports.is_empty(), "{node}: {st:?}");
        assert_eq!(st.share_ppm, 1_000_000);
        assert_eq!(st.target_network, "shop-w1");
    }
    // A second weave cannot take a node the first holds.
    let other = s.weaves.create("shop", None, None).await.unwrap();
    match s.weaves.route(&other.id, 5432, None, None, false).await {
        Err(WeaveError::Conflict(m)) => assert!(m.contains("shop-w1"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        s.weaves.activate(&other.id).await,
        Err(WeaveError::Conflict(_))
    ));

    // Back to the environment (by its id): the steers stay, share 0, routed ports only.
    let info = s.weaves.activate("shop").await.unwrap();
    assert_eq!(info.id, "shop-w1");
    assert!(!info.active);
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(
        (st.ports.as_slice(), st.share_ppm),
        ([80, 443].as_slice(), 0)
    );
    let st = steer(&s, "hv2", "db").unwrap();
    assert_eq!((st.ports.len(), st.share_ppm), (0, 0));
    assert_eq!(s.weaves.info("shop-w1").unwrap().routes.len(), 2);
    assert!(matches!(
        s.weaves.activate("shop").await,
        Err(WeaveError::Conflict(_))
    ));
    // A route again steers again; removing one takes its port off.
    s.weaves
        .route(&w.id, 5432, None, None, false)
        .await
        .unwrap();
    assert_eq!(steer(&s, "hv1", "web").unwrap().share_ppm, 1_000_000);
    assert_eq!(steer(&s, "hv2", "db").unwrap().ports, [5432]);
    s.weaves.route(&w.id, 80, None, None, true).await.unwrap();
    assert_eq!(steer(&s, "hv1", "web").unwrap().ports, [443]);
    assert!(matches!(
        s.weaves.route(&w.id, 80, None, None, true).await,
        Err(WeaveError::NotFound(_))
    ));
    s.weaves.deactivate(&w.id).await.unwrap();
    assert_eq!(steer(&s, "hv2", "db").unwrap().share_ppm, 0);
}

#[tokio::test]
async fn routes_by_request_are_steer_request_rules() {
    let (s, _a) = environment().await;
    let w = s.weaves.create("shop", None, None).await.unwrap();
    let m = |header: &str, value: &str| weft_weaves::RequestMatch {
        header: header.into(),
        value: value.into(),
    };
    let info = s
        .weaves
        .route(&w.id, 80, Some("web"), Some(&m("X-Branch", " w1 ")), false)
        .await
        .unwrap();
    assert_eq!(info.routes.len(), 1);
    assert_eq!(
        (
            info.routes[0].header.as_str(),
            info.routes[0].header_value.as_str()
        ),
        ("x-branch", "w1")
    );
    let rule = |port: u32, header: &str, value: &str| wire::SteerRequestRule {
        port,
        header: header.into(),
        value: value.into(),
    };
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(
        (st.ports.as_slice(), st.share_ppm),
        ([80].as_slice(), 1_000_000)
    );
    assert_eq!(st.request_rules, [rule(80, "x-branch", "w1")]);
    // A second header of the same port is an alternative; any value of it.
    s.weaves
        .route(&w.id, 80, Some("web"), Some(&m("x-canary", "")), false)
        .await
        .unwrap();
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(st.ports, [80]);
    assert_eq!(
        st.request_rules,
        [rule(80, "x-branch", "w1"), rule(80, "x-canary", "")]
    );
    // A bad header name is refused naming the field; nothing changes.
    let (f, msg) = field(
        s.weaves
            .route(&w.id, 80, Some("web"), Some(&m("x branch", "")), false)
            .await
            .unwrap_err(),
    );
    assert_eq!(f, "header", "{msg}");
    // Removing one header route leaves the other.
    s.weaves
        .route(&w.id, 80, Some("web"), Some(&m("X-Canary", "")), true)
        .await
        .unwrap();
    assert_eq!(
        steer(&s, "hv1", "web").unwrap().request_rules,
        [rule(80, "x-branch", "w1")]
    );
    // The whole port replaces its header routes; a header route is then a conflict.
    s.weaves
        .route(&w.id, 80, Some("web"), None, false)
        .await
        .unwrap();
    let st = steer(&s, "hv1", "web").unwrap();
    assert!(st.request_rules.is_empty(), "{st:?}");
    assert_eq!(s.weaves.info(&w.id).unwrap().routes.len(), 1);
    match s
        .weaves
        .route(&w.id, 80, Some("web"), Some(&m("x-branch", "w1")), false)
        .await
    {
        Err(WeaveError::Conflict(msg)) => assert!(msg.contains("routed whole"), "{msg}"),
        r => panic!("{r:?}"),
    }
    // Back by request, then active: an active weave takes every connection, no rules.
    s.weaves
        .route(&w.id, 80, Some("web"), None, true)
        .await
        .unwrap();
    s.weaves
        .route(&w.id, 80, Some("web"), Some(&m("x-branch", "w1")), false)
        .await
        .unwrap();
    s.weaves.activate(&w.id).await.unwrap();
    let st = steer(&s, "hv1", "web").unwrap();
    assert!(st.ports.is_empty() && st.request_rules.is_empty(), "{st:?}");
    s.weaves.deactivate(&w.id).await.unwrap();
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(
        (st.ports.as_slice(), st.share_ppm, st.request_rules.len()),
        ([80].as_slice(), 0, 1)
    );
}

#[tokio::test]
async fn steers_follow_the_environment_s_nodes() {
    let (s, _a) = environment().await;
    let w = s.weaves.create("shop", None, None).await.unwrap();
    s.weaves.activate(&w.id).await.unwrap();
    assert!(steer(&s, "hv1", "tool").is_some());
    let without_tool = TDL.replace(
        "  tool:\n    image: alpine:3\n    addresses: [10.9.0.4/24]\n    host: hv1\n",
        "",
    );
    assert!(!without_tool.contains("tool"));
    s.networks
        .update("shop", &without_tool, "shop.tdl")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while steer(&s, "hv1", "tool").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the steer of a gone node stays"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(steer(&s, "hv1", "web").is_some());
}

#[tokio::test]
async fn a_node_a_shadow_steers_is_not_routed_to_a_weave() {
    let (s, _a) = environment().await;
    let w = s.weaves.create("shop", None, None).await.unwrap();
    s.shadows
        .create(weft_shadows::CreateRequest {
            id: "shop-shadow".into(),
            production: "shop".into(),
            nodes: vec!["web".into()],
            hosts: vec!["hv2".into()],
            policy: weft_shadows::ShadowPolicy {
                share_ppm: 100_000,
                divert_ppm: 100_000,
                ports: vec![80],
                ..Default::default()
            },
            noise_baseline: false,
        })
        .await
        .unwrap();
    match s.weaves.route(&w.id, 80, None, None, false).await {
        Err(WeaveError::Conflict(m)) => assert!(m.contains("shadow/shop-shadow"), "{m}"),
        r => panic!("{r:?}"),
    }
    // Another node is free.
    s.weaves
        .route(&w.id, 5432, None, None, false)
        .await
        .unwrap();
}

#[tokio::test]
async fn syncs_bump_generations_and_wait_for_the_agents() {
    let (s, _a) = environment().await;
    let a = s.weaves.create("shop", None, None).await.unwrap();
    let b = s.weaves.create("shop", None, None).await.unwrap();
    let r = s.weaves.sync(&a.id, &b.id, "data").await.unwrap();
    assert_eq!(r.destination.id, b.id);
    assert_eq!(r.nodes.len(), 1);
    assert_eq!(r.nodes[0].node, "db");
    assert_eq!(r.nodes[0].method, "copy");
    assert!(r.nodes[0].took_seconds > 0.0);
    let f = node_spec(&s, "hv2", &b.id, "db").sync_from;
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].volume.as_str(), f[0].source.as_str(), f[0].generation),
        ("data", "shop-w1/db", 1)
    );
    s.weaves.sync(&a.id, &b.id, "data").await.unwrap();
    assert_eq!(node_spec(&s, "hv2", &b.id, "db").sync_from[0].generation, 2);
    // Into the environment itself: its state is snapshotted first, and waited for.
    let snap_before = s.networks.get("shop").unwrap().snapshot_generation;
    let r = s.weaves.sync(&b.id, "shop", "data").await.unwrap();
    let snap_after = s.networks.get("shop").unwrap().snapshot_generation;
    assert!(
        snap_after > snap_before,
        "no snapshot before production's volume was replaced"
    );
    assert!(
        s.networks.snapshots("shop").unwrap()["db"]
            .iter()
            .any(|x| x.generation == snap_before + 1),
        "the snapshot before the sync was reported"
    );
    assert_eq!(r.destination.id, "shop");
    let f = node_spec(&s, "hv2", "shop", "db").sync_from;
    assert_eq!((f[0].source.as_str(), f[0].generation), ("shop-w2/db", 1));
    // Errors name the field.
    let (f, m) = field(s.weaves.sync(&a.id, &b.id, "nope").await.unwrap_err());
    assert_eq!(f, "volume");
    assert!(m.contains("db: data"), "{m}");
    let (f, _) = field(s.weaves.sync(&a.id, &a.id, "data").await.unwrap_err());
    assert_eq!(f, "source");
    let (f, _) = field(s.weaves.sync("ghost", &a.id, "data").await.unwrap_err());
    assert_eq!(f, "source");
    assert!(matches!(
        s.weaves.sync(&a.id, "ghost", "data").await,
        Err(WeaveError::NotFound(_))
    ));
}

#[tokio::test]
async fn agents_that_do_not_answer_time_out_clearly() {
    let s = state_on(Arc::new(MemoryStore::default()));
    let _a = agents(&s, false);
    create_shop(&s).await;
    s.weaves.set_wait(Duration::from_millis(200));
    match s.weaves.create("shop", None, None).await {
        Err(WeaveError::Timeout(m)) => assert!(m.contains("snapshot"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert!(s.weaves.list().is_empty());
}

#[tokio::test]
async fn delete_removes_steers_network_and_pins() {
    let (s, _a) = environment().await;
    let w = s.weaves.create("shop", None, None).await.unwrap();
    s.weaves.activate(&w.id).await.unwrap();
    assert!(steer(&s, "hv1", "web").is_some());
    let last = s.weaves.delete(&w.id).await.unwrap();
    assert_eq!(last.id, w.id);
    assert!(steer(&s, "hv1", "web").is_none());
    assert!(steer(&s, "hv2", "db").is_none());
    assert!(s.networks.get(&w.id).is_none());
    assert!(
        node_spec(&s, "hv2", "shop", "db")
            .snapshots
            .unwrap()
            .pinned
            .is_empty()
    );
    assert!(s.weaves.get(&w.id).is_none());
    assert!(matches!(
        s.weaves.delete(&w.id).await,
        Err(WeaveError::NotFound(_))
    ));
    // The environment can go now; its history goes with it.
    s.networks.delete("shop").await.unwrap();
    assert!(s.networks.history("shop").is_err());
}

#[tokio::test]
async fn a_restarted_controller_publishes_weaves_again() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let w = {
        let s = state_on(store.clone());
        let a = agents(&s, true);
        create_shop(&s).await;
        let w = s.weaves.create("shop", None, None).await.unwrap();
        s.weaves.route(&w.id, 80, None, None, false).await.unwrap();
        for h in a {
            h.abort();
        }
        s.shutdown().await;
        w
    };
    let s = state_on(store);
    let again = s.weaves.get(&w.id).unwrap();
    assert_eq!(again.snapshots, w.snapshots);
    let st = steer(&s, "hv1", "web").unwrap();
    assert_eq!(
        (st.ports.as_slice(), st.target_network.as_str()),
        ([80].as_slice(), "shop-w1")
    );
    assert_eq!(
        node_spec(&s, "hv1", "shop-w1", "web")
            .clone
            .unwrap()
            .generation,
        1
    );
    assert_eq!(
        node_spec(&s, "hv1", "shop", "web")
            .snapshots
            .unwrap()
            .pinned,
        [w.snapshots["web"].clone()]
    );
    assert_eq!(s.networks.history("shop").unwrap().len(), 1);
}

#[tokio::test]
async fn weaves_over_rest_with_problems_naming_the_field_and_events() {
    let (s, _a) = environment().await;
    let (status, _, all) = call(&s, Method::GET, "/weaves", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(all, json!({"weaves": []}));
    // Snapshots on demand.
    let (status, _, taken) = call(&s, Method::POST, "/networks/shop/snapshots", "").await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    assert!(taken["snapshots"]["db"]["id"].is_string(), "{taken}");
    let (status, _, listed) = call(&s, Method::GET, "/networks/shop/snapshots", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["snapshots"]["db"].as_array().unwrap().len(), 1);

    let events = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/weaves?weave=shop", 4).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let now = agent_common::time::rfc3339(agent_common::time::now_unix_ns());
    let (status, _, created) = call(
        &s,
        Method::POST,
        "/weaves",
        &json!({"environment": "shop", "at": now, "id": "canary"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    for k in [
        "id",
        "environment",
        "at_unix_ns",
        "environment_revision",
        "revision_applied_unix_ns",
        "created_unix_ns",
        "state",
        "error",
        "snapshots",
        "routes",
        "active",
        "placement",
        "ready_seconds",
    ] {
        assert!(created.get(k).is_some(), "{k} missing: {created}");
    }
    assert_eq!(created["state"], "running");
    assert_eq!(created["snapshots"]["db"], taken["snapshots"]["db"]["id"]);
    let (status, _, routed) =
        call(&s, Method::POST, "/weaves/canary/routes", r#"{"port": 80}"#).await;
    assert_eq!(status, StatusCode::OK, "{routed}");
    assert_eq!(routed["routes"], json!([{"node": "web", "port": 80}]));
    let (status, _, active) = call(&s, Method::POST, "/weaves/canary/activate", "").await;
    assert_eq!(status, StatusCode::OK, "{active}");
    assert_eq!(active["active"], true);
    let (status, _, back) = call(&s, Method::DELETE, "/weaves/canary/activate", "").await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["active"], false);
    let events = events.await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "weft.weave.created",
            "weft.weave.ready",
            "weft.weave.routed",
            "weft.weave.activated"
        ],
        "{events:?}"
    );
    assert_eq!(events[0]["subject"], "canary");
    assert_eq!(events[0]["specversion"], "1.0");

    let (status, _, one) = call(&s, Method::GET, "/weaves?environment=shop", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["weaves"][0]["id"], "canary");
    let (_, _, none) = call(&s, Method::GET, "/weaves?environment=other", "").await;
    assert_eq!(none["weaves"], json!([]));
    let (status, _, r) = call(&s, Method::DELETE, "/weaves/canary/routes/80?node=web", "").await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(r["routes"], json!([]));
    let (status, _, r) = call(&s, Method::DELETE, "/weaves/canary/routes/eighty", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{r}");

    // A second weave: sync between them; 409 for a node the first holds.
    let (status, _, second) = call(
        &s,
        Method::POST,
        "/weaves",
        &json!({"environment": "shop", "at": agent_common::time::now_unix_ns()}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    assert_eq!(second["id"], "shop-w1");
    let (status, ct, p) = call(
        &s,
        Method::POST,
        "/weaves/shop-w1/routes",
        r#"{"port": 80}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    assert_eq!(ct, "application/problem+json");
    assert!(p["detail"].as_str().unwrap().contains("canary"), "{p}");
    let (status, _, synced) = call(
        &s,
        Method::POST,
        "/weaves/shop-w1/sync",
        r#"{"source": "canary", "volume": "data"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{synced}");
    assert_eq!(synced["destination"]["id"], "shop-w1");
    assert_eq!(synced["nodes"][0]["node"], "db");
    assert_eq!(synced["nodes"][0]["method"], "copy");

    // Errors: problem+json naming the field.
    let cases = [
        (
            json!({"environment": "nope"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "environment",
        ),
        (
            json!({"environment": "shop", "at": "yesterday"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at",
        ),
        (
            json!({"environment": "shop", "at": true}),
            StatusCode::BAD_REQUEST,
            "at",
        ),
        (
            json!({"environment": "shop", "id": "Bad Id"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        (
            json!({"environment": "shop", "at": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at",
        ),
    ];
    for (body, code, f) in cases {
        let (status, ct, p) = call(&s, Method::POST, "/weaves", &body.to_string()).await;
        assert_eq!(status, code, "{body}: {p}");
        assert_eq!(ct, "application/problem+json");
        assert_eq!(p["parameter"], f, "{body}: {p}");
    }
    let (status, _, p) = call(&s, Method::POST, "/weaves", r#"{"at": 5}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("environment"), "{p}");
    let (status, _, _) = call(&s, Method::POST, "/weaves", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, p) = call(
        &s,
        Method::POST,
        "/weaves",
        r#"{"environment": "shop", "id": "canary"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    let (status, _, p) = call(&s, Method::POST, "/weaves/canary/routes", r#"{"port": 9}"#).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["parameter"], "port");
    let (status, _, p) = call(
        &s,
        Method::POST,
        "/weaves/canary/sync",
        r#"{"source": "shop-w1", "volume": "x"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p["parameter"], "volume");
    for (m, uri) in [
        (Method::GET, "/weaves/ghost"),
        (Method::DELETE, "/weaves/ghost"),
        (Method::POST, "/weaves/ghost/activate"),
        (Method::DELETE, "/weaves/ghost/activate"),
    ] {
        let (status, ct, _) = call(&s, m.clone(), uri, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{m} {uri}");
        assert_eq!(ct, "application/problem+json");
    }
    let (_, _, metrics) = call(&s, Method::GET, "/metrics", "").await;
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics.contains("weft_weaves{active=\"false\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_weaves{active=\"true\"} 0"),
        "{metrics}"
    );
    let (status, _, p) = call(&s, Method::DELETE, "/networks/shop", "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{p}");
    for id in ["canary", "shop-w1"] {
        let (status, _, d) = call(&s, Method::DELETE, &format!("/weaves/{id}"), "").await;
        assert_eq!(status, StatusCode::OK, "{d}");
    }
    let (status, _, _) = call(&s, Method::DELETE, "/networks/shop", "").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn weaves_over_grpc_need_a_token_and_answer_like_rest() {
    use tonic::Code;
    use weft_proto::v1 as wire;
    use weft_proto::v1::weave_service_client::WeaveServiceClient;

    // No agent runs: a weave's nodes never report; it answers after 1 s, provisioning.
    let c = insecure::start("grpc-weaves", &["--weave-wait-seconds", "1"]);
    let admin = c.admin.clone();
    let tdl = "network: shop\nnodes:\n  web:\n    image: nginx\n    ports: [80]\n    addresses: [10.9.0.2/24]\n";
    let (st, _) = insecure::http(
        &c,
        "POST",
        "/networks",
        &admin,
        &json!({"tdl": tdl, "file_name": "shop.tdl", "hosts": ["hv1"]}),
    );
    assert_eq!(st, 201);
    let mut grpc = WeaveServiceClient::new(insecure::channel(&c).await);
    let create = wire::CreateWeaveRequest {
        environment: "shop".into(),
        ..Default::default()
    };
    let e = grpc
        .create_weave(insecure::with_token(create.clone(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let mut events = grpc
        .watch_weave_events(insecure::with_token(
            wire::WatchWeaveEventsRequest { id: "shop".into() },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    let w = grpc
        .create_weave(insecure::with_token(create, Some(&admin)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.id, "shop-w1");
    assert_eq!(w.environment, "shop");
    assert_eq!(w.placement["web"], "hv1");
    assert_ne!(w.state, "running");
    let e = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.r#type, "weft.weave.created");
    let w = grpc
        .route_traffic(insecure::with_token(
            wire::RouteTrafficRequest {
                id: "shop-w1".into(),
                target_port: 80,
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        w.routes,
        [wire::WeaveRoute {
            node: "web".into(),
            port: 80,
            header: String::new(),
            header_value: String::new(),
        }]
    );
    let w = grpc
        .activate_weave(insecure::with_token(
            wire::ActivateWeaveRequest {
                id: "shop-w1".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(w.active);
    let w = grpc
        .activate_weave(insecure::with_token(
            wire::ActivateWeaveRequest { id: "shop".into() },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!w.active);
    let list = grpc
        .list_weaves(insecure::with_token(
            wire::ListWeavesRequest {
                environment: "shop".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.weaves.len(), 1);
    let e = grpc
        .create_weave(insecure::with_token(
            wire::CreateWeaveRequest {
                environment: "nope".into(),
                ..Default::default()
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("environment"), "{e}");
    let e = grpc
        .get_weave(insecure::with_token(
            wire::GetWeaveRequest { id: "ghost".into() },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = grpc
        .sync_volumes(insecure::with_token(
            wire::SyncVolumesRequest {
                source: "shop".into(),
                destination: "shop-w1".into(),
                volume: "data".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let d = grpc
        .delete_weave(insecure::with_token(
            wire::DeleteWeaveRequest {
                id: "shop-w1".into(),
            },
            Some(&admin),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.id, "shop-w1");
    let (st, v) = insecure::http(&c, "GET", "/weaves", &admin, &Value::Null);
    assert_eq!((st, v), (200, json!({"weaves": []})));
}

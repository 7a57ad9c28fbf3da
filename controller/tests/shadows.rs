//! Shadow environments through the controller's state: a shadow's networks are mirrors
//! of production, one shadow-tap per sampled node goes to the production node's host and
//! one shadow-sink to the host of the shadow's copy, wired to each other over the
//! underlay; a policy change touches the taps only; delete leaves nothing; a restarted
//! controller publishes them again; the state, counters and analysis come from the
//! (fake) agents' reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer as _, V2Serializer};
use weft_control::fake::FakeAgent;
use weft_control::{Spec, kinds};
use weft_controller::state::AppState;
use weft_networks::{CreateRequest as NetworkCreate, Role};
use weft_proto::v1::{
    ShadowEndpointStats, ShadowReport, ShadowSink, ShadowTap, ShadowTarget, Steer, SteerTarget,
};
use weft_shadows::{
    CreateRequest, FailoverCheck, ShadowError, ShadowEvent, ShadowPolicy, ShadowRecord,
};
use weft_shards::{CreateShard, Family, ShardConfig};
use weft_store::{MemoryStore, Store};

const TDL: &str = "\
network: shop
addressing:
  shards: shopnet
nodes:
  web:
    image: nginx:latest
    ports: [80]
    host: hv1
  db:
    image: postgres:16
    ports: [5432]
    host: hv2
  tool:
    image: busybox:latest
connections:
  web -> db:
    port: 5432
";

const HOSTS: [(&str, &str); 3] = [
    ("hv1", "198.19.0.65"),
    ("hv2", "198.19.0.66"),
    ("hv3", "198.19.0.67"),
];

fn agent() -> FakeAgent {
    FakeAgent {
        kinds: Some(
            [
                kinds::NETWORK_SEGMENT,
                kinds::NETWORK_NODE,
                kinds::WORKLOAD_ADDRESSES,
                kinds::SHADOW_TAP,
                kinds::SHADOW_SINK,
                kinds::STEER,
                kinds::STEER_TARGET,
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect::<BTreeSet<_>>(),
        ),
        ..Default::default()
    }
}

async fn state_on(store: Arc<dyn Store>, fresh: bool) -> AppState {
    let s = AppState::builder()
        .shard_config(ShardConfig {
            pools: vec!["198.18.64.0/20".parse().unwrap()],
            ..ShardConfig::default()
        })
        .start(store)
        .unwrap();
    if fresh {
        s.shards
            .create_shard(CreateShard {
                family: Family::Ipv4,
                prefix_len: 24,
                network_id: Some("shopnet".into()),
                reserved: false,
            })
            .await
            .unwrap();
    }
    for (h, a) in HOSTS {
        s.hosts.set_underlay(h, Some(a.parse().unwrap()));
    }
    s
}

/// A fake agent's reported measurements.
fn measurements(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn underlay(host: &str) -> &'static str {
    HOSTS.iter().find(|(h, _)| *h == host).unwrap().1
}

/// Production `shop` on hv1 and hv2, with agents on the three hosts.
async fn production(s: &AppState, a: FakeAgent) -> Vec<tokio::task::JoinHandle<()>> {
    let agents = HOSTS
        .iter()
        .map(|(h, _)| a.clone().spawn(s.control.clone(), h))
        .collect();
    s.networks
        .create(NetworkCreate {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    agents
}

fn tap(s: &AppState, host: &str, key: &str) -> Option<(u64, ShadowTap)> {
    match s.control.resource(host, kinds::SHADOW_TAP, key) {
        Some(r) => match r.spec {
            Spec::ShadowTap(t) => Some((r.generation, t)),
            _ => None,
        },
        None => None,
    }
}

fn sink(s: &AppState, host: &str, key: &str) -> Option<(u64, ShadowSink)> {
    match s.control.resource(host, kinds::SHADOW_SINK, key) {
        Some(r) => match r.spec {
            Spec::ShadowSink(t) => Some((r.generation, t)),
            _ => None,
        },
        None => None,
    }
}

/// Every shadow-tap and shadow-sink on every host: (host, kind, key).
fn shadow_resources(s: &AppState) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for host in s.control.hosts() {
        for rk in s.control.desired(&host).resources.keys() {
            if rk.kind == kinds::SHADOW_TAP || rk.kind == kinds::SHADOW_SINK {
                out.push((host.clone(), rk.kind.clone(), rk.key.clone()));
            }
        }
    }
    out
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request(id: &str) -> CreateRequest {
    CreateRequest {
        id: id.into(),
        production: "shop".into(),
        nodes: vec![],
        hosts: vec!["hv3".into()],
        policy: ShadowPolicy {
            share_ppm: 100_000,
            ports: vec![80, 5432],
            ..Default::default()
        },
        noise_baseline: true,
    }
}

/// The taps and sinks of `rec` are where they belong, wired to each other.
fn assert_wired(s: &AppState, rec: &ShadowRecord) {
    let prod = s.networks.get(&rec.production).unwrap();
    let mut ports = BTreeSet::new();
    for node in &rec.nodes {
        let key = format!("{}/{node}", rec.id);
        let prod_host = &prod.placement[node];
        let sink_host = &s.networks.get(&rec.id).unwrap().placement[node];
        let (_, t) = tap(s, prod_host, &key)
            .unwrap_or_else(|| panic!("no tap {key} on production host {prod_host}"));
        let (_, k) =
            sink(s, sink_host, &key).unwrap_or_else(|| panic!("no sink {key} on {sink_host}"));
        assert_eq!(t.shadow, rec.id);
        assert_eq!(t.network, rec.production);
        assert_eq!(&t.node, node);
        assert_eq!(t.policy.as_ref().unwrap(), &rec.policy.to_wire());
        assert_eq!(
            t.sinks,
            vec![format!("{}:{}", underlay(sink_host), k.listen_port)]
        );
        assert_eq!(k.peers, vec![underlay(prod_host).to_owned()]);
        let mut targets = vec![ShadowTarget {
            network: rec.id.clone(),
            node: node.clone(),
        }];
        if rec.noise_baseline {
            targets.push(ShadowTarget {
                network: format!("{}-baseline", rec.id),
                node: node.clone(),
            });
        }
        assert_eq!(k.targets, targets);
        assert_eq!(k.read_only, rec.policy.read_only);
        assert_eq!(rec.sinks[node].listen_port as u32, k.listen_port);
        assert!(
            ports.insert((sink_host.clone(), k.listen_port)),
            "sink port {} used twice on {sink_host}",
            k.listen_port
        );
        // Not elsewhere.
        for (h, _) in HOSTS {
            if h != prod_host {
                assert!(tap(s, h, &key).is_none(), "tap {key} also on {h}");
            }
            if h != sink_host {
                assert!(sink(s, h, &key).is_none(), "sink {key} also on {h}");
            }
        }
    }
}

#[tokio::test]
async fn create_publishes_taps_on_production_hosts_and_sinks_where_the_shadow_copies_are() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let _agents = production(&s, agent()).await;
    let mut events = s.shadows.subscribe();
    let info = s.shadows.create(request("shop-shadow")).await.unwrap();
    // Every node that declares ports is sampled (not `tool`).
    assert_eq!(info.nodes, vec!["db".to_string(), "web".to_string()]);
    assert_eq!(
        info.networks,
        vec![
            "shop-shadow".to_string(),
            "shop-shadow-baseline".to_string()
        ]
    );
    for n in &info.networks {
        let net = s.networks.get(n).unwrap();
        assert_eq!(
            net.role,
            Role::Mirror {
                source: Some("shop".into())
            }
        );
        assert_eq!(net.hosts(), vec!["hv3".to_string()]);
    }
    let rec = s.shadows.get("shop-shadow").unwrap();
    assert_wired(&s, &rec);
    // web's tap on hv1, db's on hv2, both sinks on hv3 (each open to its tap's host).
    assert_eq!(
        shadow_resources(&s),
        vec![
            ("hv1".into(), "shadow-tap".into(), "shop-shadow/web".into()),
            ("hv2".into(), "shadow-tap".into(), "shop-shadow/db".into()),
            ("hv3".into(), "shadow-sink".into(), "shop-shadow/db".into()),
            ("hv3".into(), "shadow-sink".into(), "shop-shadow/web".into()),
        ]
    );
    assert_eq!(
        sink(&s, "hv3", "shop-shadow/db").unwrap().1.peers,
        vec!["198.19.0.66".to_string()]
    );
    match events.try_recv().unwrap() {
        ShadowEvent::Created {
            id,
            production,
            nodes,
            ..
        } => {
            assert_eq!(id, "shop-shadow");
            assert_eq!(production, "shop");
            assert_eq!(nodes, vec!["db".to_string(), "web".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    // The agents apply everything: sampling.
    eventually("the shadow sampling", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.state == "sampling")
    })
    .await;

    // A second shadow of the same production, on the same host: its own sink ports.
    let mut second = request("shop-canary");
    second.nodes = vec!["web".into()];
    second.noise_baseline = false;
    let second = s.shadows.create(second).await.unwrap();
    assert_eq!(second.nodes, vec!["web".to_string()]);
    let rec2 = s.shadows.get("shop-canary").unwrap();
    assert_wired(&s, &rec2);
    let all_ports: BTreeSet<u16> = rec
        .sinks
        .values()
        .chain(rec2.sinks.values())
        .map(|p| p.listen_port)
        .collect();
    assert_eq!(all_ports.len(), 3, "ports on hv3 are unique: {all_ports:?}");
    assert_eq!(s.shadows.list().len(), 2);
}

#[tokio::test]
async fn a_policy_change_republishes_the_taps_only_and_delete_withdraws_everything() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let _agents = production(&s, agent()).await;
    s.shadows.create(request("shop-shadow")).await.unwrap();
    let rec = s.shadows.get("shop-shadow").unwrap();
    let prod = s.networks.get("shop").unwrap();
    let gens = |s: &AppState| -> BTreeMap<String, (u64, u64)> {
        rec.nodes
            .iter()
            .map(|n| {
                let key = format!("shop-shadow/{n}");
                (
                    n.clone(),
                    (
                        tap(s, &prod.placement[n], &key).unwrap().0,
                        sink(s, "hv3", &key).unwrap().0,
                    ),
                )
            })
            .collect()
    };
    let before = gens(&s);
    let mut events = s.shadows.subscribe();

    let new = ShadowPolicy {
        share_ppm: 500_000,
        key: "source".into(),
        sources: vec!["198.18.0.0/16".into()],
        window_start_minute: 540,
        window_end_minute: 1020,
        ..Default::default()
    };
    let info = s
        .shadows
        .update_policy("shop-shadow", new.clone())
        .await
        .unwrap();
    assert_eq!(info.policy.share_ppm, 500_000);
    assert_eq!(info.revision, 2);
    let after = gens(&s);
    for n in &rec.nodes {
        assert!(after[n].0 > before[n].0, "tap of {n} republished");
        assert_eq!(after[n].1, before[n].1, "sink of {n} untouched");
        let (_, t) = tap(&s, &prod.placement[n], &format!("shop-shadow/{n}")).unwrap();
        let p = t.policy.unwrap();
        assert_eq!(p.share_ppm, 500_000);
        assert_eq!(p.key, "source");
        assert_eq!(p.sources, vec!["198.18.0.0/16".to_string()]);
        assert_eq!((p.window_start_minute, p.window_end_minute), (540, 1020));
        assert!(p.ports.is_empty());
    }
    assert!(matches!(
        events.try_recv(),
        Ok(ShadowEvent::PolicyChanged { revision: 2, .. })
    ));
    // The same policy again changes nothing.
    s.shadows
        .update_policy("shop-shadow", new.clone())
        .await
        .unwrap();
    assert_eq!(gens(&s), after);
    assert!(events.try_recv().is_err());
    // Read-only is the sinks' business too.
    s.shadows
        .update_policy(
            "shop-shadow",
            ShadowPolicy {
                read_only: true,
                ..new
            },
        )
        .await
        .unwrap();
    for n in &rec.nodes {
        let (g, k) = sink(&s, "hv3", &format!("shop-shadow/{n}")).unwrap();
        assert!(k.read_only);
        assert!(g > after[n].1);
        assert!(k.sample.is_none());
    }
    // Sampling by a header: the taps get the policy, the sinks the header, share and
    // seed they choose requests with; the header's name is kept lowercase.
    let by_header = s
        .shadows
        .update_policy(
            "shop-shadow",
            ShadowPolicy {
                share_ppm: 250_000,
                key: "header".into(),
                header: "X-User".into(),
                seed: 9,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(by_header.policy.header, "x-user");
    for n in &rec.nodes {
        let (_, t) = tap(&s, &prod.placement[n], &format!("shop-shadow/{n}")).unwrap();
        let p = t.policy.unwrap();
        assert_eq!((p.key.as_str(), p.header.as_str()), ("header", "x-user"));
        let (_, k) = sink(&s, "hv3", &format!("shop-shadow/{n}")).unwrap();
        let want = weft_proto::v1::ShadowKeySample {
            header: "x-user".into(),
            share_ppm: 250_000,
            seed: 9,
        };
        assert_eq!(k.sample, Some(want));
    }
    for (bad, field) in [
        (
            ShadowPolicy {
                key: "header".into(),
                ..Default::default()
            },
            "policy.header",
        ),
        (
            ShadowPolicy {
                key: "header".into(),
                header: "X User".into(),
                ..Default::default()
            },
            "policy.header",
        ),
        (
            ShadowPolicy {
                key: "source".into(),
                header: "X-User".into(),
                ..Default::default()
            },
            "policy.header",
        ),
        (
            ShadowPolicy {
                key: "header".into(),
                header: "X-User".into(),
                divert_ppm: 10_000,
                ..Default::default()
            },
            "policy.divert_ppm",
        ),
    ] {
        let e = s
            .shadows
            .update_policy("shop-shadow", bad)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
    // A bad policy is refused, naming the field, and nothing changes.
    let e = s
        .shadows
        .update_policy(
            "shop-shadow",
            ShadowPolicy {
                share_ppm: 2_000_000,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("policy.share_ppm"), "{e}");
    assert!(matches!(
        s.shadows
            .update_policy("nope", ShadowPolicy::default())
            .await,
        Err(ShadowError::NotFound(_))
    ));

    // Delete: no tap, no sink anywhere, the networks gone; production untouched.
    while events.try_recv().is_ok() {}
    s.shadows.delete("shop-shadow").await.unwrap();
    assert!(
        shadow_resources(&s).is_empty(),
        "{:?}",
        shadow_resources(&s)
    );
    assert!(s.networks.get("shop-shadow").is_none());
    assert!(s.networks.get("shop-shadow-baseline").is_none());
    assert!(s.networks.get("shop").is_some());
    assert!(s.shadows.get("shop-shadow").is_none());
    assert!(matches!(events.try_recv(), Ok(ShadowEvent::Deleted { .. })));
    assert!(matches!(
        s.shadows.delete("shop-shadow").await,
        Err(ShadowError::NotFound(_))
    ));
    // The id can be used again.
    s.shadows.create(request("shop-shadow")).await.unwrap();

    // Production deleted under the shadow: degraded, its taps and sinks withdrawn.
    let mut events = s.shadows.subscribe();
    s.networks.delete("shop").await.unwrap();
    // Told once, by this look or the controller's own (every second).
    s.shadows.check_degraded();
    assert!(matches!(
        degraded_event(&mut events).await,
        ShadowEvent::Degraded { .. }
    ));
    let info = s.shadows.info("shop-shadow").unwrap();
    assert_eq!(info.state, "degraded");
    assert!(info.error.contains("no longer exists"), "{}", info.error);
    assert!(
        shadow_resources(&s).is_empty(),
        "{:?}",
        shadow_resources(&s)
    );
    assert_eq!(s.shadows.check_degraded(), 0);
}

#[tokio::test]
async fn a_restarted_controller_reloads_and_republishes_its_shadows() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let s = state_on(store.clone(), true).await;
    let agents = production(&s, agent()).await;
    s.shadows.create(request("shop-shadow")).await.unwrap();
    let rec = s.shadows.get("shop-shadow").unwrap();
    let published = shadow_resources(&s);
    for a in agents {
        a.abort();
    }
    s.shutdown().await;
    drop(s);

    // A new controller on the same store: a new epoch, an empty hub, the same shadows.
    let s = state_on(store, false).await;
    assert_eq!(s.shadows.get("shop-shadow"), Some(rec.clone()));
    // At start no agent has registered its underlay address yet: nothing to wire.
    let info = s.shadows.info("shop-shadow").unwrap();
    assert_eq!(info.state, "degraded");
    assert!(info.error.contains("no underlay address"), "{}", info.error);
    assert!(shadow_resources(&s).is_empty());
    // The agents register (state_on gave their underlay addresses): what the
    // registration does when an underlay address changes.
    s.networks.republish();
    s.shadows.republish();
    assert_eq!(shadow_resources(&s), published);
    assert_wired(&s, &rec);
    let _agents: Vec<_> = HOSTS
        .iter()
        .map(|(h, _)| agent().spawn(s.control.clone(), h))
        .collect();
    eventually("the shadow sampling after the restart", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.state == "sampling")
    })
    .await;
}

/// The next `Degraded` event (others are skipped).
async fn degraded_event(events: &mut tokio::sync::broadcast::Receiver<ShadowEvent>) -> ShadowEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a degraded event in time")
            .unwrap();
        if matches!(e, ShadowEvent::Degraded { .. }) {
            return e;
        }
    }
}

fn field_of_ref(e: &ShadowError) -> Option<&str> {
    match e {
        ShadowError::Invalid { field, .. } => Some(field),
        _ => None,
    }
}

fn field_of(e: ShadowError) -> String {
    match e {
        ShadowError::Invalid { field, .. } => field,
        other => panic!("not a field error: {other:?}"),
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_naming_the_field_and_leave_nothing() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let _agents = production(&s, agent()).await;
    let cases: Vec<(&str, CreateRequest)> = vec![
        (
            "id",
            CreateRequest {
                id: "Not A Name".into(),
                ..request("x")
            },
        ),
        (
            "production",
            CreateRequest {
                production: "nope".into(),
                ..request("x")
            },
        ),
        (
            "production",
            CreateRequest {
                production: String::new(),
                ..request("x")
            },
        ),
        (
            "nodes[1]",
            CreateRequest {
                nodes: vec!["web".into(), "ghost".into()],
                ..request("x")
            },
        ),
        (
            "hosts",
            CreateRequest {
                hosts: vec![],
                ..request("x")
            },
        ),
        (
            "policy.share_ppm",
            CreateRequest {
                policy: ShadowPolicy {
                    share_ppm: 1_000_001,
                    ..Default::default()
                },
                ..request("x")
            },
        ),
        (
            "policy.key",
            CreateRequest {
                policy: ShadowPolicy {
                    key: "cookie".into(),
                    ..Default::default()
                },
                ..request("x")
            },
        ),
        (
            "policy.ports[0]",
            CreateRequest {
                policy: ShadowPolicy {
                    ports: vec![70_000],
                    ..Default::default()
                },
                ..request("x")
            },
        ),
        (
            "policy.sources[0]",
            CreateRequest {
                policy: ShadowPolicy {
                    sources: vec!["everyone".into()],
                    ..Default::default()
                },
                ..request("x")
            },
        ),
        (
            "policy.window_end_minute",
            CreateRequest {
                policy: ShadowPolicy {
                    window_end_minute: 1440,
                    ..Default::default()
                },
                ..request("x")
            },
        ),
    ];
    for (field, req) in cases {
        let e = s.shadows.create(req).await.unwrap_err();
        assert!(e.to_string().contains(&format!("`{field}`")), "{e}");
        assert_eq!(field_of(e), field);
    }
    // A mirror is not a production.
    s.shadows.create(request("shop-shadow")).await.unwrap();
    let e = s
        .shadows
        .create(CreateRequest {
            production: "shop-shadow".into(),
            ..request("x")
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("mirror"), "{e}");
    // Taken ids: a shadow's, a network's.
    assert!(matches!(
        s.shadows.create(request("shop-shadow")).await,
        Err(ShadowError::Exists(_))
    ));
    assert!(matches!(
        s.shadows.create(request("shop")).await,
        Err(ShadowError::Exists(_))
    ));
    // A host the networks cannot place on: refused, and no network is left behind.
    let e = s
        .shadows
        .create(CreateRequest {
            hosts: vec!["hv9".into(), "hv3".into()],
            ..request("x")
        })
        .await;
    if let Err(e) = e {
        assert_eq!(field_of_ref(&e), Some("hosts"), "{e}");
        assert!(s.networks.get("x").is_none(), "{e}");
        assert!(s.networks.get("x-baseline").is_none(), "{e}");
    }
    assert_eq!(
        s.shadows.list().len(),
        1 + usize::from(s.shadows.get("x").is_some())
    );
    assert!(
        shadow_resources(&s)
            .iter()
            .all(|(_, _, k)| k.starts_with("shop-shadow/") || k.starts_with("x/"))
    );
}

#[tokio::test]
async fn a_host_without_underlay_address_degrades_the_shadow_until_it_has_one() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let _agents = production(&s, agent()).await;
    let _a4 = agent().spawn(s.control.clone(), "hv4");
    let mut events = s.shadows.subscribe();
    let info = s
        .shadows
        .create(CreateRequest {
            hosts: vec!["hv4".into()],
            noise_baseline: false,
            ..request("shop-shadow")
        })
        .await
        .unwrap();
    assert_eq!(info.state, "degraded");
    assert!(
        info.error.contains("host hv4 has no underlay address"),
        "{}",
        info.error
    );
    assert!(shadow_resources(&s).is_empty());
    // Told once, by this look or the controller's own (every second).
    s.shadows.check_degraded();
    match degraded_event(&mut events).await {
        ShadowEvent::Degraded { id, error, .. } => {
            assert_eq!(id, "shop-shadow");
            assert!(error.contains("hv4"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // Told once, not at every look.
    assert_eq!(s.shadows.check_degraded(), 0);

    // hv4 registers an underlay address: the taps and sinks go out.
    s.hosts
        .set_underlay("hv4", Some("198.19.0.68".parse().unwrap()));
    s.shadows.republish();
    let rec = s.shadows.get("shop-shadow").unwrap();
    let (_, t) = tap(
        &s,
        &s.networks.get("shop").unwrap().placement["web"],
        "shop-shadow/web",
    )
    .unwrap();
    assert_eq!(
        t.sinks,
        vec![format!("198.19.0.68:{}", rec.sinks["web"].listen_port)]
    );
    eventually("the shadow sampling", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.state == "sampling" && i.error.is_empty())
    })
    .await;
}

#[tokio::test]
async fn a_failing_sink_degrades_the_shadow_saying_which_and_why() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let a = agent();
    let _p1 = a.clone().spawn(s.control.clone(), "hv1");
    let _p2 = a.clone().spawn(s.control.clone(), "hv2");
    s.networks
        .create(NetworkCreate {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // hv3 makes networks but has no shadow-sink reconciler.
    let mut old = agent();
    old.kinds
        .as_mut()
        .unwrap()
        .remove(&kinds::SHADOW_SINK.to_owned());
    let _p3 = old.spawn(s.control.clone(), "hv3");
    s.shadows.create(request("shop-shadow")).await.unwrap();
    eventually("the shadow degraded", || {
        s.shadows.info("shop-shadow").is_some_and(|i| {
            i.state == "degraded"
                && i.error.contains("shadow-sink shop-shadow/web on hv3")
                && i.error.contains("no reconciler")
        })
    })
    .await;
}

fn histogram(values: &[(u64, u64)]) -> Vec<u8> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for &(v, c) in values {
        h.record_n(v, c).unwrap();
    }
    let mut out = Vec::new();
    V2Serializer::new().serialize(&h, &mut out).unwrap();
    out
}

#[tokio::test]
async fn status_sums_the_taps_and_sinks_reports_and_compares_latencies() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let mut a = agent();
    a.tap_measurements = measurements(&[
        ("connections_seen", 100.0),
        ("connections_eligible", 80.0),
        ("connections_sampled", 10.0),
        ("bytes_streamed", 4096.0),
        ("connections_lost", 1.0),
        ("sinks_connected", 1.0),
        ("paused", 1.0),
    ]);
    a.sink_measurements = measurements(&[
        ("requests_replayed", 30.0),
        ("requests_skipped_write", 2.0),
        ("connections_replayed", 10.0),
        ("taps_connected", 1.0),
    ]);
    a.sink_report = Some(ShadowReport {
        endpoints: vec![ShadowEndpointStats {
            endpoint: "GET /api/users".into(),
            production_requests: 100,
            production_errors: 1,
            shadow_requests: 100,
            shadow_errors: 3,
            production_latency: histogram(&[(1000, 60), (1200, 40)]),
            shadow_latency: histogram(&[(2000, 60), (2400, 40)]),
            compared: 100,
            differing: 2,
            differing_fields: [("body.user.name".to_owned(), 2)].into(),
            ..Default::default()
        }],
    });
    let _agents = production(&s, a).await;
    s.shadows.create(request("shop-shadow")).await.unwrap();
    eventually("the shadow sampling", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.state == "sampling")
    })
    .await;
    let info = s.shadows.info("shop-shadow").unwrap();
    // Two taps (web on its host, db on its) and two sinks (on hv3).
    let c = &info.counters;
    assert_eq!(c.connections_seen, 200);
    assert_eq!(c.connections_eligible, 160);
    assert_eq!(c.connections_replayed, 20);
    assert_eq!(c.connections_sampled, 20);
    assert_eq!(c.bytes_streamed, 8192);
    assert_eq!(c.connections_lost, 2);
    assert_eq!(
        c.taps_paused, 2,
        "both taps report their sinks take nothing"
    );
    assert_eq!(c.requests_replayed, 60);
    assert_eq!(c.requests_skipped_write, 4);
    assert_eq!(info.analysis.len(), 1);
    let e = &info.analysis[0];
    assert_eq!(e.endpoint, "GET /api/users");
    assert_eq!(e.production_requests, 200);
    assert_eq!(e.shadow_requests, 200);
    assert!((e.production_error_rate - 0.01).abs() < 1e-12);
    assert!((e.shadow_error_rate - 0.03).abs() < 1e-12);
    assert!((e.production_p50_ms - 1.0).abs() < 0.002, "{e:?}");
    assert!((e.shadow_p50_ms - 2.0).abs() < 0.004, "{e:?}");
    assert!((e.shadow_p99_ms - 2.4).abs() < 0.004, "{e:?}");
    assert!(e.latency_p_value < 1e-10, "{e:?}");
    assert!(e.shadow_slower);
    // No baseline latencies reported: production is the reference.
    assert_eq!(e.reference, "production");
    // 6/200 against 2/200: one-sided p = 0.0766, not significant.
    assert!((e.error_p_value - 0.076_564).abs() < 1e-5, "{e:?}");
    assert!(!e.shadow_errs_more);
    assert_eq!(e.differing_fields["body.user.name"], 4);
    // The wire form carries the same.
    let w = info.to_wire();
    assert_eq!(w.counters.unwrap().connections_seen, 200);
    assert!(w.analysis[0].shadow_slower);
}

#[tokio::test]
async fn a_shadow_near_its_memory_limit_gets_a_scaling_recommendation() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let mut a = agent();
    // The shadow copy's cgroup, as its sink reports it: far above 90 % of 512 MB.
    a.sink_measurements = measurements(&[
        ("shadow_cpu_seconds", 1.0),
        ("shadow_memory_bytes", 600_000_000.0),
        ("shadow_memory_limit_bytes", 0.0),
    ]);
    let _agents: Vec<_> = HOSTS
        .iter()
        .map(|(h, _)| a.clone().spawn(s.control.clone(), h))
        .collect();
    s.networks
        .create(NetworkCreate {
            tdl: TDL.replace("    ports: [80]\n", "    ports: [80]\n    memory: 512MB\n"),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    s.shadows.create(request("shop-shadow")).await.unwrap();
    eventually("the shadow sampling", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.state == "sampling")
    })
    .await;
    // No window to wait for in the test.
    s.shadows
        .set_scaling_config(weft_shadows::scaling::ScalingConfig {
            window: Duration::ZERO,
            ..Default::default()
        });
    s.shadows.sample_usage();
    let info = s.shadows.info("shop-shadow").unwrap();
    // web has a memory limit (db none: nothing to raise).
    assert_eq!(info.scaling.len(), 1, "{:?}", info.scaling);
    let r = &info.scaling[0];
    assert_eq!((r.node.as_str(), r.resource), ("web", "memory"));
    assert!(r.recommended > r.current && r.current > 0, "{r:?}");
    assert!(r.reason.contains("memory limit"), "{r:?}");
    assert!(!r.applied);
    let w = info.to_wire();
    assert_eq!(w.scaling.len(), 1);
    assert_eq!(w.scaling[0].resource, "memory");

    // With autoscale the recommendation is applied to production's definition, and the
    // shadow and its noise baseline (mirrors) follow.
    let mut events = s.shadows.subscribe();
    let mut policy = info.policy.clone();
    policy.autoscale = true;
    s.shadows
        .update_policy("shop-shadow", policy)
        .await
        .unwrap();
    let want = r.recommended;
    let mut applied = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while applied.is_none() {
        assert!(Instant::now() < deadline, "not applied");
        // The controller's own loop may be first.
        s.shadows.sample_usage();
        s.shadows.autoscale().await;
        applied = s
            .shadows
            .info("shop-shadow")
            .unwrap()
            .scaling
            .into_iter()
            .find(|v| v.applied);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = applied.unwrap();
    assert_eq!((applied.node.as_str(), applied.resource), ("web", "memory"));
    assert_eq!(applied.recommended, want);
    for net in ["shop", "shop-shadow", "shop-shadow-baseline"] {
        let n = s.networks.get(net).unwrap();
        assert_eq!(
            n.network.nodes["web"].memory_bytes,
            Some(want),
            "{net}'s web has the new limit"
        );
        // Only the limit changed: db keeps its (absent) limit.
        assert_eq!(n.network.nodes["db"].memory_bytes, None, "{net}");
    }
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a scaling event in time")
            .unwrap();
        if let ShadowEvent::ScalingApplied { view, .. } = e {
            assert_eq!(view.recommended, want);
            break;
        }
    }
    // Under the new limit (600 MB of it) nothing more is called for, and a node is not
    // changed twice within the cooldown.
    s.shadows.sample_usage();
    assert_eq!(s.shadows.autoscale().await, 0);
    assert_eq!(
        s.networks.get("shop").unwrap().network.nodes["web"].memory_bytes,
        Some(want)
    );
}

fn steer(s: &AppState, host: &str, key: &str) -> Option<Steer> {
    match s.control.resource(host, kinds::STEER, key)?.spec {
        Spec::Steer(t) => Some(t),
        _ => None,
    }
}

fn steer_target(s: &AppState, host: &str, key: &str) -> Option<SteerTarget> {
    match s.control.resource(host, kinds::STEER_TARGET, key)?.spec {
        Spec::SteerTarget(t) => Some(t),
        _ => None,
    }
}

async fn failover_event(events: &mut tokio::sync::broadcast::Receiver<ShadowEvent>) -> ShadowEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("a failover event in time")
            .unwrap();
        if matches!(e, ShadowEvent::Failover { .. }) {
            return e;
        }
    }
}

#[tokio::test]
async fn divert_and_failover_steer_production_to_the_shadow_and_a_failover_is_an_event() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let mut a = agent();
    a.steer_measurements = measurements(&[
        ("connections_seen", 40.0),
        ("connections_steered", 4.0),
        ("failover_active", 1.0),
        ("failover_switch_seconds", 0.31),
    ]);
    let _agents = production(&s, a.clone()).await;
    let mut events = s.shadows.subscribe();
    let failover = FailoverCheck {
        port: 80,
        interval_ms: 50,
        failures: 2,
        probe: "GET /health HTTP/1.0\r\n\r\n".into(),
    };
    let mut req = request("shop-shadow");
    req.policy.divert_ppm = 50_000;
    req.policy.key = "source".into();
    req.policy.failover = Some(failover.clone());
    s.shadows.create(req).await.unwrap();
    let rec = s.shadows.get("shop-shadow").unwrap();
    let prod = s.networks.get("shop").unwrap();
    for node in &rec.nodes {
        let key = format!("shadow/shop-shadow/{node}");
        let prod_host = &prod.placement[node];
        let sink = &rec.sinks[node];
        assert_eq!(sink.host, "hv3");
        let st = steer(&s, prod_host, &key)
            .unwrap_or_else(|| panic!("no steer {key} on production host {prod_host}"));
        assert_eq!(st.owner, "shadow/shop-shadow");
        assert_eq!(
            (st.network.as_str(), st.node.as_str()),
            ("shop", node.as_str())
        );
        assert_eq!(
            (st.target_network.as_str(), st.target_node.as_str()),
            ("shop-shadow", node.as_str())
        );
        assert_eq!(st.share_ppm, 50_000);
        assert_eq!(st.key, "source");
        assert_eq!(st.ports, vec![80, 5432]);
        // The copy is on another host: through the tunnel, its id the sink's port.
        assert_eq!(st.target_host, underlay("hv3"));
        assert_eq!(st.tunnel_id, u32::from(sink.listen_port));
        let health = st.failover.expect("failover check");
        assert_eq!(
            (health.port, health.interval_ms, health.failures),
            (80, 50, 2)
        );
        assert_eq!(health.probe, failover.probe.as_bytes());
        let t = steer_target(&s, "hv3", &key).expect("steer target on the copy's host");
        assert_eq!(
            (t.network.as_str(), t.node.as_str()),
            ("shop-shadow", node.as_str())
        );
        assert_eq!(t.origin_host, underlay(prod_host));
        assert_eq!(t.tunnel_id, st.tunnel_id);
        for (h, _) in HOSTS {
            if h != prod_host {
                assert!(steer(&s, h, &key).is_none(), "steer {key} also on {h}");
            }
            if h != "hv3" {
                assert!(
                    steer_target(&s, h, &key).is_none(),
                    "target {key} also on {h}"
                );
            }
        }
    }
    // Tunnel ids differ between the nodes (both steers end on hv3).
    let ids: BTreeSet<u16> = rec.sinks.values().map(|k| k.listen_port).collect();
    assert_eq!(ids.len(), rec.nodes.len());

    // Both production nodes report a failover: one event each, the steers' counters summed.
    s.shadows.check_degraded();
    let mut activated = BTreeSet::new();
    for _ in 0..2 {
        match failover_event(&mut events).await {
            ShadowEvent::Failover {
                node,
                active: true,
                switch_seconds: Some(t),
                ..
            } => {
                assert!((t - 0.31).abs() < 1e-9);
                activated.insert(node);
            }
            other => panic!("not an activation: {other:?}"),
        }
    }
    assert_eq!(activated, rec.nodes.iter().cloned().collect());
    let info = s.shadows.info("shop-shadow").unwrap();
    assert_eq!(info.counters.connections_diverted, 8);
    assert_eq!(info.counters.nodes_failed_over, 2);
    // Told once: another look says nothing new.
    s.shadows.check_degraded();
    assert!(
        !std::iter::from_fn(|| events.try_recv().ok())
            .any(|e| matches!(e, ShadowEvent::Failover { .. }))
    );
    // web's production passes its check again: recovered, for web only.
    let web_host = &prod.placement["web"];
    let mut recovered = a.clone();
    recovered
        .steer_measurements
        .insert("failover_active".into(), 0.0);
    s.control
        .report(web_host, recovered.observe(&s.control, web_host));
    s.shadows.check_degraded();
    match failover_event(&mut events).await {
        ShadowEvent::Failover {
            node,
            active: false,
            ..
        } => assert_eq!(node, "web"),
        other => panic!("not web's recovery: {other:?}"),
    }

    // Divert and failover off: the steers go, the taps stay.
    let mut plain = rec.policy.clone();
    plain.divert_ppm = 0;
    plain.failover = None;
    s.shadows.update_policy("shop-shadow", plain).await.unwrap();
    for node in &rec.nodes {
        let key = format!("shadow/shop-shadow/{node}");
        for (h, _) in HOSTS {
            assert!(steer(&s, h, &key).is_none(), "steer {key} left on {h}");
            assert!(
                steer_target(&s, h, &key).is_none(),
                "target {key} left on {h}"
            );
        }
        assert!(tap(&s, &prod.placement[node], &format!("shop-shadow/{node}")).is_some());
    }
    // On again, then delete: nothing of the shadow stays on any host.
    let mut again = rec.policy.clone();
    again.divert_ppm = 1_000_000;
    s.shadows.update_policy("shop-shadow", again).await.unwrap();
    assert!(steer(&s, &prod.placement["web"], "shadow/shop-shadow/web").is_some());
    s.shadows.delete("shop-shadow").await.unwrap();
    for host in s.control.hosts() {
        let left: Vec<_> = s
            .control
            .desired(&host)
            .resources
            .keys()
            .filter(|rk| rk.key.contains("shop-shadow"))
            .cloned()
            .collect();
        assert!(left.is_empty(), "{host}: {left:?}");
    }
}

#[tokio::test]
async fn synthetic_load_goes_to_the_sinks_only_as_a_new_run_each_time() {
    let s = state_on(Arc::new(MemoryStore::default()), true).await;
    let mut a = agent();
    a.sink_measurements = measurements(&[
        ("synthetic_connections", 7.0),
        ("synthetic_requests", 21.0),
        ("synthetic_runs_finished", 1.0),
    ]);
    let _agents = production(&s, a).await;
    s.shadows.create(request("shop-shadow")).await.unwrap();
    let rec = s.shadows.get("shop-shadow").unwrap();
    let prod = s.networks.get("shop").unwrap();
    let taps_before: Vec<u64> = rec
        .nodes
        .iter()
        .map(|n| {
            tap(&s, &prod.placement[n], &format!("shop-shadow/{n}"))
                .unwrap()
                .0
        })
        .collect();
    let mut events = s.shadows.subscribe();
    let info = s.shadows.synthetic("shop-shadow", 3.0, 60).await.unwrap();
    assert_eq!(info.synthetic.as_ref().unwrap().generation, 1);
    for n in &rec.nodes {
        let (_, k) = sink(&s, "hv3", &format!("shop-shadow/{n}")).unwrap();
        let l = k.synthetic.expect("the sink has the load");
        assert_eq!(
            (l.multiplier, l.duration_seconds, l.generation),
            (3.0, 60, 1)
        );
    }
    // The taps are not touched.
    let taps_after: Vec<u64> = rec
        .nodes
        .iter()
        .map(|n| {
            tap(&s, &prod.placement[n], &format!("shop-shadow/{n}"))
                .unwrap()
                .0
        })
        .collect();
    assert_eq!(taps_before, taps_after);
    assert!(matches!(
        events.try_recv(),
        Ok(ShadowEvent::SyntheticAsked { generation: 1, .. })
    ));
    // The same load again is another run.
    s.shadows.synthetic("shop-shadow", 3.0, 60).await.unwrap();
    let (_, k) = sink(&s, "hv3", "shop-shadow/web").unwrap();
    assert_eq!(k.synthetic.unwrap().generation, 2);
    // The sinks' counters are summed (two sinks).
    eventually("synthetic counters", || {
        s.shadows
            .info("shop-shadow")
            .is_some_and(|i| i.counters.synthetic_requests == 42)
    })
    .await;
    let c = s.shadows.info("shop-shadow").unwrap().counters;
    assert_eq!(
        (c.synthetic_connections, c.synthetic_runs_finished),
        (14, 2)
    );
    // Bad values are refused naming the field; nothing changes.
    for (m, d, field) in [
        (-1.0, 60, "multiplier"),
        (f64::NAN, 60, "multiplier"),
        (5000.0, 60, "multiplier"),
        (2.0, 0, "duration_seconds"),
        (2.0, 7200, "duration_seconds"),
    ] {
        let e = s.shadows.synthetic("shop-shadow", m, d).await.unwrap_err();
        assert_eq!(field_of(e), field, "{m} {d}");
    }
    assert_eq!(
        s.shadows
            .get("shop-shadow")
            .unwrap()
            .synthetic
            .unwrap()
            .generation,
        2
    );
    // Multiplier 0 stops it.
    s.shadows.synthetic("shop-shadow", 0.0, 0).await.unwrap();
    let (_, k) = sink(&s, "hv3", "shop-shadow/web").unwrap();
    assert!(k.synthetic.is_none());
    assert!(matches!(
        s.shadows.synthetic("nope", 2.0, 10).await,
        Err(ShadowError::NotFound(_))
    ));
}

use std::collections::BTreeSet;

use weft_proto::v1::{AddressAssignment, WorkloadAddresses};

use super::fake::FakeAgent;
use super::*;
use weft_store::MemoryStore;

fn addresses(workload: &str, cidr: &str) -> Spec {
    Spec::WorkloadAddresses(WorkloadAddresses {
        workload: workload.into(),
        addresses: vec![AddressAssignment {
            cidr: cidr.into(),
            gateway: String::new(),
            shard_id: "s1".into(),
            allocation_seq: 1,
        }],
    })
}

const ADDR: &str = kinds::WORKLOAD_ADDRESSES;

#[test]
fn generation_moves_only_on_change_and_resources_keep_theirs() {
    let hub = ControlHub::default();
    assert_eq!(
        hub.publish("hv1", "web", addresses("web", "198.18.128.5/22")),
        1
    );
    assert_eq!(
        hub.publish("hv1", "web", addresses("web", "198.18.128.5/22")),
        1,
        "same spec"
    );
    assert_eq!(
        hub.publish("hv1", "db", addresses("db", "198.18.128.6/22")),
        2
    );
    assert_eq!(
        hub.publish("hv1", "web", addresses("web", "198.18.128.5/22")),
        1,
        "web still at 1"
    );
    assert_eq!(hub.withdraw("hv1", ADDR, "db"), 3);
    assert_eq!(hub.withdraw("hv1", ADDR, "ghost"), 3, "removing nothing");
    let d = hub.desired("hv1");
    assert_eq!((d.generation, d.resources.len()), (3, 1));
    assert_eq!(d.resources[&ResourceKey::new(ADDR, "web")].generation, 1);
    assert_eq!(hub.desired("hv2").generation, 0);
}

#[test]
fn epochs_grow_per_start_and_generations_never_go_backwards() {
    let store = MemoryStore::default();
    let first = ControlHub::open(&store).unwrap();
    assert_eq!(first.epoch(), 1);
    let mut last = 0;
    for i in 0..5 {
        last = first.publish(
            "hv1",
            "web",
            addresses("web", &format!("198.18.128.{}/22", i + 5)),
        );
    }
    let second = ControlHub::open(&store).unwrap();
    assert_eq!(second.epoch(), 2);
    let g = second.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    assert!(
        g > last,
        "generation {g} after a restart must be above {last}"
    );
    assert_eq!(second.desired("hv1").epoch, 2);
    store.put("control/epoch", b"nope").unwrap();
    let e = ControlHub::open(&store).unwrap_err().to_string();
    assert!(e.contains("control/epoch") && e.contains("nope"), "{e}");
}

#[tokio::test]
async fn watcher_sees_current_state_then_changes() {
    let hub = ControlHub::default();
    hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let mut rx = hub.watch("hv1");
    assert_eq!(rx.borrow_and_update().generation, 1);
    hub.publish("hv1", "web", addresses("web", "198.18.132.5/22"));
    rx.changed().await.unwrap();
    let Spec::WorkloadAddresses(w) = &rx.borrow().resources[&ResourceKey::new(ADDR, "web")].spec
    else {
        panic!("not addresses")
    };
    assert_eq!(w.addresses[0].cidr, "198.18.132.5/22");
}

fn report(hub: &ControlHub, host: &str, generation: u64, key: &str, o: ResourceObserved) -> bool {
    let mut resources = BTreeMap::new();
    resources.insert(ResourceKey::new(ADDR, key), o);
    hub.report(
        host,
        HostObserved {
            epoch: hub.epoch(),
            applied_generation: generation,
            resources,
            reported_at: Some(Instant::now()),
        },
    )
}

#[tokio::test]
async fn wait_applied_returns_report_error_or_times_out() {
    let hub = Arc::new(ControlHub::default());
    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let err = hub
        .wait_applied("hv1", ADDR, "web", g, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, WaitError::Timeout { .. }), "{err}");

    let h = hub.clone();
    let waiter = tokio::spawn(async move {
        h.wait_applied("hv1", ADDR, "web", g, Duration::from_secs(5))
            .await
    });
    tokio::task::yield_now().await;
    let mut ok = ResourceObserved {
        generation: g,
        ..Default::default()
    };
    ok.measurements
        .insert("readdress_down_seconds".into(), 0.0003);
    assert!(report(&hub, "hv1", g, "web", ok));
    let w = waiter.await.unwrap().unwrap();
    assert_eq!(w.measurements["readdress_down_seconds"], 0.0003);

    let g2 = hub.publish("hv1", "web", addresses("web", "198.18.132.5/22"));
    let failed = ResourceObserved {
        generation: g2,
        status: ResourceStatus::Failed,
        error: "no netns".into(),
        ..Default::default()
    };
    report(&hub, "hv1", g2, "web", failed);
    let err = hub
        .wait_applied("hv1", ADDR, "web", g2, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        WaitError::Failed {
            host: "hv1".into(),
            resource: ResourceKey::new(ADDR, "web"),
            error: "no netns".into()
        }
    );
}

#[tokio::test]
async fn a_report_of_another_epoch_is_ignored() {
    let hub = ControlHub::with_epoch(3);
    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let mut resources = BTreeMap::new();
    resources.insert(
        ResourceKey::new(ADDR, "web"),
        ResourceObserved {
            generation: u64::MAX,
            ..Default::default()
        },
    );
    let stale = HostObserved {
        epoch: 2,
        applied_generation: u64::MAX,
        resources,
        reported_at: None,
    };
    assert!(
        !hub.report("hv1", stale),
        "a report of epoch 2 must not count in epoch 3"
    );
    let err = hub
        .wait_applied("hv1", ADDR, "web", g, Duration::from_millis(30))
        .await
        .unwrap_err();
    assert!(matches!(err, WaitError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn a_withdrawn_resource_counts_as_applied_once_a_state_without_it_is() {
    let hub = Arc::new(ControlHub::default());
    let agent = FakeAgent::default().spawn(hub.clone(), "hv1");
    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    hub.wait_applied("hv1", ADDR, "web", g, Duration::from_secs(5))
        .await
        .unwrap();
    let gone = hub.withdraw("hv1", ADDR, "web");
    let o = hub
        .wait_applied("hv1", ADDR, "web", gone, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(o.generation >= gone);
    agent.abort();
}

#[tokio::test]
async fn resources_of_a_kind_the_agent_does_not_know_are_reported_and_never_applied() {
    let hub = Arc::new(ControlHub::default());
    let mut events = hub.subscribe();
    // This agent knows some future kind but not addresses.
    let kinds: BTreeSet<String> = ["network".to_owned()].into();
    let agent = FakeAgent {
        kinds: Some(kinds),
        ..Default::default()
    }
    .spawn(hub.clone(), "hv1");
    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let err = hub
        .wait_applied("hv1", ADDR, "web", g, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        WaitError::Unsupported {
            host: "hv1".into(),
            resource: ResourceKey::new(ADDR, "web")
        }
    );
    assert!(err.to_string().contains("does not understand"), "{err}");
    let o = hub.observed("hv1");
    assert_eq!(o.applied_generation, g, "the host generation was processed");
    assert_eq!(
        o.resources[&ResourceKey::new(ADDR, "web")].status,
        ResourceStatus::Unsupported
    );
    assert_eq!(hub.kinds("hv1"), vec!["network".to_owned()]);
    let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        ControlEvent::Unsupported {
            host: "hv1".into(),
            kind: ADDR.into(),
            keys: 1
        }
    );
    agent.abort();
}

#[test]
fn drift_is_kept_bounded_and_sent_as_events() {
    let hub = ControlHub::default();
    let mut events = hub.subscribe();
    let item = |i: u64| DriftRepaired {
        host: "hv1".into(),
        resource: ResourceKey::new(ADDR, "web"),
        what: format!("address 198.18.128.{i}/22 removed"),
        detected_unix_ns: i,
        repaired_unix_ns: i + 1,
        error: String::new(),
        kept: false,
    };
    hub.drift((0..100).map(item).collect());
    let kept = hub.drift_of("hv1");
    assert_eq!(kept.len(), DRIFT_KEPT);
    assert_eq!(
        kept[0].detected_unix_ns,
        100 - DRIFT_KEPT as u64,
        "the oldest are dropped"
    );
    assert_eq!(events.try_recv().unwrap(), ControlEvent::Drift(item(0)));
}

#[tokio::test]
async fn status_sets_desired_against_reported_and_does_not_make_hosts() {
    let hub = Arc::new(ControlHub::default());
    assert!(hub.status("hv9").is_none(), "an unknown host");
    assert!(hub.hosts().is_empty(), "looking made no host");
    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let s = hub.status("hv1").unwrap();
    assert_eq!((s.desired_generation, s.applied_generation), (g, 0));
    assert!(
        !s.resources[0].applied() && s.resources[0].observed.is_none(),
        "pending: {s:?}"
    );
    let agent = FakeAgent::default().spawn(hub.clone(), "hv1");
    hub.wait_applied("hv1", ADDR, "web", g, Duration::from_secs(5))
        .await
        .unwrap();
    let s = hub.status("hv1").unwrap();
    assert!(s.resources[0].applied(), "{s:?}");
    assert_eq!(
        s.resources[0].observed.as_ref().unwrap().observed,
        vec!["198.18.128.5/22".to_owned()]
    );
    agent.abort();
    // Withdrawn, but the last report still has it.
    hub.withdraw("hv1", ADDR, "web");
    let s = hub.status("hv1").unwrap();
    assert_eq!(s.resources.len(), 1);
    assert_eq!(s.resources[0].desired_generation, None);
    assert!(!s.resources[0].applied());
    assert_eq!(hub.hosts(), vec!["hv1".to_owned()]);
}

#[test]
fn a_batch_is_one_generation_and_an_unchanged_batch_none() {
    let hub = ControlHub::default();
    let spec = |n: &str| {
        Spec::NetworkSegment(weft_proto::v1::NetworkSegment {
            network: n.into(),
            ..Default::default()
        })
    };
    let before = hub.generation("hv1");
    let g = hub.publish_batch(
        "hv1",
        vec![
            (
                ResourceKey::new(kinds::NETWORK_SEGMENT, "a"),
                Some(spec("a")),
            ),
            (
                ResourceKey::new(kinds::NETWORK_SEGMENT, "b"),
                Some(spec("b")),
            ),
        ],
    );
    assert_eq!(g, before + 1);
    let d = hub.desired("hv1");
    assert_eq!(d.resources.len(), 2);
    assert!(d.resources.values().all(|r| r.generation == g));
    // The same again: no new generation.
    let again = hub.publish_batch(
        "hv1",
        vec![(
            ResourceKey::new(kinds::NETWORK_SEGMENT, "a"),
            Some(spec("a")),
        )],
    );
    assert_eq!(again, g);
    // One removed, one unchanged: one generation; the unchanged keeps its own.
    let g2 = hub.publish_batch(
        "hv1",
        vec![
            (ResourceKey::new(kinds::NETWORK_SEGMENT, "a"), None),
            (
                ResourceKey::new(kinds::NETWORK_SEGMENT, "b"),
                Some(spec("b")),
            ),
        ],
    );
    assert_eq!(g2, g + 1);
    let d = hub.desired("hv1");
    assert_eq!(d.resources.len(), 1);
    assert_eq!(d.resources.values().next().unwrap().generation, g);
}

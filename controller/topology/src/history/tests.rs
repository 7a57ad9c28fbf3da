use std::time::Duration;

use weft_store::MemoryStore;

use super::*;
use crate::mapper::{TopologyMapper, create_traffic_observation};

fn map(edges: &[(&str, &str, &str, f64, Option<u16>)]) -> TopologySnapshot {
    let mapper = TopologyMapper::new();
    for (source, target, protocol, latency, status) in edges {
        for _ in 0..20 {
            let mut o = create_traffic_observation(source, 1, target, 80, protocol);
            o.latency_ms = *latency;
            o.status_code = *status;
            mapper.observe_traffic(&o).expect("valid");
        }
    }
    mapper.generate_topology_map()
}

fn history() -> History {
    History::new(Arc::new(MemoryStore::default())).expect("history")
}

#[test]
fn diff_finds_appeared_vanished_and_changed_dependencies() {
    let before = map(&[
        ("web", "api", "http", 10.0, None),
        ("api", "db", "postgres", 5.0, None),
        ("api", "old", "http", 1.0, None),
    ]);
    let after = map(&[
        ("web", "api", "http", 30.0, None),
        ("api", "db", "postgres", 5.5, Some(500)),
        ("api", "new", "http", 1.0, None),
    ]);
    let d = diff(&before, &after, DiffThresholds::default());
    assert_eq!(
        d.appeared
            .iter()
            .map(|e| e.target.as_str())
            .collect::<Vec<_>>(),
        vec!["new"]
    );
    assert_eq!(
        d.vanished
            .iter()
            .map(|e| e.target.as_str())
            .collect::<Vec<_>>(),
        vec!["old"]
    );
    let reasons: Vec<(&str, Vec<&str>)> = d
        .changed
        .iter()
        .map(|c| (c.target.as_str(), c.reasons.clone()))
        .collect();
    assert_eq!(
        reasons,
        vec![("db", vec!["errors"]), ("api", vec!["latency"])]
    );
}

#[test]
fn snapshots_are_listed_and_found_by_time_and_bounded() {
    let mut h = history();
    h.limits.max_snapshots = 2;
    let one = map(&[("a", "b", "http", 1.0, None)]);
    let two = map(&[("a", "b", "http", 1.0, None), ("b", "c", "http", 1.0, None)]);
    h.take_snapshot(&one, 100_000).expect("take");
    h.take_snapshot(&two, 200_000).expect("take");
    assert_eq!(
        h.snapshot_at(150_000)
            .expect("read")
            .expect("some")
            .dependencies
            .len(),
        1
    );
    assert_eq!(
        h.snapshot_at(250_000)
            .expect("read")
            .expect("some")
            .dependencies
            .len(),
        2
    );
    assert!(h.snapshot_at(50_000).expect("read").is_none());
    h.take_snapshot(&two, 300_000).expect("take");
    let times: Vec<u64> = h
        .snapshots()
        .expect("list")
        .iter()
        .map(|s| s.taken_at_unix_ns)
        .collect();
    assert_eq!(
        times,
        vec![200_000, 300_000],
        "the oldest is dropped beyond the bound"
    );
}

#[test]
fn new_dependencies_raise_events_and_unauthorised_ones_are_counted() {
    let h = history();
    let list = AllowList::parse(
        "allow = [\"web -> api http\", \"api -> db* [postgres]\"]",
        "t",
    )
    .expect("valid");
    h.set_allow_list(list, "").expect("set");
    let mut events = h.events.subscribe();
    h.observe(&map(&[("web", "api", "http", 1.0, None)]));
    assert!(events.try_recv().is_err(), "the first look only learns");
    h.observe(&map(&[
        ("web", "api", "http", 1.0, None),
        ("api", "db-1", "postgres", 1.0, None),
        ("web", "db-1", "postgres", 1.0, None),
    ]));
    let types: Vec<(&str, String)> = h
        .events
        .recent()
        .iter()
        .map(|e| {
            (
                e.event_type,
                e.data["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        types,
        vec![
            ("weft.topology.dependency.appeared", "db-1".to_owned()),
            ("weft.topology.dependency.appeared", "db-1".to_owned()),
            ("weft.topology.dependency.unauthorized", "db-1".to_owned()),
        ]
    );
    assert_eq!(
        events.try_recv().expect("broadcast").event_type,
        "weft.topology.dependency.appeared"
    );
    assert_eq!(h.unauthorized_dependencies(), 1);
}

#[test]
fn allow_lists_parse_from_json_and_toml_and_errors_name_the_entry() {
    let json = AllowList::parse(r#"["web -> api", "* -> dns [dns]"]"#, "a.json").expect("json");
    assert_eq!(json.rules.len(), 2);
    assert_eq!(json.rules[1].protocol.as_deref(), Some("dns"));
    let object = AllowList::parse(r#"{"allow": ["a -> b"]}"#, "a.json").expect("object");
    assert_eq!(object.rules[0].target, "b");
    let error = AllowList::parse(r#"["a -> b", "nonsense"]"#, "a.json").unwrap_err();
    assert!(
        error.contains("entry 2") && error.contains("nonsense"),
        "{error}"
    );
    let error = AllowList::parse("allowed = []", "a.toml").unwrap_err();
    assert!(error.contains("a.toml"), "{error}");
}

#[test]
fn the_allow_list_survives_a_restart_on_the_same_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let text = "allow = [\"a -> b\"]";
    let first = History::new(store.clone()).expect("history");
    first
        .set_allow_list(AllowList::parse(text, "t").expect("valid"), text)
        .expect("set");
    let second = History::new(store).expect("history");
    assert_eq!(second.allow_list().expect("loaded").rules.len(), 1);
}

#[test]
fn snapshots_on_request_cannot_push_the_scheduled_ones_out() {
    let h = History::with_limits(
        Arc::new(MemoryStore::default()),
        HistoryLimits {
            max_snapshots: 10,
            max_manual_snapshots: 3,
            manual_min_interval: Duration::ZERO,
        },
    )
    .expect("history");
    let one = map(&[("a", "b", "http", 1.0, None)]);
    for minute in 1..=10u64 {
        h.take_snapshot(&one, minute * 60_000_000_000)
            .expect("take");
    }
    for i in 0..200u64 {
        h.take_manual_snapshot("ci", || one.clone(), 11 * 60_000_000_000 + i * 1_000)
            .expect("take on request");
    }
    let all = h.snapshots().expect("list");
    assert_eq!(
        all.iter().filter(|s| !s.manual).count(),
        10,
        "every scheduled one"
    );
    assert_eq!(all.iter().filter(|s| s.manual).count(), 3);
    assert_eq!(all[0].taken_at_unix_ns, 60_000_000_000);
    // The newest on-request snapshot is found by time like the others.
    let newest = 11 * 60_000_000_000 + 199_000;
    assert!(h.snapshot_at(newest).expect("read").is_some());
}

#[test]
fn snapshots_on_request_keep_a_minimum_interval() {
    let h = History::with_limits(
        Arc::new(MemoryStore::default()),
        HistoryLimits {
            manual_min_interval: Duration::from_secs(10),
            ..HistoryLimits::default()
        },
    )
    .expect("history");
    let one = map(&[("a", "b", "http", 1.0, None)]);
    const S: u64 = 1_000_000_000;
    h.take_manual_snapshot("ci", || one.clone(), 100 * S)
        .expect("first");
    let mut built = false;
    match h.take_manual_snapshot(
        "ci",
        || {
            built = true;
            one.clone()
        },
        104 * S,
    ) {
        Err(HistoryError::TooSoon { retry_after, .. }) => {
            assert_eq!(retry_after, Duration::from_secs(6));
        }
        other => panic!("{other:?}"),
    }
    assert!(!built, "a refused snapshot is not even built");
    assert_eq!(h.snapshots().expect("list").len(), 1);
    // Another client has its own interval.
    h.take_manual_snapshot("dashboards", || one.clone(), 105 * S)
        .expect("another client");
    assert!(matches!(
        h.take_manual_snapshot("dashboards", || one.clone(), 109 * S),
        Err(HistoryError::TooSoon { retry_after, .. }) if retry_after == Duration::from_secs(6)
    ));
    h.take_manual_snapshot("ci", || one.clone(), 110 * S)
        .expect("after the interval");
    assert_eq!(h.snapshots().expect("list").len(), 3);
}

#[test]
fn dependencies_are_announced_at_ingest_once_with_the_allow_lists_verdict() {
    let h = Arc::new(history());
    h.set_allow_list(
        AllowList::parse(r#"["web -> api http"]"#, "t").expect("valid"),
        "",
    )
    .expect("set");
    let topology = crate::topology::Topology::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    assert!(topology.announce_to(tx.clone()));
    assert!(!topology.announce_to(tx), "set once");
    let mapper_dir = crate::mapper::NoDirectory;
    let send = |source: &str, target: &str, port: u16, protocol: &str| {
        let o = create_traffic_observation(source, 1, target, port, protocol);
        topology.observe_traffic(&o, &mapper_dir).expect("valid");
    };
    send("web", "api", 80, "http");
    send("web", "api", 80, "http");
    send("web", "db", 5432, "");
    let first = rx.try_recv().expect("web -> api announced");
    assert_eq!(
        (
            first.source.as_str(),
            first.target.as_str(),
            first.port,
            first.protocol
        ),
        ("web", "api", 80, "http")
    );
    let second = rx.try_recv().expect("web -> db announced");
    assert_eq!(second.protocol, "postgres", "the port's guess");
    assert!(rx.try_recv().is_err(), "an update is no announcement");
    assert!(h.appeared(&first));
    assert!(h.appeared(&second));
    assert!(!h.appeared(&second), "once");
    let events: Vec<(&str, String)> = h
        .events
        .recent()
        .iter()
        .map(|e| {
            (
                e.event_type,
                e.data["target"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("weft.topology.dependency.appeared", "api".to_owned()),
            ("weft.topology.dependency.appeared", "db".to_owned()),
            ("weft.topology.dependency.unauthorized", "db".to_owned()),
        ]
    );
    assert_eq!(h.events.recent()[0].data["found_by"], "ingest");
    // A snapshot of what ingest announced finds nothing new.
    h.observe(&map(&[("web", "api", "http", 1.0, None)]));
    h.observe(&map(&[("web", "api", "http", 1.0, None)]));
    assert_eq!(h.events.recent().len(), 3);
    // A full channel drops (and counts) instead of blocking ingest.
    for port in 1000..1020 {
        send("web", "svc", port, "tcp");
    }
    assert_eq!(topology.appeared_dropped(), 20 - 16);
}

#[test]
fn a_restart_knows_the_dependencies_of_the_last_stored_snapshot() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let first = History::new(store.clone()).expect("history");
    let snapshot = map(&[("web", "api", "http", 1.0, None)]);
    first.take_snapshot(&snapshot, 1_000_000).expect("stored");
    let again = History::new(store).expect("history");
    let known = crate::topology::Appeared {
        source: "web".into(),
        target: "api".into(),
        transport: crate::model::Transport::Tcp,
        port: 80,
        protocol: "http",
        at_unix_ns: 2_000_000,
    };
    assert!(!again.appeared(&known), "known from the stored snapshot");
    let new = crate::topology::Appeared {
        target: "db".into(),
        ..known
    };
    assert!(again.appeared(&new));
    assert_eq!(again.events.recent().len(), 1);
}

//! One suite, run against every back end.

use super::*;

fn suite(store: &dyn Store) {
    assert_eq!(store.get("a").expect("get"), None);
    store.put("snap/2", b"two").expect("put");
    store.put("snap/1", b"one").expect("put");
    store.put("snaq", b"x").expect("put");
    assert_eq!(
        store.get("snap/1").expect("get").as_deref(),
        Some(&b"one"[..])
    );
    let keys: Vec<String> = store
        .scan_prefix("snap/")
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["snap/1", "snap/2"]);
    assert!(store.delete("snap/1").expect("delete"));
    assert!(!store.delete("snap/1").expect("delete"));
    assert!(
        !store
            .compare_and_swap("k", Some(b"v"), Some(b"w"))
            .expect("cas"),
        "absent is not v"
    );
    assert!(store.compare_and_swap("k", None, Some(b"v")).expect("cas"));
    assert!(!store.compare_and_swap("k", None, Some(b"x")).expect("cas"));
    assert!(
        store
            .compare_and_swap("k", Some(b"v"), Some(b"w"))
            .expect("cas")
    );
    assert_eq!(store.get("k").expect("get").as_deref(), Some(&b"w"[..]));
    assert!(store.compare_and_swap("k", Some(b"w"), None).expect("cas"));
    assert_eq!(store.get("k").expect("get"), None);

    // txn: all compares hold -> all ops, atomically; any compare fails -> nothing.
    store.put("t/a", b"1").expect("put");
    store.put("t/del", b"gone").expect("put");
    let applied = store
        .txn(
            &[("t/a", Some(b"1")), ("t/b", None)],
            &[("t/a", Some(b"2")), ("t/b", Some(b"x")), ("t/del", None)],
        )
        .expect("txn");
    assert!(applied);
    assert_eq!(store.get("t/a").expect("get").as_deref(), Some(&b"2"[..]));
    assert_eq!(store.get("t/b").expect("get").as_deref(), Some(&b"x"[..]));
    assert_eq!(store.get("t/del").expect("get"), None, "a delete op");
    let refused = store
        .txn(
            &[("t/a", Some(b"2")), ("t/b", None)],
            &[("t/a", Some(b"3")), ("t/c", Some(b"y"))],
        )
        .expect("txn");
    assert!(!refused, "t/b exists, so the second compare fails");
    assert_eq!(
        store.get("t/a").expect("get").as_deref(),
        Some(&b"2"[..]),
        "no op applied"
    );
    assert_eq!(store.get("t/c").expect("get"), None, "no op applied");
    assert!(
        store.txn(&[], &[("t/c", Some(b"y"))]).expect("txn"),
        "no compares always applies"
    );

    // scan_from: start within the prefix, bounded.
    for i in 0..5 {
        store.put(&format!("e/{i:03}"), b"e").expect("put");
    }
    store.put("f/000", b"f").expect("put");
    let keys = |v: Vec<(String, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.scan_from("e/", "e/002", 2).expect("scan")),
        vec!["e/002", "e/003"]
    );
    assert_eq!(
        keys(store.scan_from("e/", "e/003", 10).expect("scan")),
        vec!["e/003", "e/004"]
    );
    assert_eq!(
        keys(store.scan_from("e/", "", 1).expect("scan")),
        vec!["e/000"]
    );
}

#[test]
fn memory_store_passes_the_suite() {
    suite(&MemoryStore::default());
}

#[cfg(feature = "redb")]
#[test]
fn redb_store_passes_the_suite_and_keeps_writes_across_reopen() {
    let dir = std::env::temp_dir().join(format!(
        "weft-store-test-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    {
        let store = RedbStore::open_dir(&dir).expect("open");
        suite(&store);
        store.put("durable", b"yes").expect("put");
    }
    let reopened = RedbStore::open_dir(&dir).expect("reopen");
    assert_eq!(
        reopened.get("durable").expect("get").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        reopened.get("snap/2").expect("get").as_deref(),
        Some(&b"two"[..])
    );
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether the test may skip for want of the etcd binary: only when not run as root (as
/// root, as CI runs, `cargo xtask setup` installed it and its absence is a failure).
#[cfg(feature = "etcd")]
fn etcd_or_skip() -> bool {
    if crate::etcd_process::available() {
        return true;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    assert!(
        !root,
        "etcd not found: run `cargo xtask setup` (Debian package etcd-server)"
    );
    eprintln!("etcd not found; skipped (cargo xtask setup installs it)");
    false
}

#[cfg(feature = "etcd")]
#[test]
fn etcd_store_passes_the_suite_and_scans_past_a_page() {
    use crate::etcd_process::EtcdCluster;
    if !etcd_or_skip() {
        return;
    }
    let cluster = EtcdCluster::start(&std::env::temp_dir(), 1).expect("etcd started");
    let config = EtcdConfig::parse(&cluster.url()).expect("url");
    let store = EtcdStore::open(config).expect("open");
    suite(&store);
    // More keys than one range page: a scan pages through them in order.
    let ops: Vec<(String, Vec<u8>)> = (0..2_500)
        .map(|i| (format!("many/{i:05}"), vec![b'v'; 3]))
        .collect();
    let op_refs: Vec<(&str, Option<&[u8]>)> = ops
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
        .collect();
    assert!(store.txn(&[], &op_refs).expect("one txn of 2,500 puts"));
    let keys: Vec<String> = store
        .scan_prefix("many/")
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 2_500);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        store
            .scan_from("many/", "many/01000", 1_500)
            .expect("scan")
            .len(),
        1_500
    );
    // Another prefix on the same cluster does not see these keys.
    let mut other = EtcdConfig::parse(&format!("{}/other", cluster.url())).expect("url");
    other.timeout = std::time::Duration::from_secs(2);
    let other = EtcdStore::open(other).expect("open");
    assert_eq!(other.get("snap/2").expect("get"), None);
    assert!(other.scan_prefix("").expect("scan").is_empty());
}

/// Two controllers on one cluster: the first holds the fence and the second cannot take
/// it; when the first's lease is gone (as when its process stalls past the TTL) the second
/// takes it, and from then on every write of the first is refused with "fenced" and
/// changes nothing.
#[cfg(feature = "etcd")]
#[test]
fn etcd_fence_lets_one_writer_at_a_time() {
    use crate::etcd_process::EtcdCluster;
    use std::time::Duration;
    if !etcd_or_skip() {
        return;
    }
    let cluster = EtcdCluster::start(&std::env::temp_dir(), 1).expect("etcd started");
    let open = || EtcdStore::open(EtcdConfig::parse(&cluster.url()).expect("url")).expect("open");
    let (a, b) = (open(), open());
    let lease = a
        .acquire_fence(
            "election/controller",
            "a",
            Duration::from_secs(3),
            Duration::ZERO,
        )
        .expect("a takes the fence");
    assert!(a.holds_fence());
    a.put("k", b"a").expect("a writes");
    let refused = b
        .acquire_fence(
            "election/controller",
            "b",
            Duration::from_secs(3),
            Duration::from_millis(500),
        )
        .expect_err("b cannot take a held fence");
    assert!(refused.0.contains("held by \"a\""), "{refused}");

    // a's lease goes (revoked here; a stalled process lets it expire), b takes over.
    b.call(
        "/v3/lease/revoke",
        &serde_json::json!({"ID": lease.to_string()}),
    )
    .expect("revoke");
    b.acquire_fence(
        "election/controller",
        "b",
        Duration::from_secs(3),
        Duration::from_secs(5),
    )
    .expect("b takes the fence");
    b.put("k", b"b").expect("b writes");
    for attempt in [
        a.put("k", b"a-again").map(|_| true),
        a.compare_and_swap("k", Some(b"b"), Some(b"a")),
        a.txn(&[], &[("other", Some(b"a"))]),
        a.delete("k"),
    ] {
        let e = attempt.expect_err("a's writes are fenced");
        assert!(e.0.starts_with("fenced"), "{e}");
    }
    assert!(!a.holds_fence());
    assert_eq!(b.get("k").expect("get").as_deref(), Some(&b"b"[..]));
    assert_eq!(b.get("other").expect("get"), None);
    // Giving the fence up lets the next one take it at once.
    b.release_fence();
    let c = open();
    c.acquire_fence(
        "election/controller",
        "c",
        Duration::from_secs(3),
        Duration::ZERO,
    )
    .expect("c takes the released fence");
}

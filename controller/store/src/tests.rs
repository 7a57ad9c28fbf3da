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

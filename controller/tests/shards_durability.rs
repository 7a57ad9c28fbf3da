//! The real `weft-controller` binary with a redb data dir: a burst of address allocations
//! over HTTP, SIGKILL in the middle, and every acknowledged allocation is still there
//! after the restart, none handed out twice. Also a throughput probe (ignored by default:
//! run it on a release build).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_shards::ShardConfig;
use weft_store::RedbStore;

#[path = "common/alloc_http.rs"]
mod alloc_http;
use alloc_http::{Ack, allocate_fresh, assert_stored, hammer, prepare, start};

#[test]
fn kill_9_during_an_allocation_burst_loses_no_acknowledged_allocation() {
    let dir = std::env::temp_dir().join(format!(
        "weft-kill9-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (mut child, http) = start(&dir, &[]);
    prepare(&http, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads = hammer(&http, 16, stop.clone(), count.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < 3_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reap");
    stop.store(true, Ordering::Relaxed);
    let acks: Vec<Ack> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("client thread"))
        .collect();
    assert!(
        acks.len() >= 3_000,
        "only {} acknowledged before the kill",
        acks.len()
    );

    let mut by_address: HashMap<&str, &Ack> = HashMap::new();
    for a in &acks {
        assert!(
            by_address.insert(&a.address, a).is_none(),
            "{} acknowledged twice",
            a.address
        );
    }
    {
        // What a restarted controller rebuilds from.
        let store = RedbStore::open_dir(&dir).expect("open the killed controller's store");
        let index = assert_stored(&store, &acks);
        eprintln!(
            "{} acknowledged allocations before SIGKILL, {} stored",
            acks.len(),
            index.allocations().count()
        );
    }

    // The restarted binary serves them and hands out only fresh addresses.
    let (mut child, http) = start(&dir, &[]);
    let mut c = http.connect().expect("connect");
    let sample = &acks[acks.len() / 2];
    let (code, body) = c
        .request(
            "GET",
            &format!("/networks/blue/workloads/{}/addresses", sample.workload),
            "",
        )
        .unwrap();
    assert_eq!(code, 200);
    assert!(body.contains(&format!("\"{}\"", sample.address)), "{body}");
    allocate_fresh(&mut c, 50, &by_address, "after the restart");
    child.kill().expect("kill");
    child.wait().expect("reap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Durable allocations per second over HTTP. Run on a release build:
/// `cargo test --release -p weft-controller --test shards_durability -- --ignored --nocapture`
#[test]
#[ignore = "a measurement; run on a release build"]
fn durable_allocations_per_second_over_http() {
    let dir = std::env::temp_dir().join(format!(
        "weft-alloc-rate-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let (mut child, http) = start(
        &dir,
        &[
            "--shard-pool",
            "10.0.0.0/12",
            "--max-shards-per-network",
            "64",
        ],
    );
    prepare(&http, 48);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let clients: usize = std::env::var("WEFT_CLIENTS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(256);
    let threads = hammer(&http, clients, stop.clone(), count.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (c0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    let (c1, t1) = (count.load(Ordering::Relaxed), Instant::now());
    stop.store(true, Ordering::Relaxed);
    let total: usize = threads.into_iter().map(|t| t.join().unwrap().len()).sum();
    let rate = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    eprintln!(
        "durable allocations over HTTP: {rate:.0}/s ({clients} keep-alive clients, {total} in all)"
    );
    child.kill().expect("kill");
    child.wait().expect("reap");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Durable allocations per second through the manager (no HTTP), for comparison.
#[test]
#[ignore = "a measurement; run on a release build"]
fn durable_allocations_per_second_in_process() {
    let dir = std::env::temp_dir().join(format!(
        "weft-alloc-rate-ip-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = ShardConfig {
            pools: vec!["10.0.0.0/12".parse().unwrap()],
            max_shards_per_network: 64,
            ..ShardConfig::default()
        };
        let store: Arc<dyn weft_store::Store> = if std::env::var_os("WEFT_MEMORY").is_some() {
            Arc::new(weft_store::MemoryStore::default())
        } else {
            Arc::new(RedbStore::open_dir(&dir).unwrap())
        };
        let m = weft_shards::ShardManager::open(
            store,
            config,
            weft_controller::compose::HubAddresses::publisher(Arc::default()),
        )
        .unwrap();
        for _ in 0..48 {
            m.create_shard(weft_shards::CreateShard {
                family: weft_shards::Family::Ipv4,
                prefix_len: 20,
                network_id: Some("blue".into()),
                reserved: false,
            })
            .await
            .unwrap();
        }
        for clients in [64usize, 512] {
            let start = Instant::now();
            let per = 20_000 / clients;
            let tasks: Vec<_> = (0..clients)
                .map(|t| {
                    let m = m.clone();
                    tokio::spawn(async move {
                        for i in 0..per {
                            m.allocate_address(
                                "blue",
                                &format!("c{clients}-w{t}-{i}"),
                                "h0",
                                weft_shards::Family::Ipv4,
                            )
                            .await
                            .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let rate = (per * clients) as f64 / start.elapsed().as_secs_f64();
            eprintln!("in-process durable allocations, {clients} concurrent: {rate:.0}/s");
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "a measurement; run on a release build"]
fn redb_txn_cost() {
    use weft_store::Store as _;
    let dir = std::env::temp_dir().join(format!("weft-redb-cost-{}", rand::random::<u32>()));
    let store = RedbStore::open_dir(&dir).unwrap();
    let value = vec![b'x'; 300];
    for batch in [64usize, 512] {
        let start = Instant::now();
        let mut n = 0u64;
        for _ in 0..50 {
            let keys: Vec<String> = (0..batch * 2)
                .map(|_| {
                    n += 1;
                    format!("shards/event/{n:020}")
                })
                .collect();
            let ops: Vec<(&str, Option<&[u8]>)> = keys
                .iter()
                .map(|k| (k.as_str(), Some(value.as_slice())))
                .collect();
            store.txn(&[], &ops).unwrap();
        }
        let per = start.elapsed() / 50;
        eprintln!("redb txn of {} puts: {per:?}", batch * 2);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

//! Shard manager tests: allocation rules, a property test against a model (with a
//! memory and a redb store, restarts included), concurrency, and migrations driven by a
//! fake agent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use weft_store::{MemoryStore, RedbStore};

use weft_control::ControlHub;
use weft_control::fake::FakeAgent;
use weft_controller::compose::HubAddresses;
use weft_shards::*;

#[path = "shard_manager/cancel.rs"]
mod cancel;

fn v4(prefix_len: u8, network: Option<&str>) -> CreateShard {
    CreateShard {
        family: Family::Ipv4,
        prefix_len,
        network_id: network.map(str::to_owned),
        reserved: false,
    }
}

fn small_config() -> ShardConfig {
    ShardConfig {
        pools: vec![
            "10.0.0.0/24".parse().unwrap(),
            "fd00::/120".parse().unwrap(),
        ],
        reserved: vec!["10.0.0.64/27".parse().unwrap()],
        max_shards_per_network: 3,
        migration_timeout: Duration::from_millis(300),
        migration_deadline: None,
        migration_concurrency: 8,
        event_retention: 100_000,
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "weft-shards-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Waits until `f` holds (polling), or panics after `timeout`.
async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An agent that applies every desired state of `host` at once and reports it (with a
/// made-up 300 us down time), until the returned handle is aborted.
fn fake_agent(hub: Arc<ControlHub>, host: &str) -> tokio::task::JoinHandle<()> {
    FakeAgent::default().spawn(hub, host)
}

#[tokio::test]
async fn shards_are_carved_aligned_around_reserved_ranges_and_never_overlap() {
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        small_config(),
        HubAddresses::publisher(Arc::default()),
    )
    .unwrap();
    let a = m.create_shard(v4(26, None)).await.unwrap();
    assert_eq!(a.cidr.to_string(), "10.0.0.0/26");
    assert_eq!(a.gateway.to_string(), "10.0.0.1");
    assert_eq!(a.status, ShardStatus::Available);
    // 10.0.0.64/27 is reserved: the next /26 is .128.
    let b = m.create_shard(v4(26, Some("blue"))).await.unwrap();
    assert_eq!(
        (b.cidr.to_string(), b.status),
        ("10.0.0.128/26".to_owned(), ShardStatus::InUse)
    );
    let c = m.create_shard(v4(28, None)).await.unwrap();
    assert_eq!(
        c.cidr.to_string(),
        "10.0.0.96/28",
        "first free aligned /28 after the reserved /27"
    );
    let v6 = m
        .create_shard(CreateShard {
            family: Family::Ipv6,
            prefix_len: 124,
            network_id: None,
            reserved: false,
        })
        .await
        .unwrap();
    assert_eq!(v6.cidr.to_string(), "fd00::/124");
    let err = m.create_shard(v4(19, None)).await.unwrap_err();
    assert!(
        matches!(err, ShardError::Invalid { ref field, .. } if field == "prefix_len"),
        "{err}"
    );
    assert_eq!(
        m.create_shard(v4(26, None)).await.unwrap().cidr.to_string(),
        "10.0.0.192/26"
    );
    let err = m.create_shard(v4(26, None)).await.unwrap_err();
    assert!(
        matches!(err, ShardError::Conflict(ref msg) if msg.contains("--shard-pool")),
        "{err}"
    );
    assert_eq!(
        m.create_shard(v4(28, None)).await.unwrap().cidr.to_string(),
        "10.0.0.112/28"
    );
    m.read().check_invariants().unwrap();
}

#[tokio::test]
async fn reused_address_cannot_be_released_by_earlier_holder() {
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        small_config(),
        HubAddresses::publisher(Arc::default()),
    )
    .unwrap();
    m.create_shard(v4(28, Some("blue"))).await.unwrap();
    // A /28 has 13 usable addresses (not .0, the gateway .1, nor the broadcast .15).
    let mut held = Vec::new();
    for i in 0..13 {
        held.push(
            m.allocate_address("blue", &format!("w{i}"), "h1", Family::Ipv4)
                .await
                .unwrap(),
        );
    }
    let addrs: BTreeSet<String> = held.iter().map(|a| a.address.to_string()).collect();
    assert_eq!(addrs.len(), 13);
    assert!(
        !addrs.contains("10.0.0.0") && !addrs.contains("10.0.0.1") && !addrs.contains("10.0.0.15")
    );
    let full = m
        .allocate_address("blue", "late", "h1", Family::Ipv4)
        .await
        .unwrap_err();
    assert!(matches!(full, ShardError::Conflict(_)), "{full}");

    let first = held[0].clone();
    m.release_address("blue", first.address, first.seq)
        .await
        .unwrap();
    let again = m
        .allocate_address("blue", "new-holder", "h1", Family::Ipv4)
        .await
        .unwrap();
    assert_eq!(
        again.address, first.address,
        "the only free address is reused"
    );
    assert!(again.seq > first.seq);
    let refused = m
        .release_address("blue", first.address, first.seq)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ShardError::Conflict(ref msg) if msg.contains("earlier holder")),
        "{refused}"
    );
    assert_eq!(
        m.read().allocation(first.address).unwrap().workload,
        "new-holder"
    );
    m.release_address("blue", again.address, again.seq)
        .await
        .unwrap();
    m.read().check_invariants().unwrap();
}

#[tokio::test]
async fn releasing_a_workload_frees_all_its_addresses_and_its_desired_state() {
    let hub = Arc::new(ControlHub::default());
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        small_config(),
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap();
    m.create_shard(v4(28, Some("blue"))).await.unwrap();
    m.create_shard(CreateShard {
        family: Family::Ipv6,
        prefix_len: 124,
        network_id: Some("blue".into()),
        reserved: false,
    })
    .await
    .unwrap();
    let a = m
        .allocate_address("blue", "web", "h1", Family::Ipv4)
        .await
        .unwrap();
    let b = m
        .allocate_address("blue", "web", "h1", Family::Ipv6)
        .await
        .unwrap();
    m.allocate_address("blue", "db", "h1", Family::Ipv4)
        .await
        .unwrap();
    let desired = hub.desired("h1").workload_addresses();
    let web: Vec<&str> = desired["web"].iter().map(|a| a.cidr.as_str()).collect();
    assert_eq!(web.len(), 2);
    assert!(
        web.contains(&format!("{}/28", a.address).as_str())
            && web.contains(&format!("{}/124", b.address).as_str())
    );
    assert!(!desired["web"][0].gateway.is_empty());
    let released = m.release_workload("blue", "web").await.unwrap();
    assert_eq!(released.len(), 2);
    assert!(!hub.desired("h1").workload_addresses().contains_key("web"));
    assert!(hub.desired("h1").workload_addresses().contains_key("db"));
    assert!(m.release_workload("blue", "web").await.unwrap().is_empty());
    m.read().check_invariants().unwrap();
}

#[tokio::test]
async fn network_policy_and_shard_ownership_are_enforced() {
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        small_config(),
        HubAddresses::publisher(Arc::default()),
    )
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(m.create_shard(v4(28, None)).await.unwrap().id);
    }
    for id in &ids[..3] {
        m.assign_shard("blue", id).await.unwrap();
    }
    let at_max = m.assign_shard("blue", &ids[3]).await.unwrap_err();
    assert!(
        matches!(at_max, ShardError::Conflict(ref msg) if msg.contains("maximum")),
        "{at_max}"
    );
    let taken = m.assign_shard("red", &ids[0]).await.unwrap_err();
    assert!(
        matches!(taken, ShardError::Conflict(ref msg) if msg.contains("belongs to network blue")),
        "{taken}"
    );
    assert_eq!(
        m.assign_shard("blue", &ids[0])
            .await
            .unwrap()
            .network_id
            .as_deref(),
        Some("blue"),
        "idempotent"
    );
    let a = m
        .allocate_address("blue", "web", "h1", Family::Ipv4)
        .await
        .unwrap();
    let in_use = m.delete_shard(&a.shard_id).await.unwrap_err();
    assert!(
        matches!(in_use, ShardError::Conflict(ref msg) if msg.contains("deallocate")),
        "{in_use}"
    );
    let wrong = m.deallocate_shard("red", &a.shard_id).await.unwrap_err();
    assert!(matches!(wrong, ShardError::Conflict(_)), "{wrong}");
    match m.deallocate_shard("blue", &ids[2]).await.unwrap() {
        Deallocation::Released(s) => {
            assert_eq!((s.status, s.network_id), (ShardStatus::Available, None))
        }
        other => panic!("{other:?}"),
    }
    m.delete_shard(&ids[2]).await.unwrap();
    assert!(matches!(
        m.delete_shard(&ids[2]).await.unwrap_err(),
        ShardError::NotFound(_)
    ));
    m.read().check_invariants().unwrap();
}

#[tokio::test]
async fn restart_rebuilds_the_index_and_the_control_hub_from_the_store() {
    let dir = temp_dir("restart");
    let config = small_config();
    let (before, allocs) = {
        let first_hub = Arc::new(ControlHub::default());
        let m = ShardManager::open(
            Arc::new(RedbStore::open_dir(&dir).unwrap()),
            config.clone(),
            HubAddresses::publisher(first_hub.clone()),
        )
        .unwrap();
        m.create_shard(v4(27, Some("blue"))).await.unwrap();
        let mut allocs = Vec::new();
        for i in 0..20 {
            allocs.push(
                m.allocate_address(
                    "blue",
                    &format!("w{}", i % 7),
                    &format!("h{}", i % 3),
                    Family::Ipv4,
                )
                .await
                .unwrap(),
            );
        }
        m.release_address("blue", allocs[3].address, allocs[3].seq)
            .await
            .unwrap();
        (first_hub.desired("h0"), allocs)
    };
    let hub = Arc::new(ControlHub::default());
    let m = reopen(&dir, config, hub.clone()).await;
    assert_eq!(
        hub.desired("h0").workload_addresses(),
        before.workload_addresses()
    );
    for (i, a) in allocs.iter().enumerate() {
        assert_eq!(
            m.read().allocation(a.address).is_some(),
            i != 3,
            "{}",
            a.address
        );
    }
    let next = m
        .allocate_address("blue", "fresh", "h0", Family::Ipv4)
        .await
        .unwrap();
    assert!(
        next.seq > allocs.last().unwrap().seq,
        "sequences continue after a restart"
    );
    assert!(
        allocs
            .iter()
            .enumerate()
            .all(|(i, a)| i == 3 || a.address != next.address)
    );
    m.read().check_invariants().unwrap();
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens the redb store of `dir` once the previous manager's writer thread let go of it.
async fn reopen(dir: &std::path::Path, config: ShardConfig, hub: Arc<ControlHub>) -> ShardManager {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match RedbStore::open_dir(dir) {
            Ok(store) => {
                return ShardManager::open(Arc::new(store), config, HubAddresses::publisher(hub))
                    .unwrap();
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "reopening: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// ----- migrations -----

fn migration_config() -> ShardConfig {
    ShardConfig {
        pools: vec!["198.18.128.0/17".parse().unwrap()],
        reserved: Vec::new(),
        max_shards_per_network: 4,
        migration_timeout: Duration::from_millis(200),
        migration_deadline: None,
        migration_concurrency: 64,
        event_retention: 1_000_000,
    }
}

async fn fill(
    m: &ShardManager,
    network: &str,
    workloads: usize,
    hosts: usize,
) -> (Shard, Vec<Allocation>) {
    let shard = m.create_shard(v4(22, Some(network))).await.unwrap();
    let futures = (0..workloads).map(|i| {
        let m = m.clone();
        let network = network.to_owned();
        async move {
            m.allocate_address(
                &network,
                &format!("vm{i}"),
                &format!("hv{}", i % hosts),
                Family::Ipv4,
            )
            .await
            .unwrap()
        }
    });
    (shard, futures::future::join_all(futures).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_moves_every_workload_to_a_new_address_then_frees_the_shard() {
    let hub = Arc::new(ControlHub::default());
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        migration_config(),
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap();
    let agents: Vec<_> = (0..4)
        .map(|h| fake_agent(hub.clone(), &format!("hv{h}")))
        .collect();
    let (shard, old) = fill(&m, "blue", 256, 4).await;
    let from = m.next_event();
    let started = Instant::now();
    let mid = match m.deallocate_shard("blue", &shard.id).await.unwrap() {
        Deallocation::Migrating(mig) => mig.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::Migrating);
    let refused = m
        .allocate_address("blue", "late", "hv0", Family::Ipv4)
        .await;
    if let Ok(a) = &refused {
        assert_ne!(a.shard_id, shard.id, "no allocation from a migrating shard");
    }
    eventually(Duration::from_secs(5), "migration completed", || {
        m.migration(&mid)
            .is_some_and(|mig| mig.state == MigrationState::Completed)
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!("256 workloads migrated in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    let s = m.shard(&shard.id).unwrap();
    assert_eq!(
        (s.status, s.network_id.as_deref(), s.resource_count),
        (ShardStatus::Available, None, 0)
    );
    let mig = m.migration(&mid).unwrap();
    assert!(
        mig.moves
            .iter()
            .all(|mv| mv.state == MoveState::Done && mv.down_us == 300)
    );
    for a in &old {
        assert!(
            m.read().allocation(a.address).is_none(),
            "old {} released",
            a.address
        );
        let now = m.read().workload_addresses("blue", &a.workload);
        assert_eq!(now.len(), 1, "{}", a.workload);
        assert_ne!(now[0].shard_id, shard.id);
        assert!(!now[0].retiring);
        let desired = hub.desired(&a.host_id);
        assert_eq!(desired.workload_addresses()[&a.workload].len(), 1);
        assert_eq!(
            desired.workload_addresses()[&a.workload][0].cidr,
            format!("{}/22", now[0].address)
        );
    }
    m.read().check_invariants().unwrap();

    let events = m.stored_events(from, 100_000).unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gapless sequences"
    );
    let pos = |t: &str| {
        events
            .iter()
            .position(|e| e.event_type == t)
            .unwrap_or_else(|| panic!("no {t}"))
    };
    assert!(pos("weft.shard.migration.started") < pos("weft.address.released"));
    assert!(
        pos("weft.shard.created") < pos("weft.shard.deallocated"),
        "a shard carved for the moves"
    );
    assert!(pos("weft.shard.deallocated") < pos("weft.shard.migration.completed"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event_type == "weft.address.released")
            .count(),
        256
    );
    assert_eq!(
        events.last().unwrap().event_type,
        "weft.shard.migration.completed"
    );
    for a in agents {
        a.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_report_pauses_the_migration_until_it_does() {
    let hub = Arc::new(ControlHub::default());
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        migration_config(),
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap();
    let hv0 = fake_agent(hub.clone(), "hv0");
    let (shard, _) = fill(&m, "blue", 16, 2).await; // hv1 has no agent
    let from = m.next_event();
    let Deallocation::Migrating(mig) = m.deallocate_shard("blue", &shard.id).await.unwrap() else {
        panic!()
    };
    eventually(Duration::from_secs(3), "paused", || {
        m.migration(&mig.id)
            .is_some_and(|x| x.state == MigrationState::Paused && x.error.contains("hv1"))
    })
    .await;
    let paused = m.migration(&mig.id).unwrap();
    assert!(paused.error.contains("offline"), "{}", paused.error);
    assert_eq!(
        paused
            .moves
            .iter()
            .filter(|mv| mv.state == MoveState::Done)
            .count(),
        8,
        "hv0's workloads moved"
    );
    assert!(
        paused
            .moves
            .iter()
            .filter(|mv| mv.host_id == "hv1")
            .all(|mv| mv.state == MoveState::Moving && !mv.error.is_empty())
    );
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::Migrating);

    let hv1 = fake_agent(hub.clone(), "hv1");
    eventually(
        Duration::from_secs(5),
        "completed after the agent came back",
        || {
            m.migration(&mig.id)
                .is_some_and(|x| x.state == MigrationState::Completed)
        },
    )
    .await;
    let types: Vec<String> = m
        .stored_events(from, 10_000)
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert!(pos("weft.shard.migration.started") < pos("weft.shard.migration.paused"));
    assert!(pos("weft.shard.migration.paused") < pos("weft.shard.migration.resumed"));
    assert!(pos("weft.shard.migration.resumed") < pos("weft.shard.migration.completed"));
    m.read().check_invariants().unwrap();
    hv0.abort();
    hv1.abort();
}

#[test]
fn a_restarted_controller_resumes_a_migration_without_double_allocation() {
    let dir = temp_dir("mig-restart");
    let config = migration_config();
    let (shard_id, mig_id, old) = {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async {
            let hub = Arc::new(ControlHub::default());
            let m = ShardManager::open(
                Arc::new(RedbStore::open_dir(&dir).unwrap()),
                config.clone(),
                HubAddresses::publisher(hub.clone()),
            )
            .unwrap();
            let (shard, old) = fill(&m, "blue", 32, 2).await;
            // No agents: every move gets its new address, then waits.
            let Deallocation::Migrating(mig) = m.deallocate_shard("blue", &shard.id).await.unwrap()
            else {
                panic!()
            };
            eventually(Duration::from_secs(3), "paused", || {
                m.migration(&mig.id)
                    .is_some_and(|x| x.state == MigrationState::Paused)
            })
            .await;
            (shard.id, mig.id, old)
        });
        drop(rt); // the controller "dies": runner tasks are gone
        r
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = Arc::new(ControlHub::default());
        let m = reopen(&dir, config, hub.clone()).await;
        {
            let index = m.read();
            index.check_invariants().unwrap();
            let mig = index.migration(&mig_id).unwrap();
            assert!(mig.is_active());
            // Every workload holds its old address and exactly one new one.
            for a in &old {
                let held = index.workload_addresses("blue", &a.workload);
                assert_eq!(held.len(), 2, "{held:?}");
            }
        }
        // The hub was rebuilt with only the new addresses desired.
        assert!(
            hub.desired("hv0")
                .workload_addresses()
                .values()
                .all(|v| v.len() == 1 && !v[0].shard_id.is_empty())
        );
        let agents = [
            fake_agent(hub.clone(), "hv0"),
            fake_agent(hub.clone(), "hv1"),
        ];
        eventually(
            Duration::from_secs(10),
            "resumed migration completed",
            || {
                m.migration(&mig_id)
                    .is_some_and(|x| x.state == MigrationState::Completed)
            },
        )
        .await;
        let index = m.read();
        index.check_invariants().unwrap();
        assert_eq!(
            index.shard(&shard_id).unwrap().status,
            ShardStatus::Available
        );
        let live: Vec<IpAddr> = index.allocations().map(|a| a.address).collect();
        assert_eq!(live.len(), 32);
        for a in agents {
            a.abort();
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

// ----- concurrency -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_never_share_an_address() {
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        migration_config(),
        HubAddresses::publisher(Arc::default()),
    )
    .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let m = m.clone();
            tokio::spawn(async move {
                let network = format!("net{}", t % 4);
                if t < 4 {
                    // The network's other tasks may have carved its shards first, up to
                    // the maximum per network: a conflict then is the expected answer.
                    match m.create_shard(v4(26, Some(&network))).await {
                        Ok(_) | Err(ShardError::Conflict(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                let mut held: Vec<Allocation> = Vec::new();
                let mut released = 0;
                for i in 0..200 {
                    match m
                        .allocate_address(&network, &format!("w{t}-{}", i % 10), "h", Family::Ipv4)
                        .await
                    {
                        Ok(a) => held.push(a),
                        Err(ShardError::Conflict(_)) => {
                            // Full or no shard yet: carve one (other tasks race for it too).
                            let _ = m.create_shard(v4(26, Some(&network))).await;
                        }
                        Err(e) => panic!("{e}"),
                    }
                    if i % 3 == 0 && !held.is_empty() {
                        let a = held.swap_remove(i % held.len());
                        m.release_address(&network, a.address, a.seq).await.unwrap();
                        released += 1;
                    }
                }
                (held, released)
            })
        })
        .collect();
    let mut live: HashMap<IpAddr, Allocation> = HashMap::new();
    for t in tasks {
        let (held, _) = t.await.unwrap();
        for a in held {
            assert!(
                live.insert(a.address, a.clone()).is_none(),
                "{} acknowledged to two holders",
                a.address
            );
        }
    }
    let index = m.read();
    index.check_invariants().unwrap();
    assert_eq!(index.allocations().count(), live.len(), "counts match");
    for (ip, a) in &live {
        assert_eq!(index.allocation(*ip).map(|x| x.seq), Some(a.seq));
    }
}

// ----- property test against a model -----

#[derive(Debug, Clone)]
enum Action {
    Create {
        prefix_len: u8,
        network: Option<u8>,
        v6: bool,
    },
    Delete(u8),
    Assign {
        network: u8,
        shard: u8,
    },
    /// With `wait`, until its migration (if any) completes or gives up; without, the
    /// migration runs on in the background while the next actions happen.
    Deallocate {
        network: u8,
        shard: u8,
        wait: bool,
    },
    /// Cancels a migration, whatever its state.
    Cancel(u8),
    Allocate {
        network: u8,
        workload: u8,
        host: u8,
        v6: bool,
    },
    Release {
        pick: u8,
        stale: bool,
    },
    ReleaseWorkload {
        network: u8,
        workload: u8,
    },
    Restart,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => (26u8..=28, proptest::option::of(0u8..3), any::<bool>()).prop_map(|(prefix_len, network, v6)| Action::Create { prefix_len, network, v6 }),
        1 => any::<u8>().prop_map(Action::Delete),
        2 => (0u8..3, any::<u8>()).prop_map(|(network, shard)| Action::Assign { network, shard }),
        1 => (0u8..3, any::<u8>(), any::<bool>()).prop_map(|(network, shard, wait)| Action::Deallocate { network, shard, wait }),
        1 => any::<u8>().prop_map(Action::Cancel),
        8 => (0u8..3, 0u8..6, 0u8..3, any::<bool>()).prop_map(|(network, workload, host, v6)| Action::Allocate { network, workload, host, v6 }),
        4 => (any::<u8>(), any::<bool>()).prop_map(|(pick, stale)| Action::Release { pick, stale }),
        1 => (0u8..3, 0u8..6).prop_map(|(network, workload)| Action::ReleaseWorkload { network, workload }),
        1 => Just(Action::Restart),
    ]
}

/// What the tests know: every live allocation acknowledged to them (address -> (network,
/// workload, seq)), and every shard.
#[derive(Debug, Default)]
struct Model {
    live: BTreeMap<IpAddr, (String, String, u64)>,
    /// Released (address, seq): a release naming them must be refused.
    stale: Vec<(String, IpAddr, u64)>,
}

/// Takes what migrations did (in the background) into the model, from one consistent
/// view of the index: old addresses of finished moves and new addresses of rolled-back
/// ones are no longer live (the latter released once their agent applied the rollback),
/// then new addresses still held by their workload are live. (Releases first: an
/// address released by one migration may be a new address of another.)
fn sync(model: &mut Model, index: &Index) {
    for mig in index.migrations() {
        for mv in &mig.moves {
            let released = match mv.state {
                MoveState::Done => Some((mv.old_address, mv.old_seq)),
                MoveState::RolledBack => mv.new_address.map(|new| (new, mv.new_seq)),
                _ => None,
            };
            if let Some((ip, seq)) = released
                && model.live.get(&ip).is_some_and(|v| v.2 == seq)
            {
                model.live.remove(&ip);
                model.stale.push((mig.network_id.clone(), ip, seq));
            }
        }
    }
    for mig in index.migrations() {
        for mv in &mig.moves {
            if let Some(new) = mv.new_address
                && index
                    .allocation(new)
                    .is_some_and(|a| a.seq == mv.new_seq && !a.releasing)
                && !model.live.contains_key(&new)
            {
                model.live.insert(
                    new,
                    (mig.network_id.clone(), mv.workload.clone(), mv.new_seq),
                );
            }
        }
    }
}

fn pick<T: Clone>(items: &[T], i: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(i) % items.len()].clone())
}

async fn run_actions(actions: Vec<Action>, redb: bool) -> Result<(), TestCaseError> {
    let dir = temp_dir("prop");
    let memory = Arc::new(MemoryStore::default());
    let hub = Arc::new(ControlHub::default());
    let open = |hub: Arc<ControlHub>| {
        let dir = dir.clone();
        let memory = memory.clone();
        async move {
            if redb {
                reopen(&dir, small_config(), hub).await
            } else {
                ShardManager::open(memory, small_config(), HubAddresses::publisher(hub)).unwrap()
            }
        }
    };
    let mut m = open(hub.clone()).await;
    // h2 has no agent: migrations of its workloads pause until cancelled.
    let agents = [fake_agent(hub.clone(), "h0"), fake_agent(hub.clone(), "h1")];
    let mut model = Model::default();
    let net = |n: u8| format!("n{n}");
    for action in actions {
        let shards: Vec<String> = m.read().shards().map(|s| s.id.clone()).collect();
        match action {
            Action::Create {
                prefix_len,
                network,
                v6,
            } => {
                let (family, prefix_len) = if v6 {
                    (Family::Ipv6, prefix_len + 96)
                } else {
                    (Family::Ipv4, prefix_len)
                };
                let _ = m
                    .create_shard(CreateShard {
                        family,
                        prefix_len,
                        network_id: network.map(net),
                        reserved: false,
                    })
                    .await;
            }
            Action::Delete(i) => {
                if let Some(id) = pick(&shards, i)
                    && m.delete_shard(&id).await.is_ok()
                {
                    prop_assert!(m.shard(&id).is_none());
                }
            }
            Action::Assign { network, shard } => {
                if let Some(id) = pick(&shards, shard) {
                    let _ = m.assign_shard(&net(network), &id).await;
                }
            }
            Action::Deallocate {
                network,
                shard,
                wait,
            } => {
                if let Some(id) = pick(&shards, shard)
                    && let Ok(Deallocation::Migrating(mig)) =
                        m.deallocate_shard(&net(network), &id).await
                    && wait
                {
                    // Wait for the fake agents to finish it, or until it pauses (no room,
                    // or a workload on h2).
                    let deadline = Instant::now() + Duration::from_secs(3);
                    loop {
                        let x = m.migration(&mig.id).unwrap();
                        if x.state != MigrationState::Running || Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // What the migration changed is taken into the model by `sync`.
                    let _ = mig;
                }
            }
            Action::Cancel(i) => {
                let ids: Vec<String> = m.migrations().into_iter().map(|x| x.id).collect();
                if let Some(id) = pick(&ids, i) {
                    match m.cancel_migration(&id).await {
                        Ok(failed) => {
                            prop_assert_eq!(failed.state, MigrationState::Failed);
                            prop_assert_eq!(failed.counts().moving, 0);
                            let shard = m.shard(&failed.shard_id);
                            prop_assert_eq!(shard.map(|s| s.status), Some(ShardStatus::InUse));
                        }
                        Err(ShardError::Conflict(_)) => {
                            prop_assert!(!m.migration(&id).unwrap().is_active());
                        }
                        Err(e) => prop_assert!(false, "cancelling {}: {}", id, e),
                    }
                }
            }
            Action::Allocate {
                network,
                workload,
                host,
                v6,
            } => {
                let family = if v6 { Family::Ipv6 } else { Family::Ipv4 };
                if let Ok(a) = m
                    .allocate_address(
                        &net(network),
                        &format!("w{workload}"),
                        &format!("h{host}"),
                        family,
                    )
                    .await
                {
                    // A migration may have freed the address in the background just before.
                    sync(&mut model, &m.read());
                    prop_assert!(
                        !model.live.contains_key(&a.address),
                        "{} handed out twice",
                        a.address
                    );
                    model
                        .live
                        .insert(a.address, (a.network_id, a.workload, a.seq));
                }
            }
            Action::Release { pick: i, stale } => {
                if stale {
                    if let Some((n, ip, seq)) = pick(&model.stale, i) {
                        prop_assert!(
                            m.release_address(&n, ip, seq).await.is_err(),
                            "stale release of {} accepted",
                            ip
                        );
                    }
                } else {
                    let live: Vec<_> = model.live.iter().map(|(ip, v)| (*ip, v.clone())).collect();
                    if let Some((ip, (n, _, seq))) = pick(&live, i) {
                        let r = m.release_address(&n, ip, seq).await;
                        // Refused only if a migration moved it away meanwhile.
                        let moved = m.read().migrations().any(|x| {
                            x.moves.iter().any(|mv| {
                                mv.old_address == ip
                                    && mv.old_seq == seq
                                    && mv.state == MoveState::Done
                            })
                        });
                        prop_assert!(r.is_ok() || moved, "{:?}", r);
                        model.live.remove(&ip);
                        model.stale.push((n, ip, seq));
                    }
                }
            }
            Action::ReleaseWorkload { network, workload } => {
                let released = m
                    .release_workload(&net(network), &format!("w{workload}"))
                    .await
                    .unwrap();
                for a in released {
                    // (A new address a migration gave it may not be in the model yet.)
                    model.live.remove(&a.address);
                    model.stale.push((a.network_id, a.address, a.seq));
                }
            }
            Action::Restart => {
                m.shutdown();
                drop(m);
                m = open(hub.clone()).await;
            }
        }
        let index = m.read();
        index.check_invariants().map_err(TestCaseError::fail)?;
        sync(&mut model, &index);
        // Rolled-back addresses waiting for their agents are no workload's (the
        // invariants check that they are still allocated, so not handed out).
        let actual: BTreeMap<IpAddr, (String, String, u64)> = index
            .allocations()
            .filter(|a| !a.releasing)
            .map(|a| (a.address, (a.network_id.clone(), a.workload.clone(), a.seq)))
            .collect();
        prop_assert_eq!(&actual, &model.live);
    }
    for a in agents {
        a.abort();
    }
    m.shutdown();
    drop(m);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn no_sequence_double_allocates_or_overlaps_memory(actions in proptest::collection::vec(action(), 1..60)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_actions(actions, false))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn no_sequence_double_allocates_or_overlaps_redb(actions in proptest::collection::vec(action(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_actions(actions, true))?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_reporting_an_error_pauses_the_migration_with_that_error() {
    let hub = Arc::new(ControlHub::default());
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        migration_config(),
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap();
    let (shard, _) = fill(&m, "blue", 4, 1).await;
    // An agent that fails to apply anything.
    let failing = FakeAgent {
        fail: Some("netns vm0 is gone".into()),
        ..Default::default()
    }
    .spawn(hub.clone(), "hv0");
    let Deallocation::Migrating(mig) = m.deallocate_shard("blue", &shard.id).await.unwrap() else {
        panic!()
    };
    eventually(
        Duration::from_secs(3),
        "paused with the agent's error",
        || {
            m.migration(&mig.id).is_some_and(|x| {
                x.state == MigrationState::Paused && x.error.contains("netns vm0 is gone")
            })
        },
    )
    .await;
    failing.abort();
    let _ = failing.await;
    let fixed = fake_agent(hub.clone(), "hv0");
    eventually(
        Duration::from_secs(5),
        "completed once the agent applies",
        || {
            m.migration(&mig.id)
                .is_some_and(|x| x.state == MigrationState::Completed)
        },
    )
    .await;
    fixed.abort();
}

#[tokio::test]
async fn events_beyond_the_retention_are_dropped_and_readers_skip_to_the_oldest() {
    use futures::StreamExt as _;
    let config = ShardConfig {
        event_retention: 10,
        ..small_config()
    };
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        config,
        HubAddresses::publisher(Arc::default()),
    )
    .unwrap();
    m.create_shard(v4(27, Some("blue"))).await.unwrap(); // events 1, 2
    for i in 0..20 {
        m.allocate_address("blue", &format!("w{i}"), "h", Family::Ipv4)
            .await
            .unwrap(); // 3..=22
    }
    let stored = m.stored_events(1, 1000).unwrap();
    let first = stored.first().unwrap().sequence;
    assert!(
        first > 1 && first <= 13,
        "old records dropped, the last 10 kept: first {first}"
    );
    assert_eq!(stored.last().unwrap().sequence, 22);
    assert!(
        stored
            .windows(2)
            .all(|w| w[1].sequence == w[0].sequence + 1)
    );
    // A reader from sequence 1 gets the oldest retained, in order, then live ones.
    let mut stream = Box::pin(events::stream_from(m.clone(), 1));
    let e = stream.next().await.unwrap();
    assert_eq!(e.sequence, first);
    let m2 = m.clone();
    tokio::spawn(async move {
        m2.allocate_address("blue", "late", "h", Family::Ipv4)
            .await
            .unwrap()
    });
    let mut last = e.sequence;
    while last < 23 {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.sequence, last + 1);
        last = e.sequence;
    }
}

/// Deallocating a shard in use moves its workloads into an Available shard of the pool
/// (allocated to the network) rather than carving a new one; `weft.shard.deallocated` has
/// one shape with and without a migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_reuses_an_available_shard_before_carving_one() {
    let hub = Arc::new(ControlHub::default());
    let m = ShardManager::open(
        Arc::new(MemoryStore::default()),
        migration_config(),
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap();
    let agent = fake_agent(hub.clone(), "hv0");
    let used = m.create_shard(v4(28, Some("blue"))).await.unwrap();
    for i in 0..3 {
        m.allocate_address("blue", &format!("vm{i}"), "hv0", Family::Ipv4)
            .await
            .unwrap();
    }
    let spare = m.create_shard(v4(28, None)).await.unwrap();
    assert_eq!(spare.status, ShardStatus::Available);
    let from = m.next_event();
    let mid = match m.deallocate_shard("blue", &used.id).await.unwrap() {
        Deallocation::Migrating(mig) => mig.id,
        other => panic!("{other:?}"),
    };
    eventually(Duration::from_secs(5), "migration completed", || {
        m.migration(&mid)
            .is_some_and(|mig| mig.state == MigrationState::Completed)
    })
    .await;
    let spare = m.shard(&spare.id).unwrap();
    assert_eq!(
        (
            spare.network_id.as_deref(),
            spare.status,
            spare.resource_count
        ),
        (Some("blue"), ShardStatus::InUse, 3)
    );
    for i in 0..3 {
        let now = m.read().workload_addresses("blue", &format!("vm{i}"));
        assert_eq!(now[0].shard_id, spare.id);
    }
    let events = m.stored_events(from, 1_000).unwrap();
    assert!(
        !events.iter().any(|e| e.event_type == "weft.shard.created"),
        "no shard carved: {:?}",
        events.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let allocated = events
        .iter()
        .find(|e| e.event_type == "weft.shard.allocated")
        .expect("the spare allocated to blue");
    assert_eq!(allocated.subject, format!("shards/{}", spare.id));
    let moved = events
        .iter()
        .find(|e| e.event_type == "weft.shard.deallocated")
        .expect("deallocated");
    assert_eq!(moved.data["shard_id"], used.id.as_str());
    assert_eq!(moved.data["network_id"], "blue");
    assert_eq!(moved.data["migration_id"], mid.as_str());
    assert_eq!(moved.data["shard"]["status"], "Available");

    // An empty shard leaves at once: the same shape, no migration.
    let empty = m.create_shard(v4(28, Some("blue"))).await.unwrap();
    let from = m.next_event();
    assert!(matches!(
        m.deallocate_shard("blue", &empty.id).await.unwrap(),
        Deallocation::Released(_)
    ));
    let events = m.stored_events(from, 1_000).unwrap();
    assert_eq!(events[0].event_type, "weft.shard.deallocated");
    assert_eq!(events[0].data["shard_id"], empty.id.as_str());
    assert_eq!(events[0].data["network_id"], "blue");
    assert_eq!(events[0].data["migration_id"], serde_json::Value::Null);
    assert_eq!(
        events[0].data["shard"]["network_id"],
        serde_json::Value::Null
    );
    agent.abort();
}

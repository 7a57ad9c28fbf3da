//! Migrations that fail: cancelled by the operator (paused, part done, mid-flight,
//! completed, unknown, across a restart) or past their deadline. After each, the moves
//! not done are rolled back, what the agents are told matches the index, and the shard is
//! back In-Use.

use super::*;

/// A manager over a memory store with [`migration_config`] and `hub`.
fn manager(hub: &Arc<ControlHub>, config: ShardConfig) -> ShardManager {
    ShardManager::open(
        Arc::new(MemoryStore::default()),
        config,
        HubAddresses::publisher(hub.clone()),
    )
    .unwrap()
}

async fn start_migration(m: &ShardManager, shard: &str) -> Migration {
    match m.deallocate_shard("blue", shard).await.unwrap() {
        Deallocation::Migrating(mig) => mig,
        other => panic!("{other:?}"),
    }
}

/// Every workload of `allocs` is told exactly the addresses the index says it should have
/// (none retiring), and holds exactly one address.
fn assert_agents_told_the_index(m: &ShardManager, hub: &ControlHub, allocs: &[Allocation]) {
    let index = m.read();
    for a in allocs {
        let held = index.workload_addresses("blue", &a.workload);
        assert_eq!(held.len(), 1, "{}: {held:?}", a.workload);
        assert!(!held[0].retiring, "{}: {held:?}", a.workload);
        let desired = hub.desired(&a.host_id);
        let told = desired
            .workload_addresses()
            .get(&a.workload)
            .cloned()
            .unwrap_or_default();
        let told_cidrs: Vec<(&str, u64)> = told
            .iter()
            .map(|t| (t.cidr.as_str(), t.allocation_seq))
            .collect();
        let in_index = index.desired(&a.host_id, &a.workload);
        let index_cidrs: Vec<(&str, u64)> = in_index
            .iter()
            .map(|t| (t.cidr.as_str(), t.allocation_seq))
            .collect();
        assert_eq!(told_cidrs, index_cidrs, "{}", a.workload);
        assert_eq!(told.len(), 1, "{}", a.workload);
        assert_eq!(told[0].cidr, held[0].cidr(), "{}", a.workload);
        assert_eq!(told[0].allocation_seq, held[0].seq, "{}", a.workload);
    }
}

/// Every new address `failed` rolled back is still allocated under its move's sequence
/// and `releasing`: in no workload's addresses, told to no agent.
fn assert_releasing(m: &ShardManager, hub: &ControlHub, failed: &Migration) {
    let index = m.read();
    for mv in failed
        .moves
        .iter()
        .filter(|mv| mv.state == MoveState::RolledBack)
    {
        let new = mv.new_address.unwrap();
        let a = index
            .allocation(new)
            .unwrap_or_else(|| panic!("{new} released before its agent applied the rollback"));
        assert!(a.releasing && a.seq == mv.new_seq, "{a:?}");
        assert!(
            index
                .workload_addresses("blue", &mv.workload)
                .iter()
                .all(|w| w.address != new)
        );
        let prefix = format!("{new}/");
        assert!(
            hub.desired(&mv.host_id)
                .workload_addresses()
                .values()
                .flatten()
                .all(|told| !told.cidr.starts_with(&prefix)),
            "{new} still told to {}",
            mv.host_id
        );
    }
    index.check_invariants().unwrap();
}

fn event_types(m: &ShardManager, from: u64) -> Vec<CloudEvent> {
    let events = m.stored_events(from, 100_000).unwrap();
    assert!(
        events
            .windows(2)
            .all(|w| w[1].sequence == w[0].sequence + 1),
        "gapless sequences"
    );
    events
}

fn is_running(m: &ShardManager, id: &str) -> bool {
    m.migration_running(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paused_migration_rolls_every_move_back_and_gives_the_shard_back() {
    let hub = Arc::new(ControlHub::default());
    let m = manager(&hub, migration_config());
    // No agent ever reports: every move gets its new address, then waits.
    let (shard, old) = fill(&m, "blue", 16, 2).await;
    let from = m.next_event();
    let mig = start_migration(&m, &shard.id).await;
    eventually(Duration::from_secs(3), "paused", || {
        m.migration(&mig.id).is_some_and(|x| {
            x.state == MigrationState::Paused
                && x.moves.iter().all(|mv| mv.state == MoveState::Moving)
        })
    })
    .await;
    let paused = m.migration(&mig.id).unwrap();
    let new: Vec<IpAddr> = paused
        .moves
        .iter()
        .filter_map(|mv| mv.new_address)
        .collect();
    assert_eq!(new.len(), 16);
    let carved = m.read().allocation(new[0]).unwrap().shard_id.clone();
    assert_ne!(carved, shard.id);
    assert!(
        hub.desired("hv0")
            .workload_addresses()
            .values()
            .all(|v| v[0].shard_id == carved),
        "the agents were told the new addresses"
    );

    let failed = m.cancel_migration(&mig.id).await.unwrap();
    assert_eq!(failed.state, MigrationState::Failed);
    assert!(failed.error.starts_with(CANCELLED), "{}", failed.error);
    assert!(failed.error.contains("it was paused"), "{}", failed.error);
    assert!(failed.finished_ns >= failed.created_ns && failed.finished_ns > 0);
    assert!(
        failed
            .moves
            .iter()
            .all(|mv| mv.state == MoveState::RolledBack)
    );
    assert_eq!(
        m.migration(&mig.id).unwrap(),
        failed,
        "what was answered is stored"
    );

    // Old addresses desired again, under their own allocation sequence; new ones held
    // (releasing) until the agents report they applied that: none does here.
    for a in &old {
        let held = m.read().workload_addresses("blue", &a.workload);
        assert_eq!(held.len(), 1);
        assert_eq!((held[0].address, held[0].seq), (a.address, a.seq));
    }
    assert_agents_told_the_index(&m, &hub, &old);
    assert_releasing(&m, &hub, &failed);
    assert_eq!(m.shard(&carved).unwrap().resource_count, 16);
    let s = m.shard(&shard.id).unwrap();
    assert_eq!(
        (s.status, s.network_id.as_deref(), s.resource_count),
        (ShardStatus::InUse, Some("blue"), 16)
    );
    m.read().check_invariants().unwrap();

    // The runner stopped: nothing changes any more, however long we wait (the new
    // addresses stay held: no agent reports).
    assert!(!is_running(&m, &mig.id));
    let last = m.next_event();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(m.migration(&mig.id).unwrap(), failed);
    assert_eq!(m.next_event(), last, "no event after the cancel");
    assert_releasing(&m, &hub, &failed);

    let events = event_types(&m, from);
    let failed_event = events.last().unwrap();
    assert_eq!(failed_event.event_type, "weft.shard.migration.failed");
    assert_eq!(failed_event.subject, format!("migrations/{}", mig.id));
    assert_eq!(failed_event.data["reason"], failed.error.as_str());
    assert_eq!(failed_event.data["moved"], 0);
    assert_eq!(failed_event.data["rolled_back"], 16);
    assert_eq!(failed_event.data["releasing"], 16);
    assert_eq!(failed_event.data["shard_status"], "In-Use");
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("no {t}"))
    };
    assert!(pos("weft.shard.migration.started") < pos("weft.shard.migration.paused"));
    assert!(
        !types.contains(&"weft.address.released"),
        "nothing released before an agent applied the rollback"
    );

    // Allocations from the shard are allowed again, and it can be migrated again.
    let late = m
        .allocate_address("blue", "late", "hv0", Family::Ipv4)
        .await
        .unwrap();
    assert_eq!(late.shard_id, shard.id);
    let again = m.cancel_migration(&mig.id).await.unwrap_err();
    assert!(
        matches!(&again, ShardError::Conflict(msg) if msg.contains("already failed") && msg.contains(CANCELLED)),
        "{again}"
    );
    let agents = [
        fake_agent(hub.clone(), "hv0"),
        fake_agent(hub.clone(), "hv1"),
    ];
    // The agents applied the rollback: the new addresses are released now.
    eventually(Duration::from_secs(3), "new addresses released", || {
        new.iter().all(|ip| m.read().allocation(*ip).is_none())
    })
    .await;
    let released: Vec<CloudEvent> = event_types(&m, last)
        .into_iter()
        .filter(|e| e.event_type == "weft.address.released")
        .collect();
    assert_eq!(released.len(), 16, "one per new address");
    assert!(
        released
            .iter()
            .all(|e| e.data["shard_id"] == carved.as_str())
    );
    let retry = start_migration(&m, &shard.id).await;
    assert_ne!(retry.id, mig.id);
    assert_eq!(retry.moves.len(), 17);
    eventually(
        Duration::from_secs(5),
        "the second migration completed",
        || {
            m.migration(&retry.id)
                .is_some_and(|x| x.state == MigrationState::Completed)
        },
    )
    .await;
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::Available);
    m.read().check_invariants().unwrap();
    for a in agents {
        a.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_after_some_moves_completed_keeps_their_new_addresses() {
    let hub = Arc::new(ControlHub::default());
    let m = manager(&hub, migration_config());
    let hv0 = fake_agent(hub.clone(), "hv0");
    let (shard, old) = fill(&m, "blue", 16, 2).await; // hv1 has no agent
    let mig = start_migration(&m, &shard.id).await;
    eventually(Duration::from_secs(3), "hv0's workloads moved", || {
        m.migration(&mig.id).is_some_and(|x| {
            x.state == MigrationState::Paused && x.counts().done == 8 && x.counts().moving == 8
        })
    })
    .await;
    let failed = m.cancel_migration(&mig.id).await.unwrap();
    let c = failed.counts();
    assert_eq!((c.done, c.rolled_back, c.pending, c.moving), (8, 8, 0, 0));
    for mv in &failed.moves {
        let held = m.read().workload_addresses("blue", &mv.workload);
        assert_eq!(held.len(), 1, "{held:?}");
        match mv.host_id.as_str() {
            "hv0" => {
                assert_eq!(mv.state, MoveState::Done);
                assert_eq!(
                    (Some(held[0].address), held[0].seq),
                    (mv.new_address, mv.new_seq)
                );
                assert_ne!(held[0].shard_id, shard.id);
            }
            _ => {
                assert_eq!(mv.state, MoveState::RolledBack);
                assert_eq!((held[0].address, held[0].seq), (mv.old_address, mv.old_seq));
                // hv1 has no agent: its new address is held until one reports.
                let new = m
                    .read()
                    .allocation(mv.new_address.unwrap())
                    .cloned()
                    .unwrap();
                assert!(new.releasing && new.seq == mv.new_seq, "{new:?}");
            }
        }
    }
    assert_agents_told_the_index(&m, &hub, &old);
    let s = m.shard(&shard.id).unwrap();
    assert_eq!((s.status, s.resource_count), (ShardStatus::InUse, 8));
    let e = m.stored_events(1, 100_000).unwrap().pop().unwrap();
    assert_eq!(e.event_type, "weft.shard.migration.failed");
    assert_eq!(
        (e.data["moved"].as_u64(), e.data["rolled_back"].as_u64()),
        (Some(8), Some(8))
    );
    m.read().check_invariants().unwrap();
    hv0.abort();
}

/// An agent that applies its host's desired state `delay` after each change.
fn slow_agent(hub: Arc<ControlHub>, host: &str, delay: Duration) -> tokio::task::JoinHandle<()> {
    FakeAgent {
        delay,
        ..Default::default()
    }
    .spawn(hub, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_runner_leaves_every_workload_one_address_it_is_told() {
    for round in 0..6u64 {
        let hub = Arc::new(ControlHub::default());
        let config = ShardConfig {
            migration_concurrency: 8,
            ..migration_config()
        };
        let m = manager(&hub, config);
        let agents: Vec<_> = (0..4)
            .map(|h| slow_agent(hub.clone(), &format!("hv{h}"), Duration::from_millis(15)))
            .collect();
        let (shard, old) = fill(&m, "blue", 64, 4).await;
        let mig = start_migration(&m, &shard.id).await;
        tokio::time::sleep(Duration::from_millis(10 + round * 25)).await;
        let failed = match m.cancel_migration(&mig.id).await {
            Ok(failed) => failed,
            Err(ShardError::Conflict(msg)) if msg.contains("already completed") => {
                eprintln!("round {round}: completed before the cancel");
                agents.iter().for_each(|a| a.abort());
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let c = failed.counts();
        eprintln!("round {round}: {c:?}");
        assert_eq!(c.moving, 0);
        assert_eq!(c.done + c.rolled_back + c.pending + c.skipped, 64);
        // Whatever the runner was doing when the cancel came, nothing changes after it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(m.migration(&mig.id).unwrap(), failed);
        assert_agents_told_the_index(&m, &hub, &old);
        {
            let index = m.read();
            index.check_invariants().unwrap();
            let held = index.allocations().filter(|a| !a.releasing).count();
            assert_eq!(held, 64, "no address leaked or lost");
            let s = index.shard(&shard.id).unwrap();
            assert_eq!(s.status, ShardStatus::InUse);
            assert_eq!(s.resource_count as usize, c.rolled_back + c.pending);
        }
        // The agents applied the rollback: rolled-back new addresses are released.
        eventually(
            Duration::from_secs(3),
            "rolled-back addresses released",
            || m.read().allocations().count() == 64,
        )
        .await;
        m.read().check_invariants().unwrap();
        for a in agents {
            a.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_or_unknown_migration_cannot_be_cancelled() {
    let hub = Arc::new(ControlHub::default());
    let m = manager(&hub, migration_config());
    let agent = fake_agent(hub.clone(), "hv0");
    let (shard, _) = fill(&m, "blue", 4, 1).await;
    let mig = start_migration(&m, &shard.id).await;
    eventually(Duration::from_secs(5), "completed", || {
        m.migration(&mig.id)
            .is_some_and(|x| x.state == MigrationState::Completed)
    })
    .await;
    let done = m.migration(&mig.id).unwrap();
    let from = m.next_event();
    let err = m.cancel_migration(&mig.id).await.unwrap_err();
    assert!(
        matches!(&err, ShardError::Conflict(msg) if msg.contains("already completed") && msg.contains("nothing to cancel")),
        "{err}"
    );
    assert_eq!(m.migration(&mig.id).unwrap(), done, "unchanged");
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::Available);
    let err = m.cancel_migration("mig-424242").await.unwrap_err();
    assert!(
        matches!(&err, ShardError::NotFound(msg) if msg.contains("GET /migrations")),
        "{err}"
    );
    assert_eq!(m.next_event(), from, "a refused cancel emits nothing");
    agent.abort();
}

#[test]
fn a_cancel_survives_a_restart() {
    let dir = temp_dir("cancel-restart");
    let config = migration_config();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let (shard_id, failed, old) = {
        let rt = runtime();
        let r = rt.block_on(async {
            let m = ShardManager::open(
                Arc::new(RedbStore::open_dir(&dir).unwrap()),
                config.clone(),
                HubAddresses::publisher(Arc::default()),
            )
            .unwrap();
            let (shard, old) = fill(&m, "blue", 32, 2).await;
            let mig = start_migration(&m, &shard.id).await;
            eventually(Duration::from_secs(3), "paused", || {
                m.migration(&mig.id)
                    .is_some_and(|x| x.state == MigrationState::Paused)
            })
            .await;
            let failed = m.cancel_migration(&mig.id).await.unwrap();
            (shard.id, failed, old)
        });
        drop(rt); // the controller "dies" right after the cancel
        r
    };
    let rt = runtime();
    rt.block_on(async {
        let hub = Arc::new(ControlHub::default());
        let m = reopen(&dir, config, hub.clone()).await;
        m.read().check_invariants().unwrap();
        assert_eq!(m.migration(&failed.id).unwrap(), failed);
        assert!(
            !is_running(&m, &failed.id),
            "a failed migration is not resumed"
        );
        let s = m.shard(&shard_id).unwrap();
        assert_eq!((s.status, s.resource_count), (ShardStatus::InUse, 32));
        for a in &old {
            let held = m.read().workload_addresses("blue", &a.workload);
            assert_eq!((held.len(), held[0].seq), (1, a.seq), "{held:?}");
        }
        // The hub is rebuilt with the old addresses.
        assert_agents_told_the_index(&m, &hub, &old);
        // The rolled-back new addresses are still held: no agent reported since.
        assert_releasing(&m, &hub, &failed);
        assert_eq!(m.read().allocations().count(), 64);
        let late = m
            .allocate_address("blue", "late", "hv0", Family::Ipv4)
            .await
            .unwrap();
        assert_eq!(late.shard_id, shard_id);
        let again = m.cancel_migration(&failed.id).await.unwrap_err();
        assert!(matches!(again, ShardError::Conflict(_)), "{again}");
        let types: Vec<String> = m
            .stored_events(1, 100_000)
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        assert!(types.contains(&"weft.shard.migration.failed".to_owned()));
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_past_its_deadline_fails_and_is_rolled_back() {
    let hub = Arc::new(ControlHub::default());
    let config = ShardConfig {
        migration_deadline: Some(Duration::from_millis(700)),
        ..migration_config()
    };
    let m = manager(&hub, config);
    let (shard, old) = fill(&m, "blue", 8, 1).await; // no agent reports
    let mig = start_migration(&m, &shard.id).await;
    let started = Instant::now();
    eventually(Duration::from_secs(5), "failed at its deadline", || {
        m.migration(&mig.id)
            .is_some_and(|x| x.state == MigrationState::Failed)
    })
    .await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(600), "{elapsed:?}");
    let failed = m.migration(&mig.id).unwrap();
    assert!(
        failed.error.starts_with("deadline of 700ms exceeded"),
        "{}",
        failed.error
    );
    assert!(
        failed
            .moves
            .iter()
            .all(|mv| mv.state == MoveState::RolledBack)
    );
    assert_agents_told_the_index(&m, &hub, &old);
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::InUse);
    eventually(Duration::from_secs(1), "runner gone", || {
        !is_running(&m, &mig.id)
    })
    .await;
    let e = m.stored_events(1, 100_000).unwrap().pop().unwrap();
    assert_eq!(e.event_type, "weft.shard.migration.failed");
    assert!(
        e.data["reason"]
            .as_str()
            .unwrap()
            .contains("deadline of 700ms")
    );
    let err = m.cancel_migration(&mig.id).await.unwrap_err();
    assert!(
        matches!(&err, ShardError::Conflict(msg) if msg.contains("deadline of 700ms")),
        "{err}"
    );
    m.read().check_invariants().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_completes_in_time_is_not_touched_by_its_deadline() {
    let hub = Arc::new(ControlHub::default());
    let config = ShardConfig {
        migration_deadline: Some(Duration::from_secs(3)),
        ..migration_config()
    };
    let m = manager(&hub, config);
    let agent = fake_agent(hub.clone(), "hv0");
    let (shard, _) = fill(&m, "blue", 8, 1).await;
    let mig = start_migration(&m, &shard.id).await;
    eventually(Duration::from_secs(3), "completed", || {
        m.migration(&mig.id)
            .is_some_and(|x| x.state == MigrationState::Completed)
    })
    .await;
    eventually(Duration::from_secs(1), "runner gone", || {
        !is_running(&m, &mig.id)
    })
    .await;
    assert_eq!(m.shard(&shard.id).unwrap().status, ShardStatus::Available);
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_that_released_addresses_mid_move_is_not_given_them_back() {
    let hub = Arc::new(ControlHub::default());
    let m = manager(&hub, migration_config());
    let (shard, old) = fill(&m, "blue", 3, 1).await; // no agent reports
    let mig = start_migration(&m, &shard.id).await;
    eventually(Duration::from_secs(3), "every move in flight", || {
        m.migration(&mig.id).is_some_and(|x| x.counts().moving == 3)
    })
    .await;
    // vm0 gives up its old address (the new one is all it has then); vm1 goes away.
    let by_name = |w: &str| old.iter().find(|a| a.workload == w).unwrap().clone();
    let vm0 = by_name("vm0");
    m.release_address("blue", vm0.address, vm0.seq)
        .await
        .unwrap();
    assert_eq!(m.release_workload("blue", "vm1").await.unwrap().len(), 2);

    let failed = m.cancel_migration(&mig.id).await.unwrap();
    let state = |w: &str| {
        failed
            .moves
            .iter()
            .find(|mv| mv.workload == w)
            .unwrap()
            .clone()
    };
    let (mv0, mv1, mv2) = (state("vm0"), state("vm1"), state("vm2"));
    assert_eq!(mv0.state, MoveState::Done, "vm0 keeps its new address");
    let held = m.read().workload_addresses("blue", "vm0");
    assert_eq!(
        held.iter().map(|a| (a.address, a.seq)).collect::<Vec<_>>(),
        [(mv0.new_address.unwrap(), mv0.new_seq)]
    );
    assert_eq!(mv1.state, MoveState::RolledBack);
    assert!(m.read().workload_addresses("blue", "vm1").is_empty());
    assert!(!hub.desired("hv0").workload_addresses().contains_key("vm1"));
    assert_eq!(mv2.state, MoveState::RolledBack);
    assert_agents_told_the_index(&m, &hub, &[by_name("vm0"), by_name("vm2")]);
    assert_eq!(
        m.shard(&shard.id).unwrap().resource_count,
        1,
        "vm2's old address"
    );
    m.read().check_invariants().unwrap();
}

/// Network `blue` with one /28 shard holding vm0 and vm1 (on hv0, whose agent does not
/// report), deallocated, and the migration cancelled with both moves in flight: the
/// workloads have their old addresses again; their new ones, in the /28 the migration
/// carved, are releasing. Returns the failed migration and those new addresses.
async fn cancel_in_flight(m: &ShardManager, hub: &ControlHub) -> (Migration, Vec<IpAddr>) {
    let shard = m.create_shard(v4(28, Some("blue"))).await.unwrap();
    for w in ["vm0", "vm1"] {
        m.allocate_address("blue", w, "hv0", Family::Ipv4)
            .await
            .unwrap();
    }
    let mig = start_migration(m, &shard.id).await;
    eventually(Duration::from_secs(3), "both moves in flight", || {
        m.migration(&mig.id).is_some_and(|x| x.counts().moving == 2)
    })
    .await;
    let failed = m.cancel_migration(&mig.id).await.unwrap();
    let new: Vec<IpAddr> = failed
        .moves
        .iter()
        .filter_map(|mv| mv.new_address)
        .collect();
    assert_eq!(new.len(), 2);
    assert_releasing(m, hub, &failed);
    (failed, new)
}

/// Allocates every free address of `blue` (to workloads of hv9), checks that none of
/// `held` is among them, and releases them again. The addresses it got.
async fn allocate_everything(m: &ShardManager, held: &[IpAddr]) -> Vec<IpAddr> {
    let mut got = Vec::new();
    loop {
        let workload = format!("fill{}", got.len());
        match m
            .allocate_address("blue", &workload, "hv9", Family::Ipv4)
            .await
        {
            Ok(a) => {
                assert!(!held.contains(&a.address), "{} handed out again", a.address);
                got.push(a);
            }
            Err(ShardError::Conflict(_)) => break,
            Err(e) => panic!("{e}"),
        }
    }
    for a in &got {
        m.release_address("blue", a.address, a.seq).await.unwrap();
    }
    got.into_iter().map(|a| a.address).collect()
}

/// The `weft.address.released` events of `addresses` from sequence `from` on.
fn released_events(m: &ShardManager, from: u64, addresses: &[IpAddr]) -> usize {
    event_types(m, from)
        .iter()
        .filter(|e| e.event_type == "weft.address.released")
        .filter(|e| {
            addresses
                .iter()
                .any(|ip| e.subject == format!("networks/blue/addresses/{ip}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_address_is_not_handed_out_before_its_agent_applied_the_rollback() {
    let hub = Arc::new(ControlHub::default());
    let m = manager(&hub, migration_config());
    let (failed, new) = cancel_in_flight(&m, &hub).await;
    let e = m.stored_events(1, 100_000).unwrap().pop().unwrap();
    assert_eq!(e.event_type, "weft.shard.migration.failed");
    assert_eq!(
        (e.data["rolled_back"].as_u64(), e.data["releasing"].as_u64()),
        (Some(2), Some(2))
    );
    let from = m.next_event();
    // Two /28 shards (13 usable addresses each): 2 old and 2 releasing are taken.
    assert_eq!(allocate_everything(&m, &new).await.len(), 22);
    // Far longer than the agent wait (--migration-timeout 200ms) and its retries.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_releasing(&m, &hub, &failed);
    // The caller cannot release it either (the controller does, once it is safe).
    let vm0 = failed.moves.iter().find(|mv| mv.workload == "vm0").unwrap();
    let err = m
        .release_address("blue", vm0.new_address.unwrap(), vm0.new_seq)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ShardError::Conflict(msg) if msg.contains("rolled back")),
        "{err}"
    );
    // vm1 goes away meanwhile: its old address is released, its rolled-back one is not.
    let vm1 = failed.moves.iter().find(|mv| mv.workload == "vm1").unwrap();
    let gone = m.release_workload("blue", "vm1").await.unwrap();
    assert_eq!(
        gone.iter().map(|a| (a.address, a.seq)).collect::<Vec<_>>(),
        [(vm1.old_address, vm1.old_seq)]
    );
    assert_releasing(&m, &hub, &failed);
    assert_eq!(allocate_everything(&m, &new).await.len(), 23);
    assert_eq!(released_events(&m, from, &new), 0);

    // hv0's agent applies its desired state (the rollback) and reports it.
    let agent = fake_agent(hub.clone(), "hv0");
    eventually(Duration::from_secs(3), "released after the report", || {
        new.iter().all(|ip| m.read().allocation(*ip).is_none())
    })
    .await;
    assert_eq!(released_events(&m, from, &new), 2, "one per address");
    m.read().check_invariants().unwrap();
    // Allocatable again: they are among the network's free addresses now.
    let all = allocate_everything(&m, &[]).await;
    assert_eq!(all.len(), 25);
    assert!(new.iter().all(|ip| all.contains(ip)), "{all:?} {new:?}");
    m.read().check_invariants().unwrap();
    agent.abort();
}

#[test]
fn a_rolled_back_address_stays_held_across_a_restart_until_its_agent_reports() {
    let dir = temp_dir("releasing-restart");
    let config = migration_config();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let (failed, new) = {
        let rt = runtime();
        let r = rt.block_on(async {
            let hub = Arc::new(ControlHub::default());
            let m = ShardManager::open(
                Arc::new(RedbStore::open_dir(&dir).unwrap()),
                config.clone(),
                HubAddresses::publisher(hub.clone()),
            )
            .unwrap();
            cancel_in_flight(&m, &hub).await
        });
        drop(rt); // the controller "dies" before any agent reported
        r
    };
    let rt = runtime();
    rt.block_on(async {
        let hub = Arc::new(ControlHub::default());
        let m = reopen(&dir, config, hub.clone()).await;
        assert_releasing(&m, &hub, &failed);
        let from = m.next_event();
        assert_eq!(allocate_everything(&m, &new).await.len(), 22);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_releasing(&m, &hub, &failed);
        assert_eq!(released_events(&m, from, &new), 0);
        let agent = fake_agent(hub.clone(), "hv0");
        eventually(Duration::from_secs(3), "released after the report", || {
            new.iter().all(|ip| m.read().allocation(*ip).is_none())
        })
        .await;
        assert_eq!(released_events(&m, from, &new), 2);
        m.read().check_invariants().unwrap();
        agent.abort();
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

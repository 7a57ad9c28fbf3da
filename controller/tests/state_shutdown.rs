//! The controller state's lifecycle: one start over a store, and a shutdown that drains
//! the shard writer while clones of the state are still alive.

use std::sync::Arc;

use weft_controller::AppState;
use weft_shards::{CreateShard, Family};
use weft_store::{MemoryStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_was_queued_and_refuses_the_rest() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let state = AppState::builder().start(store.clone()).expect("start");
    state
        .shards
        .create_shard(CreateShard {
            family: Family::Ipv4,
            prefix_len: 22,
            network_id: Some("blue".into()),
            reserved: false,
        })
        .await
        .expect("shard");
    // Requests in flight while the shutdown starts; each task holds a clone of the manager.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let shards = state.shards.clone();
            tokio::spawn(async move {
                shards
                    .allocate_address("blue", &format!("w{i}"), "h1", Family::Ipv4)
                    .await
            })
        })
        .collect();
    tokio::task::yield_now().await;
    // Returns although `state` and the tasks still hold the manager.
    state.shutdown().await;

    let mut acked = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(allocation) => acked.push(allocation),
            Err(error) => assert!(error.to_string().contains("writer has stopped"), "{error}"),
        }
    }
    let late = state
        .shards
        .allocate_address("blue", "late", "h1", Family::Ipv4)
        .await
        .expect_err("refused");
    assert!(late.to_string().contains("writer has stopped"), "{late}");

    // Every acknowledged allocation was committed: a state started over the store has it.
    drop(state);
    let again = AppState::builder().start(store).expect("restart");
    let index = again.shards.read();
    for a in &acked {
        assert_eq!(
            index.allocation(a.address).map(|b| b.workload.as_str()),
            Some(a.workload.as_str()),
            "{}",
            a.address
        );
    }
}

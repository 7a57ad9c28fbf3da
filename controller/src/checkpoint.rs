//! The live topology checkpointed to the store (`--topology-checkpoint-interval`): every
//! interval, what changed since the last checkpoint is written (a changed dependency's
//! head and the time buckets it recorded into; expired buckets and evicted dependencies
//! and services deleted); at start the last checkpoint is read back before any agent
//! connects. The entries are `weft_topology`'s (`topology::checkpoint`). A `kill -9`
//! loses at most the records merged since the last checkpoint, and the agents make up
//! for those: with the topology, a checkpoint holds each agent instance's last merged
//! batch sequence, copied in one cut with it (merges pause while the checkpoint copies
//! them, [`Registry::pause_merges`]). Once written, those batches are durable and the
//! agents are told so (`durable_sequence`); they keep every acknowledged batch above it
//! and, when the restarted controller answers their registration with the sequence its
//! checkpoint holds, send the rest again: each batch is counted exactly once.
//!
//! A checkpoint is written in one transaction when it fits (`MAX_TXN_OPS` writes,
//! `MAX_TXN_BYTES`); a larger one is written in several, with a marker that the last one
//! removes. A controller killed in between restarts from a torn checkpoint (some entries
//! new, the sequences old) and says so: counts may then be off by what was merged in one
//! interval.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_store::{Store, StoreError};
use weft_topology::registry::{AgentSequence, Registry};
use weft_topology::time::now_unix_ns;
use weft_topology::topology::{CHECKPOINT_PREFIX, CheckpointState, Topology};

/// Store writes per transaction (the controller's etcd runs with `--max-txn-ops 100000`).
const MAX_TXN_OPS: usize = 8192;
/// Bytes of values per transaction (under etcd's `--max-request-bytes`).
const MAX_TXN_BYTES: usize = 4 << 20;
/// Agent instances' last merged sequences: `SEQUENCES` + host id.
const SEQUENCES: &str = "topology-sequences/";
/// Present while a checkpoint written in several transactions is incomplete.
const TORN: &str = "topology-checkpoint-torn";

#[derive(Serialize, Deserialize)]
struct SequenceEntry {
    agent_instance: String,
    sequence: u64,
}

#[derive(Debug)]
pub struct Checkpointer {
    topology: Arc<Topology>,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    /// What the store holds of the topology.
    state: CheckpointState,
    /// Start of the last checkpoint on the topology's clock: what was touched since is
    /// written by the next one.
    since: u64,
}

/// What [`Checkpointer::restore`] read back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub entries: usize,
    /// Entries that could not be read back (logged, and deleted by the next checkpoint).
    pub refused: usize,
    /// Agent instances whose last merged sequence was read back.
    pub agents: usize,
    /// The last checkpoint was interrupted midway (written in several transactions).
    pub torn: bool,
}

impl Checkpointer {
    /// Reads the last checkpoint in `store` back into `topology`.
    pub fn restore(
        topology: Arc<Topology>,
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
    ) -> Result<(Self, Restored), StoreError> {
        let mut restored = Restored {
            torn: store.get(TORN)?.is_some(),
            ..Default::default()
        };
        if restored.torn {
            tracing::warn!(
                "the last topology checkpoint was interrupted midway: counts may be off by what was merged in one checkpoint interval"
            );
        }
        for (key, value) in store.scan_prefix(SEQUENCES)? {
            let host_id = &key[SEQUENCES.len()..];
            match serde_json::from_slice::<SequenceEntry>(&value) {
                Ok(entry) => {
                    restored.agents += 1;
                    registry.restore_sequence(AgentSequence {
                        host_id: host_id.to_owned(),
                        agent_instance: entry.agent_instance,
                        sequence: entry.sequence,
                    });
                }
                Err(error) => {
                    restored.refused += 1;
                    tracing::warn!(%key, %error, "agent sequence not restored: that agent's batches since may be counted twice");
                }
            }
        }
        registry.durable_at_checkpoint();
        // Before the read: what is touched from now on is written by the next checkpoint.
        let since = now_unix_ns();
        let entries = store.scan_prefix(CHECKPOINT_PREFIX)?;
        let read = topology.restore_checkpoint(&entries);
        for error in &read.refused {
            // The next checkpoint deletes it.
            tracing::warn!(%error, "topology checkpoint entry not restored");
        }
        if read.first_format > 0 {
            tracing::info!(
                dependencies = read.first_format,
                "topology checkpoint in the first format (buckets inside each dependency's entry) read; the next checkpoint rewrites it with an entry per bucket"
            );
        }
        restored.entries = read.entries;
        restored.refused += read.refused.len();
        Ok((
            Self {
                topology,
                registry,
                store,
                state: read.state,
                since,
            },
            restored,
        ))
    }

    /// Writes one checkpoint: what changed since the last one. Returns the entries written
    /// and deleted.
    pub fn write(&mut self) -> Result<usize, StoreError> {
        let started = now_unix_ns();
        // One cut: no batch is half merged while the topology and sequences are copied.
        let (checkpoint, sequences) = {
            let _paused = self.registry.pause_merges();
            (
                self.topology.checkpoint(self.since, &self.state),
                self.registry.sequences(),
            )
        };
        let sequence_entries: Vec<(String, Vec<u8>)> = sequences
            .iter()
            .filter_map(|s| {
                let value = serde_json::to_vec(&SequenceEntry {
                    agent_instance: s.agent_instance.clone(),
                    sequence: s.sequence,
                })
                .ok()?;
                Some((format!("{SEQUENCES}{}", s.host_id), value))
            })
            .collect();
        let mut ops: Vec<(&str, Option<&[u8]>)> = checkpoint
            .puts
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        ops.extend(checkpoint.deletes.iter().map(|k| (k.as_str(), None)));
        let written = ops.len();
        // The sequences go last: in the transaction that completes the checkpoint.
        ops.extend(
            sequence_entries
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        );
        write_atomically_if_possible(self.store.as_ref(), &ops)?;
        self.registry.set_durable(&sequences);
        drop(ops);
        self.state.commit(checkpoint.changes);
        // Anything touched while this one was made is written again next time.
        self.since = started;
        Ok(written)
    }
}

/// A write (`Some`) or delete (`None`) of a key.
type Op<'a> = (&'a str, Option<&'a [u8]>);

/// Writes `ops` in one transaction when they fit in one; otherwise in several, with
/// [`TORN`] present from the first to the last.
fn write_atomically_if_possible(store: &dyn Store, ops: &[Op<'_>]) -> Result<(), StoreError> {
    let mut chunks: Vec<&[Op<'_>]> = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (key, value)) in ops.iter().enumerate() {
        let size = key.len() + value.map_or(0, <[u8]>::len);
        if i > start && (i - start >= MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
            chunks.push(&ops[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    chunks.push(&ops[start..]);
    if let [one] = chunks.as_slice() {
        // Complete: a marker left by an earlier torn one goes.
        let mut txn: Vec<(&str, Option<&[u8]>)> = one.to_vec();
        txn.push((TORN, None));
        store.txn(&[], &txn)?;
        return Ok(());
    }
    tracing::warn!(
        transactions = chunks.len(),
        writes = ops.len(),
        "topology checkpoint too large for one transaction: written in several"
    );
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut txn: Vec<(&str, Option<&[u8]>)> = chunk.to_vec();
        if i == 0 {
            txn.push((TORN, Some(b"1")));
        }
        if i == last {
            txn.push((TORN, None));
        }
        store.txn(&[], &txn)?;
    }
    Ok(())
}

/// Checkpoints every `interval` until `stop`, and once more then.
pub async fn run(
    checkpointer: Checkpointer,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let checkpointer = Arc::new(std::sync::Mutex::new(checkpointer));
    let write = |c: Arc<std::sync::Mutex<Checkpointer>>| async move {
        let result = tokio::task::spawn_blocking(move || {
            c.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .write()
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "topology checkpoint failed"),
            Err(error) => tracing::error!(%error, "topology checkpoint task failed"),
        }
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => write(checkpointer.clone()).await,
            () = &mut stop => {
                write(checkpointer.clone()).await;
                return;
            }
        }
    }
}

//! The live topology checkpointed to the store (`--topology-checkpoint-interval`): every
//! interval, what changed since the last checkpoint is written (a changed dependency's
//! head and the time buckets it recorded into; expired buckets and evicted dependencies
//! and services deleted) in transactions of bounded size; at start the last checkpoint
//! is read back before any agent connects. A `kill -9` loses at most the records merged
//! since the last checkpoint. The entries are `weft_topology`'s (`topology::checkpoint`).

use std::sync::Arc;
use std::time::Duration;

use weft_store::{Store, StoreError};
use weft_topology::time::now_unix_ns;
use weft_topology::topology::{CHECKPOINT_PREFIX, CheckpointState, Topology};

/// Store writes per transaction (etcd refuses large ones unless told otherwise).
const OPS_PER_TXN: usize = 512;

#[derive(Debug)]
pub struct Checkpointer {
    topology: Arc<Topology>,
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
}

impl Checkpointer {
    /// Reads the last checkpoint in `store` back into `topology`.
    pub fn restore(
        topology: Arc<Topology>,
        store: Arc<dyn Store>,
    ) -> Result<(Self, Restored), StoreError> {
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
        let restored = Restored {
            entries: read.entries,
            refused: read.refused.len(),
        };
        Ok((
            Self {
                topology,
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
        let checkpoint = self.topology.checkpoint(self.since, &self.state);
        let mut ops: Vec<(&str, Option<&[u8]>)> = checkpoint
            .puts
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v.as_slice())))
            .collect();
        ops.extend(checkpoint.deletes.iter().map(|k| (k.as_str(), None)));
        for chunk in ops.chunks(OPS_PER_TXN) {
            self.store.txn(&[], chunk)?;
        }
        let written = ops.len();
        drop(ops);
        self.state.commit(checkpoint.changes);
        // Anything touched while this one was made is written again next time.
        self.since = started;
        Ok(written)
    }
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

//! The shard manager: IP shards carved from configured pools (IPv4 and IPv6), allocated to
//! networks, addresses allocated to workload interfaces from their network's shards, and
//! migrations that move every workload off a shard being deallocated.
//!
//! Writes go through one writer thread that takes queued requests (a bounded channel),
//! applies a batch of them to the in-memory [`index::Index`] and commits all their changes
//! in one store transaction ([`Store::txn`], group commit), acking each request only after
//! the commit. Reads use the index, rebuilt from the store at start; so is the control
//! hub's desired state (every workload's current addresses), so a restart (or kill -9)
//! loses no acknowledged write and never hands one address to two workloads.
//!
//! Shard sizes: IPv4 /28 (16 addresses) to /20 (4096); IPv6 the same address counts,
//! /124 to /116. Default 1024 addresses: /22 and /118. Usable addresses skip the network
//! address, the gateway (the first address after it) and, for IPv4, the broadcast address.

pub mod cidr;
pub mod events;
pub mod index;
mod migration;
pub mod model;
pub mod publish;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use agent_common::time::now_unix_ns;
use tokio::sync::{broadcast, mpsc, oneshot};
use weft_store::{Store, StoreError};

pub use cidr::{Cidr, Family};
pub use events::CloudEvent;
pub use index::{CreateShard, Deallocation, Index, MoveStep};
pub use model::{
    Allocation, Migration, MigrationState, MoveCounts, MoveState, Shard, ShardConfig, ShardError,
    ShardStatus, WorkloadMove, default_prefix, prefix_bounds,
};
pub use publish::{AddressAssignment, AddressPublisher, AddressesApplied};

/// Requests waiting for the writer; senders wait when it is full (backpressure).
const QUEUE: usize = 16_384;
/// Most requests committed in one transaction.
const MAX_BATCH: usize = 4_096;
/// Live events buffered per subscriber before it falls back to reading the store.
const EVENT_CHANNEL: usize = 8_192;
/// Why a migration fails when the operator cancels it.
pub const CANCELLED: &str = "cancelled by the operator";
/// Key of the writer's fencing token: every transaction compares it, so a second writer
/// on a shared store (etcd later) makes the first one's commits fail instead of
/// interleaving.
const FENCE_KEY: &str = "shards/meta/writer";

#[derive(Debug)]
enum Op {
    Create(CreateShard),
    Delete(String),
    Assign {
        network: String,
        shard: String,
    },
    Deallocate {
        network: String,
        shard: String,
    },
    Allocate {
        network: String,
        workload: String,
        host: String,
        family: Family,
    },
    Release {
        network: String,
        address: IpAddr,
        seq: u64,
    },
    ReleaseWorkload {
        network: String,
        workload: String,
    },
    PrepareMove {
        migration: String,
        idx: usize,
    },
    CompleteMove {
        migration: String,
        idx: usize,
        down_us: u64,
    },
    MoveFailed {
        migration: String,
        idx: usize,
        error: String,
    },
    Pause {
        migration: String,
        error: String,
    },
    Resume {
        migration: String,
    },
    Finish {
        migration: String,
    },
    /// Cancelled, or past its deadline: roll back and fail.
    Fail {
        migration: String,
        reason: String,
    },
    /// A rolled-back address the agent has dropped: free it (if still releasing under
    /// `seq`).
    ReleaseRolledBack {
        address: IpAddr,
        seq: u64,
    },
    /// Events of other parts of the controller, appended to the same log.
    Record(Vec<events::Foreign>),
    /// Stop taking requests: those queued before are still committed ([`ShardManager::drain`]).
    Close,
}

#[derive(Debug)]
enum Reply {
    Shard(Shard),
    Deallocation(Deallocation),
    Allocation(Allocation),
    Released(Vec<Allocation>),
    Step(MoveStep),
    Migration(Migration),
    Done,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply, ShardError>>,
}

#[derive(Debug)]
struct Inner {
    index: RwLock<Index>,
    store: Arc<dyn Store>,
    /// Where each workload's desired addresses go (the control plane).
    addresses: Arc<dyn AddressPublisher>,
    events: broadcast::Sender<Arc<CloudEvent>>,
    /// Migrations with a runner task now, and how to stop it (a cancel does).
    running: Mutex<std::collections::HashMap<String, tokio::task::AbortHandle>>,
    /// Set by [`ShardManager::shutdown`]: migration runners stop (they resume from the
    /// store at the next start).
    stop: tokio::sync::watch::Sender<bool>,
    /// The writer thread, taken by [`ShardManager::drain`] to wait for it.
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Cheap to clone. The writer thread stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ShardManager {
    inner: Arc<Inner>,
    tx: mpsc::Sender<Request>,
}

fn unexpected(reply: Reply) -> ShardError {
    ShardError::Internal(format!("unexpected reply {reply:?}"))
}

impl ShardManager {
    /// Opens the manager over `store`: rebuilds the index, puts every workload's
    /// addresses into `addresses`, starts the writer thread and (inside a tokio runtime)
    /// resumes unfinished migrations.
    pub fn open(
        store: Arc<dyn Store>,
        config: ShardConfig,
        addresses: Arc<dyn AddressPublisher>,
    ) -> Result<Self, StoreError> {
        let config = Arc::new(config);
        let index = Index::load(store.as_ref(), config.clone())?;
        let fence = format!("{:016x}", rand::random::<u64>());
        store.put(FENCE_KEY, fence.as_bytes())?;
        for (host, workload) in index.host_workloads() {
            addresses.publish(&host, &workload, index.desired(&host, &workload));
        }
        let inner = Arc::new(Inner {
            index: RwLock::new(index),
            store,
            addresses,
            events: broadcast::channel(EVENT_CHANNEL).0,
            running: Mutex::new(Default::default()),
            stop: tokio::sync::watch::channel(false).0,
            writer: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_inner = inner.clone();
        // It ends after committing what was queued, at [`ShardManager::drain`] or once
        // every sender (every manager clone) is gone.
        let handle = std::thread::Builder::new()
            .name("weft-shard-writer".into())
            .spawn(move || writer(writer_inner, rx, fence))
            .map_err(|e| StoreError(format!("starting the shard writer: {e}")))?;
        *inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle);
        let manager = Self { inner, tx };
        if tokio::runtime::Handle::try_current().is_ok() {
            manager.resume_migrations();
            manager.resume_releases();
        }
        Ok(manager)
    }

    /// Stops the migration runners (what they did is persisted; they resume at the next
    /// start). The writer stops once every clone of the manager is dropped.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// [`Self::shutdown`], then stops the writer: every request queued before this call is
    /// committed and answered, later ones fail. Returns once the writer thread has ended
    /// (clones of the manager may live on).
    pub async fn drain(&self) {
        self.shutdown();
        // An error: the writer has stopped already.
        let _ = self.call(Op::Close).await;
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && !matches!(
                tokio::task::spawn_blocking(move || handle.join()).await,
                Ok(Ok(()))
            )
        {
            tracing::error!("the shard writer panicked");
        }
    }

    /// Where the desired addresses go.
    pub fn addresses(&self) -> &Arc<dyn AddressPublisher> {
        &self.inner.addresses
    }

    pub fn config(&self) -> Arc<ShardConfig> {
        self.read().config.clone()
    }

    /// The index, for reading.
    pub fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.inner
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether this manager runs a task driving migration `id` (a paused or finished
    /// migration has none).
    pub fn migration_running(&self, id: &str) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(id)
    }

    async fn call(&self, op: Op) -> Result<Reply, ShardError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { op, reply })
            .await
            .map_err(|_| ShardError::Internal("the shard writer has stopped".into()))?;
        rx.await
            .map_err(|_| ShardError::Internal("the shard writer dropped the request".into()))?
    }

    pub async fn create_shard(&self, req: CreateShard) -> Result<Shard, ShardError> {
        match self.call(Op::Create(req)).await? {
            Reply::Shard(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_shard(&self, id: &str) -> Result<Shard, ShardError> {
        match self.call(Op::Delete(id.to_owned())).await? {
            Reply::Shard(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    pub async fn assign_shard(&self, network: &str, shard: &str) -> Result<Shard, ShardError> {
        match self
            .call(Op::Assign {
                network: network.to_owned(),
                shard: shard.to_owned(),
            })
            .await?
        {
            Reply::Shard(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Deallocates a shard from its network; a shard in use starts a migration (run in
    /// the background; see [`ShardManager::migration`]).
    pub async fn deallocate_shard(
        &self,
        network: &str,
        shard: &str,
    ) -> Result<Deallocation, ShardError> {
        match self
            .call(Op::Deallocate {
                network: network.to_owned(),
                shard: shard.to_owned(),
            })
            .await?
        {
            Reply::Deallocation(d) => {
                if let Deallocation::Migrating(m) = &d {
                    self.spawn_migration(&m.id);
                }
                Ok(d)
            }
            other => Err(unexpected(other)),
        }
    }

    pub async fn allocate_address(
        &self,
        network: &str,
        workload: &str,
        host: &str,
        family: Family,
    ) -> Result<Allocation, ShardError> {
        let op = Op::Allocate {
            network: network.to_owned(),
            workload: workload.to_owned(),
            host: host.to_owned(),
            family,
        };
        match self.call(op).await? {
            Reply::Allocation(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    pub async fn release_address(
        &self,
        network: &str,
        address: IpAddr,
        seq: u64,
    ) -> Result<Allocation, ShardError> {
        match self
            .call(Op::Release {
                network: network.to_owned(),
                address,
                seq,
            })
            .await?
        {
            Reply::Allocation(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Releases every address `workload` holds in `network` (one index lookup).
    pub async fn release_workload(
        &self,
        network: &str,
        workload: &str,
    ) -> Result<Vec<Allocation>, ShardError> {
        match self
            .call(Op::ReleaseWorkload {
                network: network.to_owned(),
                workload: workload.to_owned(),
            })
            .await?
        {
            Reply::Released(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels an active migration: its runner stops, the moves not done are rolled back
    /// (those workloads have their old addresses again, and their new ones are released
    /// once their agents applied that; moved ones keep their new ones),
    /// the shard is back In-Use in its network, and the migration is Failed with
    /// [`CANCELLED`] as its error. A completed or failed migration is a conflict.
    pub async fn cancel_migration(&self, id: &str) -> Result<Migration, ShardError> {
        let failed = self.fail_migration(id, CANCELLED).await?;
        // The runner's next step would be refused anyway (the migration is no longer
        // active); stop it now instead of after its current wait.
        let runner = self
            .inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(id);
        if let Some(runner) = runner {
            runner.abort();
        }
        Ok(failed)
    }

    /// Fails migration `id`, then starts the release of the new addresses it rolled
    /// back (they stay `releasing` until their agents applied the rollback).
    async fn fail_migration(&self, id: &str, reason: &str) -> Result<Migration, ShardError> {
        let manager = self.clone();
        let op = Op::Fail {
            migration: id.to_owned(),
            reason: reason.to_owned(),
        };
        // In a task of its own, so a caller that goes away (a client disconnecting)
        // after the rollback was committed does not leave its addresses without a
        // release task until the next start.
        tokio::spawn(async move {
            let failed = match manager.call(op).await? {
                Reply::Migration(m) => m,
                other => return Err(unexpected(other)),
            };
            manager.release_rolled_back(&failed);
            Ok(failed)
        })
        .await
        .map_err(|e| ShardError::Internal(format!("failing migration {id}: {e}")))?
    }

    /// Starts a release task for every new address `failed` rolled back.
    fn release_rolled_back(&self, failed: &Migration) {
        let releasing: Vec<Allocation> = {
            let index = self.read();
            failed
                .moves
                .iter()
                .filter(|mv| mv.state == MoveState::RolledBack)
                .filter_map(|mv| {
                    let a = index.allocation(mv.new_address?)?;
                    (a.releasing && a.seq == mv.new_seq).then(|| a.clone())
                })
                .collect()
        };
        for a in releasing {
            self.spawn_release(a);
        }
    }

    /// At start: rolled-back addresses still waiting for their agents get their release
    /// task again.
    fn resume_releases(&self) {
        let releasing = self.read().releasing();
        for a in releasing {
            tracing::info!(address = %a.address, host = %a.host_id, "rolled-back address waits for its agent before release");
            self.spawn_release(a);
        }
    }

    fn spawn_release(&self, releasing: Allocation) {
        let manager = self.clone();
        let mut stop = self.inner.stop.subscribe();
        // Detached: the address is persisted as releasing, so a task cut short by
        // shutdown starts again at the next start.
        tokio::spawn(async move {
            tokio::select! {
                () = migration::release_when_applied(&manager, &releasing) => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }

    pub fn shard(&self, id: &str) -> Option<Shard> {
        self.read().shard(id).cloned()
    }

    pub fn migration(&self, id: &str) -> Option<Migration> {
        self.read().migration(id).cloned()
    }

    pub fn migrations(&self) -> Vec<Migration> {
        self.read().migrations().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CloudEvent>> {
        self.inner.events.subscribe()
    }

    /// Stored events with sequence >= `from`, at most about `limit` (whole records).
    pub fn stored_events(&self, from: u64, limit: usize) -> Result<Vec<CloudEvent>, StoreError> {
        let mut out = Vec::new();
        let mut start = index::event_key(from);
        loop {
            let records = self
                .inner
                .store
                .scan_from(index::EVENT_PREFIX, &start, 16)?;
            let Some((last_key, _)) = records.last() else {
                return Ok(out);
            };
            start = format!("{last_key}\u{0}");
            for (k, v) in &records {
                let events: Vec<CloudEvent> =
                    serde_json::from_slice(v).map_err(|e| StoreError(format!("{k}: {e}")))?;
                out.extend(events.into_iter().filter(|e| e.sequence >= from));
            }
            if out.len() >= limit {
                return Ok(out);
            }
        }
    }

    /// Appends events of other parts of the controller (topology, networks) to this
    /// log, after the shard events queued before them: stored, numbered and served like
    /// shard events (`GET /events`), with their own `source`.
    pub async fn record_events(&self, events: Vec<events::Foreign>) -> Result<(), ShardError> {
        if events.is_empty() {
            return Ok(());
        }
        self.call(Op::Record(events)).await.map(|_| ())
    }

    /// The sequence the next event will have.
    pub fn next_event(&self) -> u64 {
        self.read().counters.event_seq + 1
    }

    pub fn oldest_event(&self) -> u64 {
        self.read().counters.oldest_event
    }

    fn resume_migrations(&self) {
        let active: Vec<String> = self
            .read()
            .migrations()
            .filter(|m| m.is_active())
            .map(|m| m.id.clone())
            .collect();
        for id in active {
            tracing::info!(migration = %id, "resuming an unfinished migration");
            self.spawn_migration(&id);
        }
    }

    fn spawn_migration(&self, id: &str) {
        // Held while spawning, so the task's own removal below comes after the insert.
        let mut running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.contains_key(id) {
            return;
        }
        let manager = self.clone();
        let task_id = id.to_owned();
        // Detached: a migration outlives the request that started it; it is persisted,
        // so one cut short by shutdown resumes at the next start. A cancel aborts it
        // through the handle kept in `running`.
        let mut stop = self.inner.stop.subscribe();
        let task = tokio::spawn(async move {
            let id = task_id;
            let expired = tokio::select! {
                () = migration::run(&manager, &id) => false,
                () = migration::deadline(&manager, &id) => true,
                _ = stop.wait_for(|stop| *stop) => false,
            };
            if expired {
                migration::expire(&manager, &id).await;
            }
            manager
                .inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
        });
        running.insert(id.to_owned(), task.abort_handle());
    }
}

fn apply(index: &mut Index, op: &Op, batch: &mut index::Batch) -> Result<Reply, ShardError> {
    Ok(match op {
        Op::Create(req) => Reply::Shard(index.create_shard(req, batch)?),
        Op::Delete(id) => Reply::Shard(index.delete_shard(id, batch)?),
        Op::Assign { network, shard } => Reply::Shard(index.assign_shard(network, shard, batch)?),
        Op::Deallocate { network, shard } => {
            Reply::Deallocation(index.deallocate_shard(network, shard, batch)?)
        }
        Op::Allocate {
            network,
            workload,
            host,
            family,
        } => Reply::Allocation(index.allocate_address(network, workload, host, *family, batch)?),
        Op::Release {
            network,
            address,
            seq,
        } => Reply::Allocation(index.release_address(network, *address, *seq, batch)?),
        Op::ReleaseWorkload { network, workload } => {
            Reply::Released(index.release_workload(network, workload, batch)?)
        }
        Op::PrepareMove { migration, idx } => {
            Reply::Step(index.prepare_move(migration, *idx, batch)?)
        }
        Op::CompleteMove {
            migration,
            idx,
            down_us,
        } => {
            index.complete_move(migration, *idx, *down_us, batch)?;
            Reply::Done
        }
        Op::MoveFailed {
            migration,
            idx,
            error,
        } => {
            index.move_failed(migration, *idx, error, batch)?;
            Reply::Done
        }
        Op::Pause { migration, error } => {
            index.pause_migration(migration, error, batch)?;
            Reply::Done
        }
        Op::Resume { migration } => {
            index.resume_migration(migration, batch)?;
            Reply::Done
        }
        Op::Finish { migration } => {
            index.finish_migration(migration, batch)?;
            Reply::Done
        }
        Op::Fail { migration, reason } => {
            Reply::Migration(index.fail_migration(migration, reason, batch)?)
        }
        Op::ReleaseRolledBack { address, seq } => {
            index.release_rolled_back(*address, *seq, batch);
            Reply::Done
        }
        Op::Record(events) => {
            for e in events {
                index.record_foreign(e, batch);
            }
            Reply::Done
        }
        Op::Close => Reply::Done,
    })
}

/// The group-commit loop: one batch of queued requests, one transaction, then the acks.
fn writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<Request>, fence: String) {
    let mut poisoned = false;
    while let Some(first) = rx.blocking_recv() {
        let mut requests = vec![first];
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        if requests.iter().any(|r| matches!(r.op, Op::Close)) {
            // Later sends fail; what is queued is still received (and committed) below.
            rx.close();
        }
        let mut index = inner
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if poisoned {
            match Index::load(inner.store.as_ref(), index.config.clone()) {
                Ok(fresh) => {
                    *index = fresh;
                    poisoned = false;
                }
                Err(error) => {
                    drop(index);
                    for r in requests {
                        let _ = r.reply.send(Err(ShardError::Internal(format!(
                            "the store is unreadable: {error}"
                        ))));
                    }
                    continue;
                }
            }
        }
        let mut batch = index::Batch::new(now_unix_ns());
        let mut results: Vec<Result<Reply, ShardError>> = requests
            .iter()
            .map(|r| apply(&mut index, &r.op, &mut batch))
            .collect();
        let commit = index.flush(&mut batch).and_then(|ops| {
            if ops.is_empty() {
                return Ok(());
            }
            let ops: Vec<(&str, Option<&[u8]>)> = ops.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
            match inner.store.txn(&[(FENCE_KEY, Some(fence.as_bytes()))], &ops) {
                Ok(true) => Ok(()),
                Ok(false) => Err(ShardError::Internal(
                    "another controller took over the shard store (fencing token changed); restart this one".into(),
                )),
                Err(e) => Err(ShardError::Internal(e.to_string())),
            }
        });
        if let Err(error) = commit {
            // Nothing of this batch is durable: forget it (the index is rebuilt from the
            // store before the next batch) and fail every request.
            tracing::error!(%error, "committing a batch of shard changes failed");
            poisoned = true;
            drop(index);
            for r in requests {
                let _ = r.reply.send(Err(error.clone()));
            }
            continue;
        }
        // Durable: tell the agents, then the event consumers, then the callers.
        for (host, workload) in &batch.touched {
            inner
                .addresses
                .publish(host, workload, index.desired(host, workload));
        }
        for result in &mut results {
            if let Ok(Reply::Step(step)) = result {
                step.generation = inner.addresses.generation(&step.host_id, &step.workload);
            }
        }
        drop(index);
        for e in batch.events.drain(..) {
            // No subscriber is fine: events are in the store.
            let _ = inner.events.send(Arc::new(e));
        }
        for (r, result) in requests.into_iter().zip(results) {
            // The caller may have gone away (client disconnect); the write stands.
            let _ = r.reply.send(result);
        }
    }
}

//! The volume store: a node's pool volumes, its snapshots, clones and syncs, and their
//! removal. Every operation is blocking (filesystem work): callers run it on a blocking
//! thread. Operations on one node are serialized by that node's lock.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{CowError, Method, Pool, PoolConfig, SnapshotMeta, SyncMeta, btrfs, retention};
use crate::networks::spec::{SnapshotPolicy, VolumeOps};

/// What a node's volumes must be (one apply).
#[derive(Debug, Clone)]
pub struct VolumeRequest {
    pub network: String,
    pub node: String,
    /// `<node root>/<network>/<node>`: where its `volumes/<name>` links are.
    pub node_dir: PathBuf,
    /// The node root (`<root>/<network>/<node>` of other nodes: sync sources).
    pub node_root: PathBuf,
    pub volumes: Vec<String>,
    pub ops: VolumeOps,
    /// Files removed from a cloned or synced volume before start (the profile's
    /// `clone_remove`).
    pub clone_remove: Vec<String>,
}

/// What an apply did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub observed: Vec<String>,
    pub measurements: Vec<(String, f64)>,
}

/// Kept in `<pool>/nodes/<network>/<node>/.state.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Persisted {
    /// The last `VolumeSnapshots.generation` answered with a snapshot.
    answered_generation: u64,
    /// The last sync per volume.
    syncs: BTreeMap<String, SyncMeta>,
}

#[derive(Debug, Default)]
struct NodeState {
    snapshots: Vec<SnapshotMeta>,
    persisted: Persisted,
}

pub struct Store {
    /// The pool's directory (its mount point with btrfs).
    dir: PathBuf,
    /// How to make the pool when it is first needed (`None`: made already).
    cfg: Option<PoolConfig>,
    pool: OnceLock<Pool>,
    opening: Mutex<()>,
    nodes: Mutex<HashMap<String, Arc<Mutex<NodeState>>>>,
    /// Write-back interval of a btrfs pool (`None`: the kernel's own writeback only).
    flush_every: Option<std::time::Duration>,
    flusher: OnceLock<super::flusher::Flusher>,
}

/// Whether `s` asks for a sync of a generation the node has not done yet.
fn sync_due(st: &NodeState, s: &crate::networks::spec::SyncFrom) -> bool {
    s.generation
        != st
            .persisted
            .syncs
            .get(&s.volume)
            .map_or(0, |d| d.generation)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `cp -a --reflink=auto <from>/. <to>/` (`to` is made if missing).
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), CowError> {
    std::fs::create_dir_all(to).map_err(|e| CowError::io("creating", to, e))?;
    let mut src = from.as_os_str().to_owned();
    src.push("/.");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(&src)
        .arg(to)
        .output()
        .map_err(|e| CowError::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            message: format!("running cp: {e}"),
        })?;
    if !out.status.success() {
        return Err(CowError::Copy {
            from: from.to_owned(),
            to: to.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Swaps two paths atomically (`renameat2(RENAME_EXCHANGE)`).
pub fn exchange(a: &Path, b: &Path) -> Result<(), CowError> {
    use std::os::unix::ffi::OsStrExt as _;
    let bad = |p: &Path| {
        CowError::io(
            "renaming",
            p,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    };
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(|_| bad(a))?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(|_| bad(b))?;
    // SAFETY: valid C strings; renameat2 with AT_FDCWD and RENAME_EXCHANGE.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(CowError::io(
            "exchanging",
            b,
            std::io::Error::other(format!(
                "with {}: {}",
                a.display(),
                std::io::Error::last_os_error()
            )),
        ))
    }
}

/// Writes `value` as JSON to `path` atomically (a temporary file renamed over it).
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), CowError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| CowError::State {
        what: "encoding",
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(|e| CowError::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| CowError::io("renaming", path, e))
}

impl Store {
    /// A store on a pool opened already (tests: the agent opens its pool lazily).
    #[cfg(test)]
    pub fn new(pool: Pool) -> Self {
        Self {
            dir: pool.root().to_owned(),
            cfg: None,
            pool: OnceLock::from(pool),
            opening: Mutex::new(()),
            nodes: Mutex::new(HashMap::new()),
            flush_every: None,
            flusher: OnceLock::new(),
        }
    }

    /// A store whose pool is made (or mounted again) when a node first needs it: an
    /// agent none of whose nodes has snapshots, a clone or syncs makes nothing.
    pub fn lazy(cfg: PoolConfig) -> Self {
        Self {
            dir: cfg.dir.clone(),
            cfg: Some(cfg),
            pool: OnceLock::new(),
            opening: Mutex::new(()),
            nodes: Mutex::new(HashMap::new()),
            flush_every: None,
            flusher: OnceLock::new(),
        }
    }

    /// Writes a btrfs pool back every `every` once it is opened ([`super::flusher`]);
    /// `None` or zero: not.
    pub fn with_flush(mut self, every: Option<std::time::Duration>) -> Self {
        self.flush_every = every.filter(|d| !d.is_zero());
        self
    }

    /// The pool, opened (made, mounted) at the first call. Blocking.
    fn open(&self) -> Result<&Pool, CowError> {
        if let Some(p) = self.pool.get() {
            return Ok(p);
        }
        let _one = lock(&self.opening);
        if let Some(p) = self.pool.get() {
            return Ok(p);
        }
        let cfg = self
            .cfg
            .as_ref()
            .ok_or_else(|| CowError::Pool("no pool configuration".into()))?;
        let pool = Pool::open(cfg)?;
        tracing::info!(pool = %pool.note, "volume pool opened");
        if let (Some(every), Method::Btrfs) = (self.flush_every, pool.method()) {
            match super::flusher::Flusher::start(pool.root().to_owned(), every) {
                Ok(f) => {
                    let _ = self.flusher.set(f);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "volume pool write-back thread not started; snapshots write back what is dirty themselves")
                }
            }
        }
        Ok(self.pool.get_or_init(|| pool))
    }

    /// The pool, if opened.
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.get()
    }

    /// The opened pool's method.
    pub fn method(&self) -> Option<Method> {
        self.pool.get().map(Pool::method)
    }

    /// The pool's directory (whether opened or not).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<pool>/nodes/<network>/<node>`.
    pub fn node_volumes_dir(&self, network: &str, node: &str) -> PathBuf {
        self.dir.join("nodes").join(network).join(node)
    }

    /// The pool volume of a node.
    pub fn volume_path(&self, network: &str, node: &str, volume: &str) -> PathBuf {
        self.node_volumes_dir(network, node).join(volume)
    }

    /// `<pool>/snapshots/<network>/<node>`.
    pub fn snapshots_dir(&self, network: &str, node: &str) -> PathBuf {
        self.dir.join("snapshots").join(network).join(node)
    }

    fn state_path(&self, network: &str, node: &str) -> PathBuf {
        self.node_volumes_dir(network, node).join(".state.json")
    }

    /// The node's state, loaded from the pool at first use (a snapshot directory without
    /// its `snapshot.json` is an unfinished one: removed).
    fn state(&self, network: &str, node: &str) -> Result<Arc<Mutex<NodeState>>, CowError> {
        self.open()?;
        let key = format!("{network}/{node}");
        if let Some(s) = lock(&self.nodes).get(&key) {
            return Ok(s.clone());
        }
        let mut st = NodeState::default();
        let dir = self.snapshots_dir(network, node);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                let id = e.file_name().to_string_lossy().into_owned();
                if retention::id_ms(&id).is_none() {
                    continue;
                }
                let meta = p.join("snapshot.json");
                match std::fs::read(&meta) {
                    Ok(b) => match serde_json::from_slice::<SnapshotMeta>(&b) {
                        Ok(m) if m.id == id => st.snapshots.push(m),
                        _ => {
                            tracing::warn!(path = %meta.display(), "unreadable snapshot metadata; the snapshot is left as it is")
                        }
                    },
                    Err(_) => {
                        tracing::info!(path = %p.display(), "removing an unfinished snapshot");
                        btrfs::remove_any(&p)?;
                    }
                }
            }
        }
        retention::sort(&mut st.snapshots);
        let sp = self.state_path(network, node);
        if let Ok(b) = std::fs::read(&sp) {
            st.persisted = serde_json::from_slice(&b).map_err(|e| CowError::State {
                what: "reading",
                path: sp.clone(),
                message: e.to_string(),
            })?;
        }
        let st = Arc::new(Mutex::new(st));
        Ok(lock(&self.nodes).entry(key).or_insert(st).clone())
    }

    fn persist(&self, network: &str, node: &str, p: &Persisted) -> Result<(), CowError> {
        let dir = self.node_volumes_dir(network, node);
        std::fs::create_dir_all(&dir).map_err(|e| CowError::io("creating", &dir, e))?;
        write_json(&self.state_path(network, node), p)
    }

    /// An empty volume at `path` (a subvolume, or a directory in the copy store).
    fn create_volume(&self, path: &Path) -> Result<(), CowError> {
        match self.open()?.method() {
            Method::Btrfs => btrfs::create_subvolume(path),
            Method::Copy => {
                std::fs::create_dir(path).map_err(|e| CowError::io("creating", path, e))
            }
        }
    }

    /// A copy of `from` at `to` (which must not exist): a snapshot when both are on the
    /// btrfs pool and `from` is a subvolume, a copy otherwise. Returns the method used.
    fn copy_volume(&self, from: &Path, to: &Path, read_only: bool) -> Result<Method, CowError> {
        if self.open()?.method() == Method::Btrfs && btrfs::is_subvolume(from) {
            btrfs::snapshot(from, to, read_only)?;
            return Ok(Method::Btrfs);
        }
        copy_tree(from, to)?;
        Ok(Method::Copy)
    }

    /// Whether bringing `req` about needs the node's processes stopped: a plain volume
    /// directory to convert, or a sync due.
    pub fn needs_stop(&self, req: &VolumeRequest) -> Result<bool, CowError> {
        for v in &req.volumes {
            let link = req.node_dir.join("volumes").join(v);
            if std::fs::symlink_metadata(&link).is_ok_and(|m| m.is_dir()) {
                return Ok(true);
            }
        }
        Ok(!self.sync_sources_due(req)?.is_empty())
    }

    /// The nodes (`<network>/<node>`) whose volumes a sync of `req` due now copies.
    pub fn sync_sources_due(&self, req: &VolumeRequest) -> Result<Vec<String>, CowError> {
        if req.ops.sync_from.is_empty() {
            return Ok(Vec::new());
        }
        let st = self.state(&req.network, &req.node)?;
        let st = lock(&st);
        let mut out: Vec<String> = req
            .ops
            .sync_from
            .iter()
            .filter(|s| sync_due(&st, s))
            .map(|s| format!("{}/{}", s.network, s.node))
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Whether `req` asks for a snapshot not taken yet (a weave operation's): a generation
    /// above the last answered.
    pub fn snapshot_due(&self, req: &VolumeRequest) -> Result<bool, CowError> {
        let Some(p) = req.ops.snapshots.as_ref().filter(|p| p.generation != 0) else {
            return Ok(false);
        };
        let st = self.state(&req.network, &req.node)?;
        let st = lock(&st);
        Ok(p.generation > st.persisted.answered_generation)
    }

    /// Brings the node's pool volumes about: each volume a pool volume linked from the
    /// node's directory (made empty, cloned from `clone`'s snapshot at first apply, or
    /// converted from a plain directory), the syncs due done, the snapshot asked for
    /// taken, old snapshots removed. The node's processes must be stopped when
    /// [`Store::needs_stop`] said so.
    pub fn prepare(&self, req: &VolumeRequest) -> Result<Outcome, CowError> {
        let (network, node) = (req.network.as_str(), req.node.as_str());
        let st = self.state(network, node)?;
        let mut st = lock(&st);
        let mut out = Outcome::default();
        let pool_dir = self.node_volumes_dir(network, node);
        std::fs::create_dir_all(&pool_dir).map_err(|e| CowError::io("creating", &pool_dir, e))?;
        let links = req.node_dir.join("volumes");
        std::fs::create_dir_all(&links).map_err(|e| CowError::io("creating", &links, e))?;
        for v in &req.volumes {
            let link = links.join(v);
            let target = pool_dir.join(v);
            let meta = std::fs::symlink_metadata(&link).ok();
            let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
            if is_link {
                let points =
                    std::fs::read_link(&link).map_err(|e| CowError::io("reading", &link, e))?;
                if points != target {
                    return Err(CowError::Missing(format!(
                        "volume {v}: {} is a link to {}, not to its pool volume {}",
                        link.display(),
                        points.display(),
                        target.display()
                    )));
                }
                if target.exists() {
                    continue;
                }
            }
            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                // A plain directory: converted once (the processes are stopped).
                let t = Instant::now();
                btrfs::remove_any(&target)?;
                self.create_volume(&target)?;
                copy_tree(&link, &target)?;
                // The link replaces the directory in one exchange: the node's path is
                // the directory or the link, never missing (a leftover `.<v>.link` of a
                // crash is either link or the copied directory: removed either way).
                let tmp = links.join(format!(".{v}.link"));
                btrfs::remove_any(&tmp)?;
                std::os::unix::fs::symlink(&target, &tmp)
                    .map_err(|e| CowError::io("linking", &tmp, e))?;
                exchange(&tmp, &link)?;
                btrfs::remove_any(&tmp)?;
                out.observed.push(format!(
                    "volume {v} converted from a directory into the {} pool in {} ms",
                    self.open()?.method().name(),
                    t.elapsed().as_millis()
                ));
                out.measurements
                    .push(("volume_convert_seconds".into(), t.elapsed().as_secs_f64()));
                continue;
            }
            if meta.is_some() && !is_link {
                return Err(CowError::Missing(format!(
                    "volume {v}: {} is neither a directory nor a link",
                    link.display()
                )));
            }
            // Missing: cloned (first apply of a weave's node) or made empty; a pool
            // volume already there (its link was lost) is kept.
            match &req.ops.clone {
                _ if target.exists() => {
                    out.observed
                        .push(format!("volume {v}: pool volume kept, link made again"));
                }
                Some(c) => {
                    let snap_dir = self.snapshots_dir(&c.network, &c.node).join(&c.snapshot);
                    if !snap_dir.join("snapshot.json").exists() {
                        return Err(CowError::Missing(format!(
                            "clone: node {}/{} has no snapshot {} on this host",
                            c.network, c.node, c.snapshot
                        )));
                    }
                    let from = snap_dir.join(v);
                    if from.exists() {
                        let t = Instant::now();
                        let m = self.copy_volume(&from, &target, false)?;
                        let removed = remove_files(&target, &req.clone_remove)?;
                        out.observed.push(format!(
                            "volume {v} cloned ({}) from snapshot {} of {}/{} in {:.1} ms{}",
                            m.name(),
                            c.snapshot,
                            c.network,
                            c.node,
                            t.elapsed().as_secs_f64() * 1e3,
                            removed_note(&removed)
                        ));
                        out.measurements
                            .push(("volume_clone_seconds".into(), t.elapsed().as_secs_f64()));
                    } else {
                        self.create_volume(&target)?;
                        out.observed.push(format!(
                            "volume {v}: snapshot {} of {}/{} has no such volume; made empty",
                            c.snapshot, c.network, c.node
                        ));
                    }
                }
                None => self.create_volume(&target)?,
            }
            if !is_link {
                std::os::unix::fs::symlink(&target, &link)
                    .map_err(|e| CowError::io("linking", &link, e))?;
            }
        }
        // Syncs due: the source's volume now, swapped in with one rename.
        for s in &req.ops.sync_from {
            if !sync_due(&st, s) {
                continue;
            }
            let t = Instant::now();
            let source = req
                .node_root
                .join(&s.network)
                .join(&s.node)
                .join("volumes")
                .join(&s.volume);
            let source = std::fs::canonicalize(&source).map_err(|e| {
                CowError::Missing(format!(
                    "sync_from: node {}/{} has no volume {} on this host ({}: {e})",
                    s.network,
                    s.node,
                    s.volume,
                    source.display()
                ))
            })?;
            let target = pool_dir.join(&s.volume);
            if !target.exists() {
                return Err(CowError::Missing(format!(
                    "sync_from: volume {} is not a volume of this node",
                    s.volume
                )));
            }
            let staging = pool_dir.join(format!(".{}.staging", s.volume));
            btrfs::remove_any(&staging)?;
            let m = self.copy_volume(&source, &staging, false)?;
            let removed = remove_files(&staging, &req.clone_remove)?;
            exchange(&staging, &target)?;
            let took = t.elapsed().as_secs_f64();
            st.persisted.syncs.insert(
                s.volume.clone(),
                SyncMeta {
                    generation: s.generation,
                    took_seconds: took,
                    method: m.name().into(),
                },
            );
            self.persist(network, node, &st.persisted)?;
            // `staging` is the old volume now (one left by a failure here is removed at
            // the next sync).
            if let Err(e) = btrfs::remove_any(&staging) {
                tracing::warn!(error = %e, "removing a node's old volume after a sync");
            }
            out.observed.push(format!(
                "volume {} synced ({}) from {}/{} (generation {}) in {:.1} ms{}",
                s.volume,
                m.name(),
                s.network,
                s.node,
                s.generation,
                took * 1e3,
                removed_note(&removed)
            ));
            out.measurements.push(("volume_sync_seconds".into(), took));
        }
        if let Some(p) = &req.ops.snapshots {
            // Generations only grow: one at or below the last answered is answered (a
            // weave's clone may take a generation before the source's spec asks for it).
            if p.generation > st.persisted.answered_generation {
                let m = self.take(&mut st, network, node, &req.volumes, p.generation)?;
                out.observed.push(m.taken_note(""));
                out.measurements
                    .push(("volume_snapshot_seconds".into(), m.took_seconds));
            }
            self.prune(&mut st, network, node, p)?;
            out.observed.push(format!(
                "{} snapshots kept{}",
                st.snapshots.len(),
                if self.open()?.method() == Method::Copy {
                    " (copy store: a snapshot is a copy of the live volume, not atomic)"
                } else {
                    ""
                }
            ));
        }
        Ok(out)
    }

    /// The node's snapshot answering `generation` (a weave operation's), if taken.
    pub fn snapshot_of_generation(
        &self,
        network: &str,
        node: &str,
        generation: u64,
    ) -> Result<Option<SnapshotMeta>, CowError> {
        let st = self.state(network, node)?;
        let st = lock(&st);
        Ok(st
            .snapshots
            .iter()
            .find(|s| s.generation == generation)
            .cloned())
    }

    /// The node's snapshot answering `generation`, taken now unless it was already (by the
    /// node's own apply, or another clone of it: one snapshot per generation). A weave's
    /// node clones it while the source's spec asking for it may still be on its way; the
    /// source's apply then finds it answered. A generation the node has moved past without
    /// keeping its snapshot is an error, never a new snapshot labelled with an old one.
    pub fn snapshot_for_generation(
        &self,
        network: &str,
        node: &str,
        volumes: &[String],
        generation: u64,
    ) -> Result<(SnapshotMeta, bool), CowError> {
        let st = self.state(network, node)?;
        let mut st = lock(&st);
        if let Some(s) = st.snapshots.iter().find(|s| s.generation == generation) {
            return Ok((s.clone(), false));
        }
        if generation == 0 || st.persisted.answered_generation >= generation {
            return Err(CowError::Missing(format!(
                "node {network}/{node} has no snapshot of generation {generation} (it answered generation {} last)",
                st.persisted.answered_generation
            )));
        }
        Ok((
            self.take(&mut st, network, node, volumes, generation)?,
            true,
        ))
    }

    /// Takes a snapshot of the node's volumes now (the schedule's), then removes what
    /// `policy` does not keep.
    pub fn snapshot(
        &self,
        network: &str,
        node: &str,
        volumes: &[String],
        policy: &SnapshotPolicy,
    ) -> Result<SnapshotMeta, CowError> {
        let st = self.state(network, node)?;
        let mut st = lock(&st);
        let m = self.take(&mut st, network, node, volumes, 0)?;
        self.prune(&mut st, network, node, policy)?;
        Ok(m)
    }

    fn take(
        &self,
        st: &mut NodeState,
        network: &str,
        node: &str,
        volumes: &[String],
        generation: u64,
    ) -> Result<SnapshotMeta, CowError> {
        let t = Instant::now();
        let taken_unix_ns = now_ns();
        let id = retention::next_id(&st.snapshots, taken_unix_ns / 1_000_000);
        let dir = self.snapshots_dir(network, node).join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| CowError::io("creating", &dir, e))?;
        let mut method = self.open()?.method();
        let mut done = Vec::with_capacity(volumes.len());
        for v in volumes {
            let src = self.volume_path(network, node, v);
            if !src.exists() {
                // Not made yet (the node's first apply failed before): not in this one.
                continue;
            }
            match self.copy_volume(&src, &dir.join(v), true) {
                Ok(Method::Copy) => method = Method::Copy,
                Ok(Method::Btrfs) => {}
                Err(e) => {
                    // No half snapshot left behind.
                    let _ = btrfs::remove_any(&dir);
                    return Err(e);
                }
            }
            done.push(v.clone());
        }
        let meta = SnapshotMeta {
            id,
            taken_unix_ns,
            generation,
            volumes: done,
            method: method.name().into(),
            took_seconds: t.elapsed().as_secs_f64(),
        };
        write_json(&dir.join("snapshot.json"), &meta)?;
        st.snapshots.push(meta.clone());
        if generation != 0 {
            st.persisted.answered_generation = generation;
            self.persist(network, node, &st.persisted)?;
        }
        Ok(meta)
    }

    fn prune(
        &self,
        st: &mut NodeState,
        network: &str,
        node: &str,
        policy: &SnapshotPolicy,
    ) -> Result<(), CowError> {
        let gone = retention::to_delete(&st.snapshots, policy.keep, &policy.pinned);
        for id in &gone {
            btrfs::remove_any(&self.snapshots_dir(network, node).join(id))?;
            st.snapshots.retain(|s| &s.id != id);
        }
        Ok(())
    }

    /// The node's snapshots (oldest first) and last syncs, as reported; empty for a node
    /// that never had pool volumes.
    pub fn report(
        &self,
        network: &str,
        node: &str,
    ) -> (
        Vec<weft_proto::v1::VolumeSnapshot>,
        Vec<weft_proto::v1::VolumeSyncDone>,
    ) {
        let key = format!("{network}/{node}");
        let Some(st) = lock(&self.nodes).get(&key).cloned() else {
            return (Vec::new(), Vec::new());
        };
        let st = lock(&st);
        (
            st.snapshots.iter().map(SnapshotMeta::to_wire).collect(),
            st.persisted
                .syncs
                .iter()
                .map(|(v, s)| weft_proto::v1::VolumeSyncDone {
                    volume: v.clone(),
                    generation: s.generation,
                    took_seconds: s.took_seconds,
                    method: s.method.clone(),
                })
                .collect(),
        )
    }

    /// Whether the node has anything in the pool (volumes or snapshots).
    /// Blocking: a pool made earlier (its btrfs file, or the copy store's directory) is
    /// opened to look; one never made is not made for it.
    pub fn has_node(&self, network: &str, node: &str) -> Result<bool, CowError> {
        if self.pool.get().is_none() {
            let made = match self.cfg.as_ref().map(|c| c.kind) {
                Some(super::StoreKind::Copy) => self.dir.exists(),
                _ => super::pool::image_of(&self.dir).exists(),
            };
            if !made {
                return Ok(false);
            }
            self.open()?;
        }
        Ok(self.node_volumes_dir(network, node).exists()
            || self.snapshots_dir(network, node).exists())
    }

    /// Removes the node's pool volumes, its snapshots and the links to them in
    /// `node_dir/volumes`.
    pub fn remove_node(&self, network: &str, node: &str, node_dir: &Path) -> Result<(), CowError> {
        let st = self.state(network, node)?;
        let _held = lock(&st);
        let pool_dir = self.node_volumes_dir(network, node);
        if let Ok(entries) = std::fs::read_dir(node_dir.join("volumes")) {
            for e in entries.flatten() {
                let p = e.path();
                if std::fs::read_link(&p).is_ok_and(|t| t.starts_with(&pool_dir)) {
                    std::fs::remove_file(&p).map_err(|e| CowError::io("removing", &p, e))?;
                }
            }
        }
        btrfs::remove_any(&pool_dir)?;
        btrfs::remove_any(&self.snapshots_dir(network, node))?;
        for d in [
            self.dir.join("nodes").join(network),
            self.dir.join("snapshots").join(network),
        ] {
            // Only when empty.
            let _ = std::fs::remove_dir(d);
        }
        lock(&self.nodes).remove(&format!("{network}/{node}"));
        Ok(())
    }
}

/// Removes `files` (relative) from volume `root`; returns those that were there.
fn remove_files(root: &Path, files: &[String]) -> Result<Vec<String>, CowError> {
    let mut removed = Vec::new();
    for f in files {
        let p = root.join(f);
        match std::fs::remove_file(&p) {
            Ok(()) => removed.push(f.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CowError::io("removing", &p, e)),
        }
    }
    Ok(removed)
}

fn removed_note(removed: &[String]) -> String {
    if removed.is_empty() {
        String::new()
    } else {
        format!("; removed {}", removed.join(", "))
    }
}

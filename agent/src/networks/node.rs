//! The reconciler of kind `network-node`: a node's namespace, its veth on the network's
//! bridge, its addresses and default routes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use rtnetlink::Handle;
use tokio::sync::mpsc;
use weft_firewall::{NamespaceFirewall, NamespaceSockets};
use weft_noderun::{NodeRun, Supervisor};
use weft_proto::kinds::NETWORK_NODE;
use weft_proto::v1::resource::Spec;

use super::links::{self, LinkState};
use super::namespaces::{self, Created};
use super::spec::NodeSpec;
use super::{Networks, NodeObjects, lock, names};
use crate::control::{DesiredResource, Drift, DriftSignal, Reconciler, ResourceReport, Scope};
use crate::hostevents::{Change, HostEvent, HostEvents, NetnsSocket};

/// The loopback device's index in every network namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Time spent per step of a reconcile, summed over its nodes (logged at debug at the end
/// of the reconcile: where the time of a large apply goes).
#[derive(Default)]
struct Steps(Mutex<BTreeMap<&'static str, (u64, Duration)>>);

impl Steps {
    /// Counts one `step` that began at `since`.
    fn add(&self, step: &'static str, since: Instant) {
        let took = since.elapsed();
        let mut m = lock(&self.0);
        let e = m.entry(step).or_default();
        e.0 += 1;
        e.1 += took;
    }

    /// `step=count/total_ms` pairs, in step-name order.
    fn summary(&self) -> String {
        let m = lock(&self.0);
        let mut out = String::new();
        for (step, (n, took)) in m.iter() {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("{step}={n}/{}ms", took.as_millis()));
        }
        out
    }
}

pub struct NodeReconciler {
    pub networks: Arc<Networks>,
    /// Spec and report of the last apply of each node, for `Scope::Changed`.
    last: Mutex<HashMap<String, (NodeSpec, ResourceReport)>>,
    /// Each node's firewall socket and the task watching its nftables events.
    firewalls: Mutex<HashMap<String, NodeFirewall>>,
    signals: mpsc::Sender<DriftSignal>,
    /// What runs in the nodes.
    supervisor: Arc<Supervisor>,
    relays: super::relay::Relays,
    volumes: super::volumes::Volumes,
    /// Host ends of the veths of removed nodes, and when: their namespace's teardown
    /// removes them; one still there later (something holds the namespace) is deleted.
    removed_veths: Mutex<Vec<(String, Instant)>>,
    /// Where nodes keep their data (`<root>/<network>/<node>`, the supervisor's root).
    node_root: PathBuf,
    /// Restarts of each node's process seen at its last apply.
    restarts_seen: Mutex<HashMap<String, u32>>,
    /// Forwards the supervisor's restarts as drift signals.
    restart_watch: tokio::task::JoinHandle<()>,
    /// Where a node's host veth is named after the node (its traffic is the node's
    /// workload, `<network>.<node>`, in the topology); `None` in tests without a datapath.
    workloads: Option<Arc<crate::workloads::Registry>>,
    /// The host-event listener that watches the node namespaces: a namespace made here
    /// gets its socket opened while it is made (no second `setns` for the watch).
    events: Option<HostEvents>,
    /// The copy-on-write volume store (snapshots, clones, syncs); `None`: nodes that ask
    /// for them fail saying so.
    cow: Option<Arc<super::cow::Store>>,
    /// Scheduled snapshots, per node.
    schedules: super::cow::schedule::Schedules,
    /// Per source node: held while its snapshot of a generation is taken (its hook, then
    /// the snapshot), so that its own apply and the weave clones asking for the same
    /// generation run the hook once.
    snapshot_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A weave node's clone source resolved before its volumes are made: the id of the
/// source's snapshot of the generation asked for, and what taking it did.
struct CloneSnapshot {
    id: String,
    observed: Vec<String>,
    measurements: Vec<(String, f64)>,
}

/// A volume-store operation on a blocking thread; its error (or the thread's) as text.
async fn on_store<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::cow::CowError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(format!("clone: {e}")),
        Err(e) => Err(format!("volumes: {e}")),
    }
}

/// Sockets opened inside a node's namespace by the thread that made it.
struct NodeSockets {
    firewall: NamespaceSockets,
    events: Option<NetnsSocket>,
}

impl Drop for NodeReconciler {
    fn drop(&mut self) {
        self.restart_watch.abort();
    }
}

/// A node's process that exited and was restarted is drift of the node: reported, so
/// that a mirror of its network restarts its copy (event-driven sync).
async fn watch_restarts(
    mut events: tokio::sync::broadcast::Receiver<weft_noderun::RunEvent>,
    signals: mpsc::Sender<DriftSignal>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut last_exit: HashMap<String, String> = HashMap::new();
    loop {
        match events.recv().await {
            Ok(weft_noderun::RunEvent::Exited { key, code, signal }) => {
                let how = match (code, signal) {
                    (_, Some(s)) => format!("killed by signal {s}"),
                    (Some(c), None) => format!("exited with status {c}"),
                    (None, None) => "exited".to_string(),
                };
                last_exit.insert(key, how);
            }
            Ok(weft_noderun::RunEvent::Restarted { key, pid, .. }) => {
                let how = last_exit.remove(&key).unwrap_or_else(|| "exited".into());
                let _ = signals.try_send(DriftSignal {
                    kind: NETWORK_NODE,
                    drift: Drift {
                        key,
                        what: format!("process {how}; restarted as pid {pid}"),
                    },
                    at: Instant::now(),
                });
            }
            Ok(_) => {}
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

struct NodeFirewall {
    socket: Arc<Mutex<NamespaceFirewall>>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for NodeFirewall {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl NodeReconciler {
    /// `signals`: where nftables changes made behind weft's back in a node are sent.
    pub fn new(
        networks: Arc<Networks>,
        signals: mpsc::Sender<DriftSignal>,
        supervisor: Arc<Supervisor>,
        node_root: PathBuf,
    ) -> Self {
        Self {
            networks,
            last: Mutex::new(HashMap::new()),
            firewalls: Mutex::new(HashMap::new()),
            restart_watch: tokio::spawn(watch_restarts(supervisor.events(), signals.clone())),
            signals,
            supervisor,
            relays: super::relay::Relays::default(),
            volumes: super::volumes::Volumes::default(),
            removed_veths: Mutex::new(Vec::new()),
            node_root,
            restarts_seen: Mutex::new(HashMap::new()),
            workloads: None,
            events: None,
            cow: None,
            schedules: Default::default(),
            snapshot_locks: Mutex::new(HashMap::new()),
        }
    }

    /// The volume store nodes with `snapshots`, `clone` or `sync_from` keep their volumes
    /// in.
    pub fn with_volume_store(mut self, store: Option<Arc<super::cow::Store>>) -> Self {
        self.cow = store;
        self
    }

    /// Names each node's host veth in `registry` after the node (see
    /// [`crate::workloads::Registry::name_interface`]).
    pub fn with_workloads(mut self, registry: Arc<crate::workloads::Registry>) -> Self {
        self.workloads = Some(registry);
        self
    }

    /// The host-event listener the agent's driver watches node namespaces with; node
    /// namespaces made here then get their watch's socket opened while they are made.
    pub fn with_host_events(mut self, events: Option<HostEvents>) -> Self {
        self.events = events;
        self
    }

    /// Deletes the host ends of removed nodes' veths that outlived their namespace's
    /// teardown by more than a few seconds (a process still holds the namespace: it must
    /// not stay on the network).
    async fn sweep_removed_veths(&self) {
        let due: Vec<String> = {
            let mut list = lock(&self.removed_veths);
            let (due, keep): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|(_, at)| at.elapsed() >= Duration::from_secs(3));
            *list = keep;
            due.into_iter().map(|(v, _)| v).collect()
        };
        for veth in due {
            if let Ok(Some(l)) = links::by_name(&self.networks.host, &veth).await {
                tracing::warn!(veth = %veth, "a removed node's namespace is still held: its veth is deleted");
                let _ = links::delete(&self.networks.host, l.index, &veth).await;
            }
        }
    }

    /// The node's pool volumes (`snapshots`, `clone`, `sync_from`): made, cloned,
    /// converted or synced, with the node's processes stopped only when a conversion or a
    /// sync needs it (never for a snapshot). Returns whether they were stopped.
    async fn ensure_pool_volumes(
        &self,
        s: &NodeSpec,
        running: bool,
        observed: &mut Vec<String>,
        measurements: &mut Vec<(String, f64)>,
        resolved: Option<Result<CloneSnapshot, String>>,
    ) -> Result<bool, String> {
        let key = node_key(&s.network, &s.node);
        if !s.volume_ops.any() {
            self.schedules.remove(&key);
            return Ok(false);
        }
        let store = self.cow.clone().ok_or(
            "the node asks for volume snapshots, a clone or syncs and this agent has no volume pool",
        )?;
        let volumes: Vec<String> = s.runtime.volumes.iter().map(|v| v.name.clone()).collect();
        // A clone by generation, resolved by the caller ([`Self::resolve_clone`]).
        let mut ops = s.volume_ops.clone();
        if let (Some(c), Some(r)) = (ops.clone.as_mut(), resolved) {
            let r = r?;
            c.snapshot = r.id;
            observed.extend(r.observed);
            measurements.extend(r.measurements);
        }
        let req = super::cow::store::VolumeRequest {
            network: s.network.clone(),
            node: s.node.clone(),
            node_dir: self.node_root.join(&s.network).join(&s.node),
            node_root: self.node_root.clone(),
            volumes: volumes.clone(),
            ops,
            clone_remove: self
                .supervisor
                .profile_of(&s.runtime.image)
                .map(|p| p.clone_remove)
                .unwrap_or_default(),
        };
        // A snapshot asked for is taken (hook and snapshot) under the node's snapshot lock:
        // once per generation, also when a weave's clone asks for the same one.
        let snapshot_lock = s
            .volume_ops
            .snapshots
            .as_ref()
            .is_some_and(|p| p.generation != 0)
            .then(|| self.snapshot_lock(&key));
        let _snapshot_held = match &snapshot_lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let (st, rq) = (store.clone(), req.clone());
        let (stop, snapshot_due, sync_sources) = tokio::task::spawn_blocking(move || {
            Ok::<_, super::cow::CowError>((
                st.needs_stop(&rq)?,
                st.snapshot_due(&rq)?,
                st.sync_sources_due(&rq)?,
            ))
        })
        .await
        .map_err(|e| format!("volumes: {e}"))?
        .map_err(|e| format!("volumes: {e}"))?;
        let stopped = stop && running;
        // A sync copies its source's live volume: the source's hook first, as for a
        // snapshot (the node restarted on the copy then replays almost nothing).
        for source in &sync_sources {
            if let Some(Err(e)) = self
                .supervisor
                .before_snapshot(source, &format!("a sync to {key}"))
                .await
            {
                tracing::warn!(key = %key, source = %source, error = %e, "before-snapshot hook of a sync's source failed; the copy is crash-consistent only");
                observed.push(format!(
                    "before the sync from {source}: {e}; the copy is crash-consistent only"
                ));
            }
        }
        if snapshot_due && running && !stopped {
            // The profile's hook first (PostgreSQL: CHECKPOINT), so that a weave's clone
            // starts without replaying what the server had not written yet.
            self.snapshot_hook(
                &key,
                "a snapshot",
                "before the snapshot",
                observed,
                measurements,
            )
            .await;
        }
        if stopped {
            self.supervisor
                .remove(&key)
                .await
                .map_err(|e| format!("stopping the node's processes for its volumes: {e}"))?;
            observed.push("processes stopped for a volume conversion or sync".into());
        }
        let st = store.clone();
        let out = tokio::task::spawn_blocking(move || st.prepare(&req))
            .await
            .map_err(|e| format!("volumes: {e}"))?
            .map_err(|e| format!("volumes: {e}"))?;
        observed.push(format!(
            "volumes in the {} pool {}",
            store.method().map_or("unopened", super::cow::Method::name),
            store.dir().display()
        ));
        observed.extend(out.observed);
        measurements.extend(out.measurements);
        self.schedules.ensure(
            &store,
            &s.network,
            &s.node,
            s.volume_ops.snapshots.as_ref(),
            &volumes,
            &self.signals,
        );
        Ok(stopped)
    }

    fn snapshot_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.snapshot_locks)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// The source's `before_snapshot` hook (PostgreSQL: CHECKPOINT, so that a clone starts
    /// without replaying what the server had not written yet), noted under `label`. A
    /// failure is noted: the snapshot is then crash-consistent.
    async fn snapshot_hook(
        &self,
        source: &str,
        purpose: &str,
        label: &str,
        observed: &mut Vec<String>,
        measurements: &mut Vec<(String, f64)>,
    ) {
        match self.supervisor.before_snapshot(source, purpose).await {
            None => {}
            Some(Ok(took)) => {
                observed.push(format!(
                    "{label}: the profile's hook ran in {:.1} ms",
                    took.as_secs_f64() * 1e3
                ));
                measurements.push(("volume_snapshot_prepare_seconds".into(), took.as_secs_f64()));
            }
            Some(Err(e)) => {
                tracing::warn!(source = %source, purpose, error = %e, "before-snapshot hook failed; the snapshot is crash-consistent only");
                observed.push(format!(
                    "{label}: {e}; the snapshot is crash-consistent only"
                ));
            }
        }
    }

    /// For a weave's node that clones by generation and has no volumes yet: the source's
    /// snapshot of that generation, taken now (the source's before-snapshot hook first)
    /// unless the source's own apply, or another clone, took it already. `None`: nothing
    /// to resolve (no such clone, or its volumes exist and are kept).
    async fn resolve_clone(&self, s: &NodeSpec) -> Option<Result<CloneSnapshot, String>> {
        let c = s
            .volume_ops
            .clone
            .as_ref()
            .filter(|c| c.snapshot.is_empty() && c.generation > 0)?;
        let store = self.cow.clone()?;
        let volumes: Vec<String> = s.runtime.volumes.iter().map(|v| v.name.clone()).collect();
        if volumes
            .iter()
            .all(|v| store.volume_path(&s.network, &s.node, v).exists())
        {
            return None;
        }
        Some(
            self.clone_snapshot(&store, &node_key(&s.network, &s.node), c, volumes)
                .await,
        )
    }

    async fn clone_snapshot(
        &self,
        store: &Arc<super::cow::Store>,
        key: &str,
        c: &super::spec::CloneFrom,
        volumes: Vec<String>,
    ) -> Result<CloneSnapshot, String> {
        let source = node_key(&c.network, &c.node);
        let mut out = CloneSnapshot {
            id: String::new(),
            observed: Vec::new(),
            measurements: Vec::new(),
        };
        let source_lock = self.snapshot_lock(&source);
        let _held = source_lock.lock().await;
        let (st, n, d, g) = (
            store.clone(),
            c.network.clone(),
            c.node.clone(),
            c.generation,
        );
        if let Some(m) = on_store(move || st.snapshot_of_generation(&n, &d, g)).await? {
            out.id = m.id;
            return Ok(out);
        }
        self.snapshot_hook(
            &source,
            &format!("a clone for {key}"),
            &format!("before the snapshot of {source}"),
            &mut out.observed,
            &mut out.measurements,
        )
        .await;
        let (st, n, d, g) = (
            store.clone(),
            c.network.clone(),
            c.node.clone(),
            c.generation,
        );
        let (m, fresh) = on_store(move || st.snapshot_for_generation(&n, &d, &volumes, g)).await?;
        if fresh {
            out.observed.push(m.taken_note(&format!(" of {source}")));
            out.measurements
                .push(("volume_snapshot_seconds".into(), m.took_seconds));
        }
        out.id = m.id;
        Ok(out)
    }

    /// The node's egress limits, then what runs in it (started, restarted when its spec
    /// changed or its namespace was made again). Returns what is there, the writes and
    /// measurements.
    async fn ensure_run(
        &self,
        s: &NodeSpec,
        fresh_namespace: bool,
        resolved: Option<Result<CloneSnapshot, String>>,
    ) -> Result<(Vec<String>, usize, Vec<(String, f64)>), String> {
        let key = node_key(&s.network, &s.node);
        let path = namespaces::path_of(&names::netns(
            &self.networks.config.netns_prefix,
            &s.network,
            &s.node,
        ));
        // A namespace made just now has no limits to remove.
        if !(fresh_namespace && s.egress.is_empty()) {
            weft_noderun::shape(&path, names::NODE_IF, &s.egress)
                .await
                .map_err(|e| format!("egress limits: {e}"))?;
        }
        let mut observed = Vec::new();
        for l in &s.egress {
            observed.push(format!(
                "egress {} bit/s to {}",
                l.bits_per_second,
                l.destinations.join(",")
            ));
        }
        // Relays first: a replica's first start copies its source through one.
        let relays = self
            .relays
            .ensure(
                &key,
                &path,
                s.addresses.first().map(|a| a.cidr.addr),
                &s.relays,
            )
            .await?;
        observed.extend(relays);
        let before = self.supervisor.status(&key);
        let r = &s.runtime;
        let mut measurements = Vec::new();
        let volumes = self
            .ensure_pool_volumes(
                s,
                before.is_some(),
                &mut observed,
                &mut measurements,
                resolved,
            )
            .await;
        if let Err(e) = volumes {
            // Processes stopped for a sync that failed are started again on the old
            // volume (never swapped: the rename is the last step); the error is reported.
            if before.is_some() && self.supervisor.status(&key).is_none() {
                let _ = self.supervisor.ensure(&self.run_of(s, &key)).await;
            }
            return Err(e);
        }
        if r.image.is_empty() && r.command.is_empty() && r.volumes.is_empty() {
            // Nothing runs: no directory, no cgroup (a thousand idle nodes stay cheap).
            if before.is_some() {
                self.supervisor
                    .remove(&key)
                    .await
                    .map_err(|e| format!("stopping the node's processes: {e}"))?;
            }
            observed.push("nothing to run".into());
            if r.node_type == "vm" {
                observed.push(weft_noderun::VM_NOTE.into());
            }
            let changes = usize::from(before.is_some()) + measurements.len();
            return Ok((observed, changes, measurements));
        }
        if fresh_namespace && before.is_some() {
            // Its processes are in the namespace that was replaced.
            self.supervisor
                .remove(&key)
                .await
                .map_err(|e| format!("stopping the node's processes: {e}"))?;
        }
        let run = self.run_of(s, &key);
        let st = self
            .supervisor
            .ensure(&run)
            .await
            .map_err(|e| format!("running the node: {e}"))?;
        let restarted = lock(&self.restarts_seen)
            .insert(key.clone(), st.restarts)
            .is_some_and(|seen| st.restarts > seen);
        // A restart, and each volume operation done (snapshot, clone, sync, conversion:
        // one measurement each).
        let changes = usize::from(
            restarted
                || before.as_ref().map(|b| (b.generation, b.pid)) != Some((st.generation, st.pid)),
        ) + measurements.len();
        match st.pid {
            Some(pid) => observed.push(format!(
                "{} pid {pid}{} ({} restarts)",
                st.profile.as_deref().unwrap_or("command"),
                if st.running { " running" } else { " exited" },
                st.restarts
            )),
            None => observed.push("nothing to run".into()),
        }
        observed.extend(st.notes.iter().cloned());
        // Volumes: served to the mirrors, or copied from the source.
        let node_dir = self.node_root.join(&s.network).join(&s.node);
        let volume_names: Vec<String> = r.volumes.iter().map(|v| v.name.clone()).collect();
        let procs = st.cgroup_paths.first().map(|d| d.join("cgroup.procs"));
        observed.extend(
            self.volumes
                .export(
                    &key,
                    &node_dir,
                    &volume_names,
                    s.volume_export
                        .as_ref()
                        .map(|(p, peers)| (*p, peers.as_slice())),
                    procs.as_deref(),
                )
                .await?,
        );
        if let Some((source, interval, generation)) = s.volume_sync {
            // A copy that fails (the source not serving yet) leaves the node as it is and
            // is tried again at the next apply; the status says why.
            match self
                .volumes
                .sync(&key, &node_dir, &volume_names, source, interval, generation)
                .await
            {
                Ok(o) => observed.extend(o),
                Err(e) => observed.push(format!("volume copy failed: {e}")),
            }
        }
        // A replica: how far behind its source it is.
        if let (Some(server), Some(addr)) = (
            super::lag::Server::of_image(&r.image).filter(|_| r.image.ends_with("+replica")),
            s.addresses.first().map(|a| a.cidr.addr),
        ) && let Some(super::relay::RelaySpec::Import { local_port, .. }) = s
            .relays
            .iter()
            .find(|x| matches!(x, super::relay::RelaySpec::Import { .. }))
        {
            let port = r.ports.first().copied().unwrap_or(*local_port);
            let source = std::net::SocketAddr::from(([127, 0, 0, 1], *local_port));
            let replica = std::net::SocketAddr::new(addr, port);
            observed.push(
                match super::lag::measure(&run.netns, server, replica, source).await {
                    Ok(Some(d)) => format!("replication lag {} ms", d.as_millis()),
                    Ok(None) => format!(
                        "replication lag more than {} ms",
                        super::lag::LAG_BOUND.as_millis()
                    ),
                    Err(e) => format!("replication lag unknown: {e}"),
                },
            );
        }
        Ok((observed, changes, measurements))
    }

    /// What runs in node `s` (key `key`), for the supervisor.
    fn run_of(&self, s: &NodeSpec, key: &str) -> NodeRun {
        let r = &s.runtime;
        NodeRun {
            key: key.to_owned(),
            netns: namespaces::path_of(&names::netns(
                &self.networks.config.netns_prefix,
                &s.network,
                &s.node,
            )),
            node_type: r.node_type.clone(),
            image: r.image.clone(),
            command: r.command.clone(),
            env: r.env.clone(),
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            volumes: r.volumes.clone(),
            listen: s.addresses.iter().map(|a| a.cidr.addr).collect(),
            ports: r.ports.clone(),
        }
    }

    /// The node's firewall socket, opened (with its event watch) on first use or when
    /// the namespace was made again.
    /// `opened`: the sockets, when the namespace was made just now (opened inside it then).
    async fn firewall(
        &self,
        key: &str,
        path: &Path,
        opened: Option<NamespaceSockets>,
        steps: &Steps,
    ) -> Result<Arc<Mutex<NamespaceFirewall>>, String> {
        if let Some(f) = lock(&self.firewalls).get(key)
            && lock(&f.socket).still_names(path)
            && !f.watch.is_finished()
        {
            return Ok(f.socket.clone());
        }
        let p = path.to_owned();
        let t = Instant::now();
        let (socket, mut watcher) = match opened {
            Some(o) => NamespaceFirewall::from_sockets(o, path),
            None => {
                tokio::task::spawn_blocking(move || NamespaceFirewall::open_with_watcher(Some(&p)))
                    .await
                    .map_err(|e| format!("firewall: {e}"))?
            }
        }
        .map_err(|e| format!("firewall: {e}"))?;
        steps.add("firewall_open", t);
        let socket = Arc::new(Mutex::new(socket));
        let tx = self.signals.clone();
        let k = key.to_owned();
        let watch = tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(ev) if ev.needs_check() => {
                        let what = match (&ev.kind, ev.handle) {
                            (kind, Some(h)) => format!("nftables: {kind:?} (rule handle {h})"),
                            (kind, None) => format!("nftables: {kind:?}"),
                        };
                        let signal = DriftSignal {
                            kind: NETWORK_NODE,
                            drift: Drift {
                                key: k.clone(),
                                what,
                            },
                            at: Instant::now() - ev.received.elapsed(),
                        };
                        if tx.try_send(signal).is_err() {
                            tracing::debug!(key = %k, "drift signal dropped (channel full): left to the resync");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, "nftables watch ended; drift is found at the resync");
                        return;
                    }
                }
            }
        });
        lock(&self.firewalls).insert(
            key.to_owned(),
            NodeFirewall {
                socket: socket.clone(),
                watch,
            },
        );
        Ok(socket)
    }

    /// Makes the node's table `inet weft` its ruleset; returns the writes (0 or 1 batch).
    /// `hand`: the node keeps hand changes; rules changed by hand in a table that still
    /// has weft's shape are kept and noted there, not repaired (a table whose shape was
    /// changed is rebuilt: with the rules it had, or the spec's when it has none left).
    async fn ensure_firewall(
        &self,
        s: &NodeSpec,
        opened: Option<NamespaceSockets>,
        steps: &Steps,
        hand: Option<&mut Hand>,
    ) -> Result<usize, String> {
        let key = node_key(&s.network, &s.node);
        let path = namespaces::path_of(&names::netns(
            &self.networks.config.netns_prefix,
            &s.network,
            &s.node,
        ));
        let socket = self.firewall(&key, &path, opened, steps).await?;
        let ruleset = s.firewall.clone();
        let Some(hand) = hand else {
            let t = Instant::now();
            let report = tokio::task::spawn_blocking(move || lock(&socket).apply(&ruleset))
                .await
                .map_err(|e| format!("firewall: {e}"))?
                .map_err(|e| format!("firewall: {e}"))?;
            steps.add("firewall_apply", t);
            return Ok(usize::from(report.changed));
        };
        let (changed, kept) = tokio::task::spawn_blocking(move || {
            let mut fw = lock(&socket);
            let observed = fw.read()?;
            let drift = weft_firewall::drift(&ruleset, &observed);
            if drift.is_empty() {
                return Ok((false, None));
            }
            match observed.live_rules() {
                Some(live)
                    if !(live.foreign.is_empty()
                        && weft_firewall::same_rules(&live.ruleset, &ruleset)) =>
                {
                    // Changed by hand: kept. Built-in rules missing are put back when
                    // nothing foreign would be flushed with them.
                    let changed = live.foreign.is_empty() && fw.apply(&live.ruleset)?.changed;
                    Ok((changed, Some((live, drift))))
                }
                _ => Ok((fw.apply(&ruleset)?.changed, None)),
            }
        })
        .await
        .map_err(|e| format!("firewall: {e}"))?
        .map_err(|e: weft_firewall::Error| format!("firewall: {e}"))?;
        if let Some((live, drift)) = kept {
            hand.changes.extend(
                drift
                    .into_iter()
                    .filter(|d| !d.starts_with("built-in"))
                    .map(|d| format!("firewall: {d}")),
            );
            hand.rules = Some(live.ruleset);
            hand.foreign_rules = live.foreign;
        }
        Ok(usize::from(changed))
    }

    /// `s` with the addresses its node has now, when they were changed by hand (noted in
    /// `hand`); `s` itself otherwise, or when they cannot be read (the apply finds why).
    async fn kept_addresses(&self, s: &NodeSpec, hand: &mut Hand) -> NodeSpec {
        let path = namespaces::path_of(&names::netns(
            &self.networks.config.netns_prefix,
            &s.network,
            &s.node,
        ));
        let live = async {
            let h = self.networks.conns.get(Some(&path)).await.ok()?;
            let eth0 = links::by_name(&h, names::NODE_IF).await.ok()??;
            links::addresses(&h, eth0.index).await.ok()
        }
        .await;
        let Some(live) = live else {
            return s.clone();
        };
        let mut changes = Vec::new();
        for a in &s.addresses {
            if !live.contains(&a.cidr) {
                changes.push(format!("address {} removed", a.cidr));
            }
        }
        for c in &live {
            if !s.addresses.iter().any(|a| a.cidr == *c) {
                changes.push(format!("address {c} added"));
            }
        }
        if changes.is_empty() {
            return s.clone();
        }
        hand.changes.extend(changes);
        let mut eff = s.clone();
        eff.addresses = live
            .iter()
            .map(|c| crate::realize::DesiredAddress {
                cidr: *c,
                gateway: s
                    .addresses
                    .iter()
                    .find(|a| a.cidr == *c)
                    .and_then(|a| a.gateway),
            })
            .collect();
        hand.addresses = Some(live);
        eff
    }
}

/// What a node that keeps hand changes has where it differs from its spec.
#[derive(Debug, Default)]
struct Hand {
    addresses: Option<Vec<crate::realize::Cidr>>,
    rules: Option<weft_firewall::Ruleset>,
    foreign_rules: Vec<String>,
    changes: Vec<String>,
}

impl Hand {
    /// The report's form: everything the node has (addresses and rules), so that the
    /// controller can make it the desired state; `None` when nothing was changed by hand.
    fn into_wire(self, s: &NodeSpec) -> Option<weft_proto::v1::NodeHandChanges> {
        if self.changes.is_empty() {
            return None;
        }
        Some(weft_proto::v1::NodeHandChanges {
            addresses_changed: self.addresses.is_some(),
            firewall_changed: self.rules.is_some(),
            addresses: match self.addresses {
                Some(a) => a.iter().map(ToString::to_string).collect(),
                None => s.addresses.iter().map(|a| a.cidr.to_string()).collect(),
            },
            firewall: super::spec::wire_rules(self.rules.as_ref().unwrap_or(&s.firewall)),
            foreign_rules: self.foreign_rules,
            changes: self.changes,
        })
    }
}

/// IPv6 link-local (`fe80::/10`, every interface has one) or loopback.
fn is_link_local(addr: &std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_loopback(),
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
    }
}

fn node_key(network: &str, node: &str) -> String {
    format!("{network}/{node}")
}

/// Makes the namespaces of `paths` on `workers` threads at once, with the nodes' sockets
/// opened inside (the host-event watch's when `events`); results in order.
async fn create_many(
    paths: Vec<PathBuf>,
    workers: usize,
    events: Option<HostEvents>,
) -> Vec<Result<Created<NodeSockets>, String>> {
    let n = paths.len();
    if n == 0 {
        return Vec::new();
    }
    let runtime = tokio::runtime::Handle::current();
    let per = n.div_ceil(workers.max(1));
    let mut pending = Vec::new();
    for (c, chunk) in paths.chunks(per).enumerate() {
        let chunk: Vec<PathBuf> = chunk.to_vec();
        let rt = runtime.clone();
        let events = events.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("weft-netns-make-{c}"))
            .spawn(move || {
                let mut out = Vec::with_capacity(chunk.len());
                let home = match namespaces::home() {
                    Ok(h) => h,
                    Err(e) => {
                        let msg = format!("opening the agent's namespace: {e}");
                        out.extend(chunk.iter().map(|_| Err(msg.clone())));
                        let _ = tx.send(out);
                        return;
                    }
                };
                for (i, p) in chunk.iter().enumerate() {
                    let inside = || {
                        Ok(NodeSockets {
                            firewall: NamespaceFirewall::sockets_here()?,
                            events: events.as_ref().map(HostEvents::socket_here).transpose()?,
                        })
                    };
                    match namespaces::create(p, &home, Some(&rt), inside) {
                        Ok(c) => out.push(Ok(c)),
                        Err((e, fatal)) => {
                            out.push(Err(e.to_string()));
                            if fatal {
                                // This thread is in the wrong namespace: it makes no more.
                                let msg = format!("not made: {e}");
                                out.extend(chunk[i + 1..].iter().map(|_| Err(msg.clone())));
                                break;
                            }
                        }
                    }
                }
                let _ = tx.send(out);
            });
        pending.push((spawned.is_ok(), chunk_len(&paths, per, c), rx));
    }
    let mut all = Vec::with_capacity(n);
    for (ok, len, rx) in pending {
        match (ok, rx.await) {
            (true, Ok(v)) => all.extend(v),
            _ => all.extend((0..len).map(|_| Err("the namespace thread failed".to_string()))),
        }
    }
    all
}

fn chunk_len(paths: &[PathBuf], per: usize, c: usize) -> usize {
    paths.len().saturating_sub(c * per).min(per)
}

/// Where a node's namespace came from in this reconcile.
enum Ns {
    /// Made just now: empty but for `lo` and `eth0` to come.
    Fresh(Box<Created<()>>),
    Existing,
}

impl Networks {
    /// Brings one node about. `bridge`: the network's bridge on this host.
    async fn ensure_node(
        &self,
        s: &NodeSpec,
        bridge: Option<LinkState>,
        ns: Ns,
        steps: &Steps,
    ) -> Result<(Vec<String>, usize), String> {
        let key = node_key(&s.network, &s.node);
        let path = namespaces::path_of(&names::netns(
            &self.config.netns_prefix,
            &s.network,
            &s.node,
        ));
        let veth = names::host_veth(&s.network, &s.node);
        lock(&self.nodes).insert(
            key.clone(),
            NodeObjects {
                netns: path.clone(),
                host_veth: veth.clone(),
            },
        );
        let bridge = bridge.ok_or_else(|| {
            format!(
                "network {:?} has no bridge on this host (its network-segment resource is missing or failed)",
                s.network
            )
        })?;
        let mtu = bridge.mtu;
        let e = |e: links::LinkError| e.to_string();
        let (file, nh, _task, fresh): (File, Handle, Option<tokio::task::JoinHandle<()>>, bool) =
            match ns {
                Ns::Fresh(c) => {
                    let (conn, handle) = c
                        .connection
                        .ok_or("no netlink connection into the new namespace")?;
                    (c.file, handle, Some(tokio::spawn(conn)), true)
                }
                Ns::Existing => {
                    let file = File::open(&path)
                        .map_err(|e| format!("opening {}: {e}", path.display()))?;
                    let h = self
                        .conns
                        .get(Some(&path))
                        .await
                        .map_err(|e| e.to_string())?;
                    (file, h, None, false)
                }
            };
        let mut changes = 0;
        let h = &self.host;
        let mut host_end = if fresh {
            None
        } else {
            links::by_name(h, &veth).await.map_err(e)?
        };
        let mut eth0 = if fresh {
            None
        } else {
            links::by_name(&nh, names::NODE_IF).await.map_err(e)?
        };
        if host_end.is_some() && eth0.is_none() {
            // The peer is gone (moved or the namespace replaced): make the pair again.
            let l = host_end.take().expect("checked");
            links::delete(h, l.index, &veth).await.map_err(e)?;
            changes += 1;
        }
        match &host_end {
            None => {
                if !fresh && let Some(stale) = links::by_name(h, &veth).await.map_err(e)? {
                    links::delete(h, stale.index, &veth).await.map_err(e)?;
                }
                let t = Instant::now();
                links::add_node_veth(h, &veth, file.as_raw_fd(), mtu, bridge.index)
                    .await
                    .map_err(e)?;
                steps.add("veth_add", t);
                changes += 1;
                eth0 = None;
            }
            Some(l) => {
                if !l.up || l.mtu != mtu || l.controller != Some(bridge.index) {
                    links::set(h, l.index, &veth, true, Some(mtu), Some(bridge.index))
                        .await
                        .map_err(e)?;
                    changes += 1;
                }
            }
        }
        let t = Instant::now();
        let eth0 = match eth0 {
            Some(l) => l,
            None => links::by_name(&nh, names::NODE_IF)
                .await
                .map_err(e)?
                .ok_or_else(|| {
                    format!("{} did not appear in {}", names::NODE_IF, path.display())
                })?,
        };
        steps.add("eth0_read", t);
        let t = Instant::now();
        if fresh {
            links::set(&nh, LOOPBACK_INDEX, "lo", true, None, None)
                .await
                .map_err(e)?;
            changes += 1;
        } else if let Some(lo) = links::by_name(&nh, "lo").await.map_err(e)?
            && !lo.up
        {
            links::set(&nh, lo.index, "lo", true, None, None)
                .await
                .map_err(e)?;
            changes += 1;
        }
        steps.add("lo_up", t);
        let t = Instant::now();
        if !eth0.up || eth0.mtu != mtu {
            // A node without IPv6 addresses gets no IPv6 link-local address either (it has
            // no use for one, and its duplicate address detection and MLD reports would be
            // flooded to every port of the bridge).
            let link_local = s.addresses.iter().any(|a| a.cidr.addr.is_ipv6());
            links::set_up(&nh, eth0.index, names::NODE_IF, Some(mtu), link_local)
                .await
                .map_err(e)?;
            changes += 1;
        }
        steps.add("eth0_up", t);
        let t = Instant::now();
        let have = if fresh && changes > 0 && eth0.mtu == mtu {
            Vec::new()
        } else {
            links::addresses(&nh, eth0.index).await.map_err(e)?
        };
        // Old addresses go first: removing a primary IPv4 address removes the secondaries
        // of its subnet with it (a new address in the same subnet would be one).
        for c in have
            .iter()
            .filter(|c| !s.addresses.iter().any(|a| a.cidr == **c))
        {
            links::del_address(&nh, eth0.index, *c).await.map_err(e)?;
            changes += 1;
        }
        for a in &s.addresses {
            if !have.contains(&a.cidr) {
                links::add_address(&nh, eth0.index, a.cidr)
                    .await
                    .map_err(e)?;
                changes += 1;
            }
        }
        steps.add("addresses", t);
        let t = Instant::now();
        let gateways = if fresh {
            Vec::new()
        } else {
            links::default_gateways(&nh, eth0.index).await.map_err(e)?
        };
        for g in s.addresses.iter().filter_map(|a| a.gateway) {
            if !gateways.contains(&g) {
                links::replace_default_route(&nh, eth0.index, g)
                    .await
                    .map_err(e)?;
                changes += 1;
            }
        }
        steps.add("routes", t);
        let mut observed: Vec<String> = s.addresses.iter().map(|a| a.cidr.to_string()).collect();
        observed.push(format!("netns {}", path.display()));
        observed.push(format!("{} up", names::NODE_IF));
        Ok((observed, changes))
    }

    async fn remove_node(&self, key: &str, o: &NodeObjects) -> Result<usize, String> {
        let mut changes = 0;
        self.conns.forget(Some(&o.netns));
        // The veth is not deleted on its own: deleting a link waits for the kernel's RCU
        // grace period under RTNL (~20 ms, one at a time); the namespace's teardown
        // removes its veths in one batch once the last handle into it is closed (ours
        // are, by now; the host-event watch lets go after this apply). Only a veth whose
        // peer is not in the namespace any more is deleted here.
        if !o.netns.exists()
            && let Some(l) = links::by_name(&self.host, &o.host_veth)
                .await
                .map_err(|e| e.to_string())?
        {
            links::delete(&self.host, l.index, &o.host_veth)
                .await
                .map_err(|e| e.to_string())?;
            changes += 1;
        }
        if o.netns.exists() {
            namespaces::remove(&o.netns).map_err(|e| e.to_string())?;
            changes += 1;
        }
        lock(&self.nodes).remove(key);
        Ok(changes)
    }
}

fn report(key: String, r: Result<(Vec<String>, usize), String>) -> ResourceReport {
    match r {
        Ok((observed, changes)) => ResourceReport {
            key,
            observed,
            changes,
            ..Default::default()
        },
        Err(e) => ResourceReport {
            key,
            error: Some(e),
            ..Default::default()
        },
    }
}

impl Reconciler for NodeReconciler {
    fn kind(&self) -> &'static str {
        NETWORK_NODE
    }

    fn reconcile<'a>(
        &'a self,
        desired: &'a [DesiredResource],
        scope: Scope<'a>,
    ) -> BoxFuture<'a, Vec<ResourceReport>> {
        Box::pin(async move {
            let net = &self.networks;
            let started = Instant::now();
            let steps = Steps::default();
            let steps = &steps;
            self.sweep_removed_veths().await;
            let mut out = Vec::new();
            let mut todo: Vec<NodeSpec> = Vec::new();
            for r in desired {
                if let Scope::Only(keys) = scope
                    && !keys.contains(&r.key)
                {
                    continue;
                }
                let spec = match &r.spec {
                    Spec::NetworkNode(n) if node_key(&n.network, &n.node) == r.key => {
                        NodeSpec::from_wire(n, 0)
                    }
                    Spec::NetworkNode(n) => Err(format!(
                        "the resource key {:?} is not its node {:?}",
                        r.key,
                        node_key(&n.network, &n.node)
                    )),
                    _ => Err("the spec is not a network node".into()),
                };
                match spec {
                    Err(e) => out.push(report(r.key.clone(), Err(e))),
                    Ok(s) => {
                        if scope == Scope::Changed
                            && let Some((last, rep)) = lock(&self.last).get(&r.key)
                            && *last == s
                            && rep.error.is_none()
                        {
                            let mut rep = ResourceReport {
                                changes: 0,
                                ..rep.clone()
                            };
                            // Scheduled snapshots come between applies.
                            if let Some(store) = &self.cow {
                                (rep.snapshots, rep.syncs) = store.report(&s.network, &s.node);
                            }
                            out.push(rep);
                            continue;
                        }
                        todo.push(s);
                    }
                }
            }
            // Bridges, once per network.
            let mut bridges: BTreeMap<String, Option<LinkState>> = BTreeMap::new();
            for s in &todo {
                if !bridges.contains_key(&s.network) {
                    let b = links::by_name(&net.host, &names::bridge(&s.network))
                        .await
                        .ok()
                        .flatten();
                    bridges.insert(s.network.clone(), b);
                }
            }
            // Namespaces that are not there yet are made first, several at once.
            let paths: Vec<PathBuf> = todo
                .iter()
                .map(|s| {
                    namespaces::path_of(&names::netns(
                        &net.config.netns_prefix,
                        &s.network,
                        &s.node,
                    ))
                })
                .collect();
            let missing: Vec<usize> = (0..todo.len())
                .filter(|i| !namespaces::is_mounted(&paths[*i]))
                .collect();
            let t = Instant::now();
            let made = create_many(
                missing.iter().map(|i| paths[*i].clone()).collect(),
                net.config.workers,
                self.events.clone(),
            )
            .await;
            if !made.is_empty() {
                steps.add("netns_create_all", t);
            }
            let mut fresh: HashMap<usize, Result<Created<NodeSockets>, String>> =
                missing.into_iter().zip(made).collect();
            let jobs = todo.into_iter().enumerate().map(|(i, s)| {
                let ns = fresh.remove(&i);
                let bridge = bridges.get(&s.network).cloned().flatten();
                async move {
                    let key = node_key(&s.network, &s.node);
                    let fresh_namespace = matches!(ns, Some(Ok(_)));
                    // Hand changes are kept once this very spec is in place.
                    let keep = s.keep_hand_changes
                        && ns.is_none()
                        && lock(&self.last)
                            .get(&key)
                            .is_some_and(|(last, r)| *last == s && r.error.is_none());
                    let mut hand = Hand::default();
                    let eff = if keep {
                        self.kept_addresses(&s, &mut hand).await
                    } else {
                        s.clone()
                    };
                    // A clone of a snapshot taken now is resolved (the source's hook, the
                    // snapshot) while the node's namespace, links and firewall are made.
                    let made = async {
                        let mut opened = None;
                        let mut r = match ns {
                            Some(Err(e)) => Err(format!("making the namespace: {e}")),
                            Some(Ok(c)) => {
                                let Created {
                                    file,
                                    connection,
                                    inside,
                                } = c;
                                opened = Some(inside);
                                let c = Created {
                                    file,
                                    connection,
                                    inside: (),
                                };
                                net.ensure_node(&eff, bridge, Ns::Fresh(Box::new(c)), steps)
                                    .await
                            }
                            None => net.ensure_node(&eff, bridge, Ns::Existing, steps).await,
                        };
                        let (fw_sockets, events_socket) = match opened {
                            Some(o) => (Some(o.firewall), o.events),
                            None => (None, None),
                        };
                        if let (Some(events), Some(socket)) = (&self.events, events_socket) {
                            let path = namespaces::path_of(&names::netns(
                                &net.config.netns_prefix,
                                &s.network,
                                &s.node,
                            ));
                            // Without it the watch opens its own socket (a thread in the
                            // namespace): slower, not wrong.
                            if let Err(e) = events.adopt(&path, socket) {
                                tracing::debug!(key = %key, error = %e, "host-event socket not kept");
                            }
                        }
                        if let Ok((observed, changes)) = &mut r {
                            match self
                                .ensure_firewall(&s, fw_sockets, steps, keep.then_some(&mut hand))
                                .await
                            {
                                Ok(c) => {
                                    *changes += c;
                                    observed.push(format!(
                                        "firewall: {} inbound rules, default drop",
                                        hand.rules.as_ref().unwrap_or(&s.firewall).rules.len()
                                    ));
                                }
                                Err(e) => r = Err(e),
                            }
                        }
                        r
                    };
                    let (resolved, mut r) = futures::join!(self.resolve_clone(&s), made);
                    let mut measurements = Vec::new();
                    if let Ok((observed, changes)) = &mut r {
                        let t = Instant::now();
                        match self.ensure_run(&s, fresh_namespace, resolved).await {
                            Ok((o, c, m)) => {
                                *changes += c;
                                observed.extend(o);
                                measurements = m;
                            }
                            Err(e) => r = Err(e),
                        }
                        steps.add("run", t);
                    }
                    let mut rep = report(key, r);
                    if rep.error.is_none() {
                        rep.hand_changes = hand.into_wire(&s);
                    }
                    rep.measurements.extend(measurements);
                    if let Some(store) = &self.cow {
                        (rep.snapshots, rep.syncs) = store.report(&s.network, &s.node);
                    }
                    (s, rep)
                }
            });
            let t = Instant::now();
            let done: Vec<(NodeSpec, ResourceReport)> = futures::stream::iter(jobs)
                .buffer_unordered(net.config.in_flight.max(1))
                .collect()
                .await;
            if !done.is_empty() {
                steps.add("nodes_all", t);
            }
            {
                if let Some(reg) = &self.workloads {
                    for (s, rep) in &done {
                        if rep.error.is_none() {
                            let addrs: Vec<std::net::IpAddr> =
                                s.addresses.iter().map(|a| a.cidr.addr).collect();
                            reg.name_interface(
                                &names::host_veth(&s.network, &s.node),
                                &format!("{}.{}", s.network, s.node),
                                &addrs,
                            );
                        }
                    }
                }
                let mut last = lock(&self.last);
                for (s, rep) in done {
                    last.insert(rep.key.clone(), (s, rep.clone()));
                    out.push(rep);
                }
            }
            if !matches!(scope, Scope::Only(_)) {
                let gone: Vec<(String, NodeObjects)> = lock(&net.nodes)
                    .iter()
                    .filter(|(k, _)| !desired.iter().any(|r| &r.key == *k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let removals = gone.into_iter().map(|(key, o)| async move {
                    // Its processes and sockets keep the namespace alive: stopped first.
                    if let Err(e) = self.supervisor.remove(&key).await {
                        tracing::warn!(key = %key, error = %e, "stopping the node's processes");
                    }
                    lock(&self.firewalls).remove(&key);
                    self.relays.remove(&key);
                    self.volumes.remove(&key);
                    self.schedules.remove(&key);
                    lock(&self.snapshot_locks).remove(&key);
                    if let (Some(store), Some((network, node))) = (&self.cow, key.split_once('/')) {
                        let (store, network, node) =
                            (store.clone(), network.to_owned(), node.to_owned());
                        let node_dir = self.node_root.join(&network).join(&node);
                        let removed = tokio::task::spawn_blocking(move || {
                            if store.has_node(&network, &node)? {
                                store.remove_node(&network, &node, &node_dir)
                            } else {
                                Ok(())
                            }
                        })
                        .await;
                        match removed {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::warn!(key = %key, error = %e, "removing the node's pool volumes"),
                            Err(e) => tracing::warn!(key = %key, error = %e, "removing the node's pool volumes"),
                        }
                    }
                    lock(&self.restarts_seen).remove(&key);
                    let r = net.remove_node(&key, &o).await;
                    lock(&self.removed_veths).push((o.host_veth.clone(), Instant::now()));
                    if let Some(reg) = &self.workloads {
                        reg.unname_interface(&o.host_veth);
                    }
                    (key, r)
                });
                let removed: Vec<(String, Result<usize, String>)> = futures::stream::iter(removals)
                    .buffer_unordered(net.config.in_flight.max(1))
                    .collect()
                    .await;
                let mut last = lock(&self.last);
                for (key, r) in removed {
                    last.remove(&key);
                    out.push(match r {
                        Ok(changes) => ResourceReport {
                            key,
                            changes,
                            observed: vec!["removed".into()],
                            ..Default::default()
                        },
                        Err(e) => ResourceReport {
                            key,
                            error: Some(format!("removing: {e}")),
                            ..Default::default()
                        },
                    });
                }
            }
            net.save(NETWORK_NODE).await;
            tracing::debug!(
                nodes = out.len(),
                ms = started.elapsed().as_millis() as u64,
                steps = %steps.summary(),
                "network-node reconcile"
            );
            out.sort_by(|a, b| a.key.cmp(&b.key));
            out
        })
    }

    fn drift(&self, events: &[HostEvent]) -> Vec<Drift> {
        let nodes = lock(&self.networks.nodes);
        let by_netns: HashMap<&Path, &str> = nodes
            .iter()
            .map(|(k, o)| (o.netns.as_path(), k.as_str()))
            .collect();
        let by_veth: HashMap<&str, &str> = nodes
            .iter()
            .map(|(k, o)| (o.host_veth.as_str(), k.as_str()))
            .collect();
        node_drift(events, |e| match &e.netns {
            Some(p) => by_netns.get(p.as_path()).copied(),
            None => match &e.change {
                Change::LinkDel { name, .. } | Change::LinkNew { name, .. } => {
                    by_veth.get(name.as_str()).copied()
                }
                _ => None,
            },
        })
    }

    fn namespaces(&self) -> Vec<PathBuf> {
        self.networks.node_namespaces()
    }

    fn managed(&self) -> Vec<String> {
        lock(&self.networks.nodes).keys().cloned().collect()
    }
}

/// The drift items of node namespaces in `events`: one per node (`key_of` names the
/// node an event belongs to), its last change. Net effect per node: a later "link up" of
/// the same link clears its earlier "link down" (the host end's event when eth0 goes down,
/// up with its carrier lost, must not clear eth0's).
fn node_drift<'k>(
    events: &[HostEvent],
    key_of: impl Fn(&HostEvent) -> Option<&'k str>,
) -> Vec<Drift> {
    let mut found: BTreeMap<String, Option<String>> = BTreeMap::new();
    for e in events {
        let Some(key) = key_of(e) else { continue };
        let what = match &e.change {
            Change::LinkDel { name, .. } => Some(format!("{name} deleted")),
            Change::LinkNew {
                name, up: false, ..
            } => Some(format!("{name} set down")),
            Change::LinkNew { name, up: true, .. } => {
                if let Some(w) = found.get(key)
                    && w.as_deref() == Some(format!("{name} set down").as_str())
                {
                    found.insert(key.to_owned(), None);
                }
                continue;
            }
            Change::AddrDel { addr, prefix, .. } => {
                Some(format!("address {addr}/{prefix} removed"))
            }
            // One weft did not add (a node that keeps hand changes keeps it; others
            // lose it); weft's own are found to need nothing.
            Change::AddrNew { addr, prefix, .. } if !is_link_local(addr) => {
                Some(format!("address {addr}/{prefix} added"))
            }
            Change::RouteDel { dst, prefix: 0, .. } => {
                Some(format!("default route ({dst}/0) removed"))
            }
            Change::NetnsGone => Some("namespace removed".into()),
            Change::Overrun => Some("host events lost".into()),
            _ => None,
        };
        if let Some(w) = what {
            found.insert(key.to_owned(), Some(w));
        }
    }
    found
        .into_iter()
        .filter_map(|(key, what)| Some(Drift { key, what: what? }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(netns: Option<&str>, name: &str, up: bool) -> HostEvent {
        HostEvent {
            netns: netns.map(PathBuf::from),
            at: Instant::now(),
            change: Change::LinkNew {
                ifindex: 2,
                name: name.into(),
                up,
                kind: Some("veth".into()),
            },
        }
    }

    /// Events of node `net/b`: its namespace's, and its host end's (no namespace, by name).
    fn key(e: &HostEvent) -> Option<&'static str> {
        match (&e.netns, &e.change) {
            (Some(p), _) if p == Path::new("/run/netns/b") => Some("net/b"),
            (None, Change::LinkNew { name, .. }) if name == "wn-b" => Some("net/b"),
            _ => None,
        }
    }

    #[test]
    fn eth0_set_down_is_drift_even_when_the_host_end_reports_its_carrier_lost_after_it() {
        // `ip -n NODE link set eth0 down`: eth0's event, then the host end's (still
        // administratively up, its carrier gone).
        let events = [
            link(Some("/run/netns/b"), "eth0", false),
            link(None, "wn-b", true),
        ];
        let d = node_drift(&events, key);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].key, "net/b");
        assert_eq!(d[0].what, "eth0 set down");
    }

    #[test]
    fn eth0_set_down_then_up_again_is_no_drift() {
        let events = [
            link(Some("/run/netns/b"), "eth0", false),
            link(None, "wn-b", true),
            link(Some("/run/netns/b"), "eth0", true),
        ];
        assert!(node_drift(&events, key).is_empty());
    }

    #[test]
    fn events_of_other_namespaces_are_not_this_nodes() {
        let events = [link(Some("/run/netns/other"), "eth0", false)];
        assert!(node_drift(&events, key).is_empty());
    }
}

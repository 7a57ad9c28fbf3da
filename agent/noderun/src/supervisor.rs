//! The per-agent supervisor: one task per node running its process, restarting it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cgroup::{Hierarchies, NodeCgroup};
use crate::logfile::LogFile;
use crate::profiles::{Profile, Profiles, Ready, Step};
use crate::spawn::{self, Ids, SpawnSpec};
use crate::template::{self, Vars};
use crate::{Error, ExitInfo, NodeRun, RestartRecord, Result, RunEvent, RunStatus, VM_NOTE};

/// Restart delays: `initial`, doubling up to `max`; back to `initial` after a run that
/// lasted `reset_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Where the node groups' root (`cgroup_root`) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupParent {
    /// At the top of each hierarchy: `/sys/fs/cgroup/<ctrl>/weft/...`.
    HierarchyRoot,
    /// Under the agent's own cgroup (a delegated subtree; counts against the agent's limits).
    Own,
}

#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Node data: `<root>/<network>/<node>/{data,run,log,volumes}`.
    pub root: PathBuf,
    /// `None`: the built-in table ([`Profiles::builtin`]).
    pub profiles: Option<Profiles>,
    /// Name of the groups' root, `weft`.
    pub cgroup_root: String,
    pub cgroup_parent: CgroupParent,
    pub backoff: Backoff,
    /// Between the profile's stop signal and SIGKILL.
    pub stop_grace: Duration,
    /// Log rotation size (one old file is kept).
    pub log_max_bytes: u64,
    /// Entries kept in a node's restart log.
    pub restart_log_len: usize,
    /// `remove` deletes `<root>/<network>/<node>` too.
    pub delete_data_on_remove: bool,
    /// `ensure` waits (up to the profile's `ready_timeout`) for the readiness probe.
    pub wait_ready: bool,
    /// Capacity of the event channel (slow receivers lag, they do not block).
    pub events_capacity: usize,
}

impl SupervisorConfig {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SupervisorConfig {
            root: root.into(),
            profiles: None,
            cgroup_root: "weft".into(),
            cgroup_parent: CgroupParent::HierarchyRoot,
            backoff: Backoff::default(),
            stop_grace: Duration::from_secs(5),
            log_max_bytes: 8 << 20,
            restart_log_len: 16,
            delete_data_on_remove: false,
            wait_ready: true,
            events_capacity: 1024,
        }
    }
}

/// A prepare step with its placeholders filled in.
#[derive(Debug, Clone)]
enum Prep {
    Mkdir {
        path: PathBuf,
        owner: Option<Ids>,
        mode: Option<u32>,
    },
    Chown {
        path: PathBuf,
        owner: Ids,
        recursive: bool,
    },
    RunOnce {
        argv: Vec<String>,
        creates: PathBuf,
        timeout: Duration,
    },
    Write {
        path: PathBuf,
        content: String,
        owner: Option<Ids>,
        mode: Option<u32>,
        if_missing: bool,
    },
}

/// Everything a start needs, resolved by `ensure`.
#[derive(Debug, Clone)]
struct Plan {
    key: String,
    netns: PathBuf,
    argv: Vec<String>,
    user: Ids,
    env: BTreeMap<String, String>,
    prepare: Vec<Prep>,
    /// The readiness probe: its kind, where, and for how long.
    ready: Option<(Ready, SocketAddr, Duration)>,
    /// The profile's `before_snapshot`, rendered, and its timeout.
    before_snapshot: Option<(Vec<String>, Duration)>,
    stop_signal: i32,
    cwd: PathBuf,
}

struct Shared {
    plan: Plan,
    status: Mutex<RunStatus>,
    cgroup: NodeCgroup,
    log: LogFile,
    events: broadcast::Sender<RunEvent>,
    backoff: Backoff,
    stop_grace: Duration,
    restart_log_len: usize,
    /// The current process group, for a synchronous kill on drop.
    pgid: Mutex<Option<i32>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut RunStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn snapshot(&self) -> Option<RunStatus> {
        self.status.lock().ok().map(|s| s.clone())
    }

    fn emit(&self, e: RunEvent) {
        let _ = self.events.send(e);
    }
}

struct Node {
    spec: NodeRun,
    node_dir: PathBuf,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    cfg: SupervisorConfig,
    profiles: Profiles,
    /// The cgroup hierarchies nodes run in, or why there are none (a host without the cpu
    /// and memory controllers mounted: the supervisor is made, every node fails saying so).
    hierarchies: std::result::Result<Hierarchies, String>,
    nodes: Mutex<HashMap<String, Node>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    events: broadcast::Sender<RunEvent>,
}

impl Drop for Inner {
    /// Dropping the supervisor kills what it runs (SIGKILL, synchronously) and removes the
    /// groups; [`Supervisor::shutdown`] stops gracefully.
    fn drop(&mut self) {
        let nodes = match self.nodes.get_mut() {
            Ok(n) => std::mem::take(n),
            Err(_) => return,
        };
        for (_, node) in nodes {
            let _ = node.stop.send(true);
            kill_now(&node.shared);
            let _ = node.shared.cgroup.remove(Duration::from_secs(2));
        }
    }
}

fn kill_now(shared: &Shared) {
    if let Ok(Some(pg)) = shared.pgid.lock().map(|g| *g) {
        // SAFETY: kill(2) on the node's own process group.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
    }
    for _ in 0..3 {
        if shared.cgroup.signal_all(libc::SIGKILL) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One per agent: runs, restarts and stops the nodes' processes.
pub struct Supervisor {
    inner: Arc<Inner>,
}

/// A path component from a name: `[A-Za-z0-9._-]` kept, anything else `_`, at most 64.
fn sanitize(s: &str) -> Option<String> {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    (!out.is_empty() && out != "." && out != "..").then_some(out)
}

fn split_key(key: &str) -> Result<(String, String)> {
    let bad = || Error::BadKey(key.to_string());
    let (n, node) = key.split_once('/').ok_or_else(bad)?;
    if node.contains('/') {
        return Err(bad());
    }
    Ok((
        sanitize(n).ok_or_else(bad)?,
        sanitize(node).ok_or_else(bad)?,
    ))
}

fn io_err(key: &str, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let (key, path) = (key.to_string(), path.to_owned());
    move |source| Error::Io {
        key,
        op,
        path,
        source,
    }
}

fn mkdir(key: &str, p: &Path, mode: u32) -> Result<()> {
    std::fs::create_dir_all(p).map_err(io_err(key, "creating", p))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(key, "chmod", p))
}

/// The spec without its limits: what needs a restart when it changes.
fn process_part(r: &NodeRun) -> NodeRun {
    NodeRun {
        cpu_millis: 0,
        memory_bytes: 0,
        ..r.clone()
    }
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Result<Self> {
        let profiles = match &config.profiles {
            Some(p) => p.clone(),
            None => Profiles::builtin()?,
        };
        let cg_name = sanitize(&config.cgroup_root).ok_or_else(|| {
            Error::Cgroup(format!("bad cgroup root name {:?}", config.cgroup_root))
        })?;
        // An agent that only observes must start on a host where nodes cannot run: the
        // missing hierarchy fails each node (with this reason), not the supervisor.
        let hierarchies = Hierarchies::detect(&cg_name, config.cgroup_parent == CgroupParent::Own)
            .map_err(|e| e.to_string());
        // The root is made with the first node (an agent without nodes leaves no trace).
        let (events, _) = broadcast::channel(config.events_capacity.max(16));
        Ok(Supervisor {
            inner: Arc::new(Inner {
                cfg: config,
                profiles,
                hierarchies,
                nodes: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
                events,
            }),
        })
    }

    /// cgroup v1 or v2, as detected; `None` when no usable hierarchy is mounted
    /// ([`Supervisor::unavailable`] says why).
    pub fn cgroup_version(&self) -> Option<crate::CgroupVersion> {
        self.inner.hierarchies.as_ref().ok().map(|h| h.version)
    }

    /// Why no node can run on this host (no usable cgroup hierarchy), if so.
    pub fn unavailable(&self) -> Option<&str> {
        self.inner.hierarchies.as_ref().err().map(String::as_str)
    }

    fn hierarchies(&self) -> Result<&Hierarchies> {
        self.inner
            .hierarchies
            .as_ref()
            .map_err(|why| Error::Cgroup(format!("nodes cannot run on this host: {why}")))
    }

    pub fn events(&self) -> broadcast::Receiver<RunEvent> {
        self.inner.events.subscribe()
    }

    /// The profile `image` runs with (`None`: no profile matches, or a command node).
    pub fn profile_of(&self, image: &str) -> Option<Profile> {
        if image.is_empty() {
            return None;
        }
        self.inner.profiles.find(image).cloned()
    }

    /// Runs node `key`'s `before_snapshot` hook (its profile's) if the node runs, is ready
    /// and has one: as the node's user, inside its namespace and cgroup, bounded by the
    /// hook's timeout (killed after it). `purpose` is for its log ("a snapshot", "a sync
    /// to <node>"). `None`: nothing to run; else how long it took, or why it failed (the
    /// caller snapshots anyway).
    pub async fn before_snapshot(
        &self,
        key: &str,
        purpose: &str,
    ) -> Option<std::result::Result<Duration, String>> {
        let shared = {
            let nodes = self.inner.nodes.lock().ok()?;
            nodes.get(key)?.shared.clone()
        };
        let (argv, timeout) = shared.plan.before_snapshot.clone()?;
        if shared.snapshot().is_none_or(|s| !s.running || !s.ready) {
            return None;
        }
        let t = Instant::now();
        let r = run_once(&shared, &argv, timeout)
            .await
            .map_err(|(OnceError::Failed(m) | OnceError::Other(m))| m);
        let took = t.elapsed();
        match &r {
            Ok(()) => shared.log.note(&format!(
                "before {purpose}: {argv:?} done in {:.1} ms",
                took.as_secs_f64() * 1e3
            )),
            Err(e) => shared.log.note(&format!("before {purpose}: {e}")),
        }
        Some(r.map(|()| took))
    }

    pub fn status(&self, key: &str) -> Option<RunStatus> {
        let nodes = self.inner.nodes.lock().ok()?;
        nodes.get(key)?.shared.snapshot()
    }

    /// What node `key`'s processes use now (its cgroups), while it is supervised.
    pub fn usage(&self, key: &str) -> Option<crate::Usage> {
        let st = self.status(key)?;
        let pids: Vec<i32> = st
            .cgroup_paths
            .last()
            .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        Some(crate::cgroup::usage(
            self.cgroup_version()?,
            &st.cgroup_paths,
            &pids,
        ))
    }

    /// Keys of the nodes under supervision.
    pub fn keys(&self) -> Vec<String> {
        self.inner
            .nodes
            .lock()
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.inner.locks.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Makes the node run `run`: starts it, or restarts it if the spec changed (a change of
    /// `cpu_millis`/`memory_bytes` only is applied to the cgroup in place); an unchanged spec
    /// does nothing. With a readiness probe and `wait_ready`, waits for it (bounded).
    pub async fn ensure(&self, run: &NodeRun) -> Result<RunStatus> {
        let (network, node) = split_key(&run.key)?;
        let lock = self.key_lock(&run.key);
        let _held = lock.lock().await;

        let mut generation = 0;
        let existing = {
            let mut nodes = self.inner.nodes.lock().map_err(|_| Error::Gone {
                key: run.key.clone(),
            })?;
            match nodes.get_mut(&run.key) {
                Some(n) if n.spec == *run => {
                    return n.shared.snapshot().ok_or(Error::Gone {
                        key: run.key.clone(),
                    });
                }
                Some(n) if process_part(&n.spec) == process_part(run) => {
                    n.shared
                        .cgroup
                        .set_limits(run.cpu_millis, run.memory_bytes)?;
                    n.spec = run.clone();
                    n.shared.log.note(&format!(
                        "limits changed: cpu {} millis, memory {} bytes",
                        run.cpu_millis, run.memory_bytes
                    ));
                    return n.shared.snapshot().ok_or(Error::Gone {
                        key: run.key.clone(),
                    });
                }
                Some(_) => nodes.remove(&run.key),
                None => None,
            }
        };
        if let Some(old) = existing {
            generation = old.shared.snapshot().map_or(0, |s| s.generation) + 1;
            old.shared.log.note("spec changed: stopping for a restart");
            stop_node(old, false).await?;
        }

        let node_dir = self.inner.cfg.root.join(&network).join(&node);
        let shared = self.prepare_node(run, &network, &node, &node_dir, generation)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        if shared.plan.argv.is_empty() {
            let status = shared.snapshot();
            let mut nodes = self.inner.nodes.lock().map_err(|_| Error::Gone {
                key: run.key.clone(),
            })?;
            nodes.insert(
                run.key.clone(),
                Node {
                    spec: run.clone(),
                    node_dir,
                    shared,
                    stop: stop_tx,
                    task: None,
                },
            );
            return status.ok_or(Error::Gone {
                key: run.key.clone(),
            });
        }
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(shared.clone(), stop_rx, first_tx));
        match first_rx.await {
            Ok(Ok(_pid)) => {}
            Ok(Err(error)) => {
                let _ = task.await;
                let _ = shared.cgroup.remove(Duration::from_secs(2));
                return Err(Error::Start {
                    key: run.key.clone(),
                    error,
                });
            }
            Err(_) => {
                let _ = shared.cgroup.remove(Duration::from_secs(2));
                return Err(Error::Gone {
                    key: run.key.clone(),
                });
            }
        }
        {
            let mut nodes = self.inner.nodes.lock().map_err(|_| Error::Gone {
                key: run.key.clone(),
            })?;
            nodes.insert(
                run.key.clone(),
                Node {
                    spec: run.clone(),
                    node_dir,
                    shared: shared.clone(),
                    stop: stop_tx,
                    task: Some(task),
                },
            );
        }
        if let (true, Some((_, _, timeout))) = (self.inner.cfg.wait_ready, shared.plan.ready) {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                // Ready, or it already died once: the caller learns now (the supervisor
                // keeps restarting it; a later `Ready` event says when it is up).
                if shared
                    .snapshot()
                    .is_none_or(|s| s.ready || s.last_exit.is_some())
                {
                    break;
                }
                // A status read under a lock: cheap enough to follow the probe closely.
                tokio::time::sleep(PROBE_FIRST_PAUSE).await;
            }
        }
        shared.snapshot().ok_or(Error::Gone {
            key: run.key.clone(),
        })
    }

    /// Stops the node's process tree (its stop signal, SIGKILL after the grace), removes its
    /// cgroups, and its data if so configured. An unknown key is not an error.
    pub async fn remove(&self, key: &str) -> Result<()> {
        let lock = self.key_lock(key);
        let _held = lock.lock().await;
        let node = {
            let mut nodes = self.inner.nodes.lock().map_err(|_| Error::Gone {
                key: key.to_string(),
            })?;
            nodes.remove(key)
        };
        let Some(node) = node else { return Ok(()) };
        stop_node(node, self.inner.cfg.delete_data_on_remove).await
    }

    /// Stops every node (as `remove`).
    pub async fn shutdown(&self) -> Result<()> {
        let mut first_err = None;
        for k in self.keys() {
            if let Err(e) = self.remove(&k).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn prepare_node(
        &self,
        run: &NodeRun,
        network: &str,
        node: &str,
        node_dir: &Path,
        generation: u64,
    ) -> Result<Arc<Shared>> {
        let key = run.key.as_str();
        let cfg = &self.inner.cfg;
        let spec_err = |what: String| Error::Spec {
            key: key.to_string(),
            what,
        };
        let profile: Option<&Profile> = if run.image.is_empty() {
            None
        } else {
            Some(
                self.inner
                    .profiles
                    .find(&run.image)
                    .ok_or_else(|| Error::NoProfile {
                        key: key.to_string(),
                        image: run.image.clone(),
                    })?,
            )
        };
        for d in [
            cfg.root.join(network),
            node_dir.to_owned(),
            node_dir.join("log"),
            node_dir.join("run"),
        ] {
            mkdir(key, &d, 0o755)?;
        }
        let mut notes = Vec::new();
        if run.node_type == "vm" {
            notes.push(VM_NOTE.to_string());
        }
        let mut vars = Vars::default();
        let mut data = node_dir.join("data");
        if !run.volumes.is_empty() {
            mkdir(key, &node_dir.join("volumes"), 0o755)?;
        }
        for v in &run.volumes {
            let name = sanitize(&v.name)
                .ok_or_else(|| spec_err(format!("bad volume name {:?}", v.name)))?;
            let dir = node_dir.join("volumes").join(&name);
            if !dir.exists() {
                mkdir(key, &dir, 0o755)?;
            }
            if v.name == "data" {
                data = dir.clone();
            }
            notes.push(format!(
                "volume {}: directory {} (TDL path {:?} not mounted: nodes share the host's mount \
                 namespace){}",
                v.name,
                dir.display(),
                v.path,
                if v.size_bytes > 0 {
                    format!("; size {} bytes not enforced", v.size_bytes)
                } else {
                    String::new()
                }
            ));
            vars.volumes
                .insert(v.name.clone(), dir.to_string_lossy().into_owned());
        }
        if !data.exists() {
            mkdir(key, &data, 0o755)?;
        }
        let user_name = profile.map_or("root", |p| p.user.as_str());
        let user = spawn::lookup_user(user_name)
            .map_err(|e| spec_err(format!("user {user_name:?} of the profile: {e}")))?;
        let port = run.ports.first().copied().or(profile.and_then(|p| p.port));
        let listen: Vec<IpAddr> = if run.listen.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            run.listen.clone()
        };
        let path_str = |p: &Path| p.to_string_lossy().into_owned();
        let s = &mut vars.scalars;
        s.insert("data", path_str(&data));
        s.insert("run", path_str(&node_dir.join("run")));
        s.insert("log", path_str(&node_dir.join("log")));
        s.insert("node", path_str(node_dir));
        s.insert("network", network.to_string());
        s.insert("name", node.to_string());
        s.insert("key", run.key.clone());
        s.insert("port", port.map(|p| p.to_string()).unwrap_or_default());
        s.insert(
            "ports",
            run.ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        s.insert(
            "listen",
            listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        s.insert(
            "listen_space",
            listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        s.insert("user", user_name.to_string());
        vars.env = run.env.clone();
        vars.listen = listen.clone();

        let in_profile = |what: &str, t: &str| {
            template::render(t, &vars, true).map_err(|m| {
                spec_err(format!(
                    "profile {:?} (line {}): {what}: {m}",
                    profile.map_or("", |p| p.name.as_str()),
                    profile.map_or(0, |p| p.line)
                ))
            })
        };
        let (argv, ready) = if !run.command.is_empty() {
            let argv: Vec<String> =
                if run.command.len() == 1 && run.command[0].contains(char::is_whitespace) {
                    vec!["/bin/sh".into(), "-c".into(), run.command[0].clone()]
                } else {
                    run.command.clone()
                };
            let argv = argv
                .iter()
                .map(|a| template::render(a, &vars, false).map_err(spec_err))
                .collect::<Result<Vec<_>>>()?;
            (argv, None)
        } else if let Some(p) = profile {
            let argv = p
                .command
                .iter()
                .map(|a| in_profile("command", a))
                .collect::<Result<Vec<_>>>()?;
            if let Some(note) = argv
                .first()
                .and_then(|prog| spawn::resolve_program(prog))
                .and_then(|path| version_note(&run.image, &path))
            {
                notes.push(note);
            }
            let ready = match (p.ready, port) {
                (Some(kind), Some(port)) => {
                    let ip = run
                        .listen
                        .iter()
                        .find(|a| a.is_ipv4())
                        .or(run.listen.first())
                        .copied()
                        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    Some((kind, SocketAddr::new(ip, port), p.ready_timeout))
                }
                _ => None,
            };
            (argv, ready)
        } else {
            notes.push("nothing to run: the node has neither image nor command".into());
            (Vec::new(), None)
        };
        // Only for what a profile runs: a node's own command has no hook.
        let before_snapshot = match profile {
            Some(p) if run.command.is_empty() && !p.before_snapshot.is_empty() => Some((
                p.before_snapshot
                    .iter()
                    .map(|a| in_profile("before_snapshot", a))
                    .collect::<Result<Vec<_>>>()?,
                p.before_snapshot_timeout,
            )),
            _ => None,
        };
        let mut users: HashMap<String, Ids> = HashMap::new();
        let mut owner = |name: &Option<String>| -> Result<Option<Ids>> {
            let Some(n) = name else { return Ok(None) };
            if let Some(i) = users.get(n) {
                return Ok(Some(i.clone()));
            }
            let ids = spawn::lookup_user(n).map_err(|e| spec_err(format!("owner {n:?}: {e}")))?;
            users.insert(n.clone(), ids.clone());
            Ok(Some(ids))
        };
        let mut prepare = Vec::new();
        if let Some(p) = profile {
            for (i, st) in p.prepare.iter().enumerate() {
                let what = format!("prepare step {}", i + 1);
                prepare.push(match st {
                    Step::Mkdir {
                        path,
                        owner: o,
                        mode,
                    } => Prep::Mkdir {
                        path: in_profile(&what, path)?.into(),
                        owner: owner(o)?,
                        mode: *mode,
                    },
                    Step::Chown {
                        path,
                        owner: o,
                        recursive,
                    } => Prep::Chown {
                        path: in_profile(&what, path)?.into(),
                        owner: owner(&Some(o.clone()))?.unwrap_or_else(|| user.clone()),
                        recursive: *recursive,
                    },
                    Step::RunOnce {
                        argv,
                        creates,
                        timeout,
                    } => Prep::RunOnce {
                        argv: argv
                            .iter()
                            .map(|a| in_profile(&what, a))
                            .collect::<Result<_>>()?,
                        creates: in_profile(&what, creates)?.into(),
                        timeout: *timeout,
                    },
                    Step::Write {
                        path,
                        template,
                        owner: o,
                        mode,
                        if_missing,
                    } => Prep::Write {
                        path: in_profile(&what, path)?.into(),
                        content: in_profile(&what, template)?,
                        owner: owner(o)?,
                        mode: *mode,
                        if_missing: *if_missing,
                    },
                });
            }
        }

        let rel = Path::new(network).join(node);
        let cgroup = NodeCgroup::create(self.hierarchies()?, &rel)?;
        // Processes already in the group were started by an earlier agent that ended
        // without stopping them (killed): they hold the node's ports and data, so they go
        // before the node starts again under this supervisor.
        if cgroup.signal_all(libc::SIGKILL) > 0 {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !cgroup.pids().is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::warn!(key = %key, "processes of an earlier agent were still in the node's cgroup: killed");
        }
        if let Err(e) = cgroup.set_limits(run.cpu_millis, run.memory_bytes) {
            let _ = cgroup.remove(Duration::from_secs(1));
            return Err(e);
        }
        let log_name = profile.map_or("command", |p| p.name.as_str());
        let log_path = node_dir.join("log").join(format!("{log_name}.log"));
        let log = LogFile::open(&log_path, cfg.log_max_bytes)
            .map_err(io_err(key, "opening", &log_path))?;
        let status = RunStatus {
            key: run.key.clone(),
            node_type: run.node_type.clone(),
            profile: profile.map(|p| p.name.clone()),
            argv: argv.clone(),
            pid: None,
            running: false,
            ready: false,
            restarts: 0,
            generation,
            last_exit: None,
            last_error: None,
            restart_log: Vec::new(),
            notes,
            log_path,
            data_dir: data.clone(),
            cgroup_paths: cgroup.dirs.clone(),
        };
        let plan = Plan {
            key: run.key.clone(),
            netns: run.netns.clone(),
            argv,
            user,
            env: run.env.clone(),
            prepare,
            ready,
            before_snapshot,
            stop_signal: profile.map_or(libc::SIGTERM, |p| p.stop_signal),
            cwd: node_dir.to_owned(),
        };
        Ok(Arc::new(Shared {
            plan,
            status: Mutex::new(status),
            cgroup,
            log,
            events: self.inner.events.clone(),
            backoff: cfg.backoff,
            stop_grace: cfg.stop_grace,
            restart_log_len: cfg.restart_log_len.max(1),
            pgid: Mutex::new(None),
        }))
    }
}

/// Stops a node's task (and so its process tree), removes its groups, and its data with
/// `delete_data`.
async fn stop_node(mut node: Node, delete_data: bool) -> Result<()> {
    let _ = node.stop.send(true);
    if let Some(task) = node.task.take() {
        let _ = task.await;
    }
    // Whatever is left in the group (a process that escaped its process group).
    kill_now(&node.shared);
    let res = node.shared.cgroup.remove(Duration::from_secs(5));
    if delete_data {
        let key = node.shared.plan.key.clone();
        std::fs::remove_dir_all(&node.node_dir).map_err(io_err(
            &key,
            "deleting",
            &node.node_dir,
        ))?;
        if let Some(parent) = node.node_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
    res
}

fn exit_info(st: std::process::ExitStatus, uptime: Duration) -> ExitInfo {
    use std::os::unix::process::ExitStatusExt as _;
    ExitInfo {
        code: st.code(),
        signal: st.signal(),
        at: SystemTime::now(),
        uptime,
    }
}

fn describe(e: &ExitInfo) -> String {
    match (e.code, e.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "exited".into(),
    }
}

/// Runs one node: start, wait, restart with backoff, until told to stop.
async fn supervise(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    first: oneshot::Sender<Result<u32, String>>,
) {
    let key = shared.plan.key.clone();
    let mut first = Some(first);
    let mut backoff = shared.backoff.initial;
    let mut attempt: u32 = 0;
    loop {
        let t0 = Instant::now();
        let reason;
        match start(&shared).await {
            Err(e) => {
                shared.log.note(&format!("start failed: {e}"));
                shared.update(|s| s.last_error = Some(e.clone()));
                shared.emit(RunEvent::StartFailed {
                    key: key.clone(),
                    error: e.clone(),
                });
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                    return;
                }
                reason = format!("start failed: {e}");
            }
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                if let Ok(mut g) = shared.pgid.lock() {
                    *g = Some(pid as i32);
                }
                let has_probe = shared.plan.ready.is_some();
                shared.update(|s| {
                    s.pid = Some(pid);
                    s.running = true;
                    s.ready = !has_probe;
                    s.last_error = None;
                    if attempt > 0 {
                        s.restarts += 1;
                    }
                });
                let restarts = shared.snapshot().map_or(0, |s| s.restarts);
                shared
                    .log
                    .note(&format!("started pid {pid}: {:?}", shared.plan.argv));
                if attempt == 0 {
                    shared.emit(RunEvent::Started {
                        key: key.clone(),
                        pid,
                    });
                } else {
                    shared.emit(RunEvent::Restarted {
                        key: key.clone(),
                        pid,
                        restarts,
                    });
                }
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(pid));
                }
                let cancel = Arc::new(AtomicBool::new(false));
                if let Some((kind, addr, timeout)) = shared.plan.ready {
                    tokio::spawn(probe(
                        shared.clone(),
                        pid,
                        kind,
                        addr,
                        timeout,
                        cancel.clone(),
                    ));
                }
                tokio::select! {
                    r = child.wait() => {
                        cancel.store(true, Ordering::Relaxed);
                        let info = match r {
                            Ok(st) => exit_info(st, t0.elapsed()),
                            Err(_) => ExitInfo { code: None, signal: None, at: SystemTime::now(), uptime: t0.elapsed() },
                        };
                        reason = describe(&info);
                        shared.log.note(&format!("pid {pid} ended: {reason}"));
                        // The rest of the tree goes with it: a restart starts clean.
                        // SAFETY: kill(2) on the node's own process group.
                        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                        wait_empty(&shared, Duration::from_secs(3)).await;
                        shared.update(|s| {
                            s.pid = None;
                            s.running = false;
                            s.ready = false;
                            s.last_exit = Some(info.clone());
                        });
                        shared.emit(RunEvent::Exited { key: key.clone(), code: info.code, signal: info.signal });
                    }
                    _ = stop.changed() => {
                        cancel.store(true, Ordering::Relaxed);
                        stop_tree(&shared, &mut child, pid).await;
                        return;
                    }
                }
            }
        }
        if t0.elapsed() >= shared.backoff.reset_after {
            backoff = shared.backoff.initial;
        }
        let cap = shared.restart_log_len;
        shared.update(|s| {
            s.restart_log.push(RestartRecord {
                at: SystemTime::now(),
                reason: reason.clone(),
                backoff,
            });
            let extra = s.restart_log.len().saturating_sub(cap);
            s.restart_log.drain(..extra);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {
                shared.log.note("stopped");
                shared.emit(RunEvent::Stopped { key: key.clone() });
                return;
            }
        }
        backoff = (backoff * 2).min(shared.backoff.max);
        attempt += 1;
    }
}

/// Waits (bounded) until the node's group is empty, SIGKILLing stragglers.
async fn wait_empty(shared: &Shared, bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if shared.cgroup.signal_all(libc::SIGKILL) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stop signal to the group and every process of the cgroup; SIGKILL after the grace.
async fn stop_tree(shared: &Shared, child: &mut tokio::process::Child, pid: u32) {
    let sig = shared.plan.stop_signal;
    shared
        .log
        .note(&format!("stopping pid {pid} (signal {sig})"));
    // SAFETY: kill(2) on the node's own process group.
    unsafe { libc::kill(-(pid as i32), sig) };
    let _ = shared.cgroup.signal_all(sig);
    let graceful = tokio::time::timeout(shared.stop_grace, async {
        let _ = child.wait().await;
        while !shared.cgroup.pids().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok();
    if !graceful {
        shared.log.note("grace over: SIGKILL");
        // SAFETY: as above.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let _ = shared.cgroup.signal_all(libc::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
    wait_empty(shared, Duration::from_secs(5)).await;
    if let Ok(mut g) = shared.pgid.lock() {
        *g = None;
    }
    let info = ExitInfo {
        code: None,
        signal: Some(sig),
        at: SystemTime::now(),
        uptime: Duration::ZERO,
    };
    let info = match child.try_wait() {
        Ok(Some(st)) => ExitInfo {
            uptime: Duration::ZERO,
            ..exit_info(st, Duration::ZERO)
        },
        _ => info,
    };
    shared.update(|s| {
        s.pid = None;
        s.running = false;
        s.ready = false;
        s.last_exit = Some(info);
    });
    shared.log.note("stopped");
    shared.emit(RunEvent::Stopped {
        key: shared.plan.key.clone(),
    });
}

/// The readiness probe's first pause between attempts; it doubles up to
/// [`PROBE_EAGER_PAUSE`] for [`PROBE_EAGER_FOR`], then up to [`PROBE_MAX_PAUSE`].
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(2);
const PROBE_EAGER_PAUSE: Duration = Duration::from_millis(10);
const PROBE_EAGER_FOR: Duration = Duration::from_secs(2);
const PROBE_MAX_PAUSE: Duration = Duration::from_millis(50);

/// Probes (`kind`: a TCP connect, or the server's own protocol) inside the node until one
/// succeeds, the deadline passes or `cancel`.
async fn probe(
    shared: Arc<Shared>,
    pid: u32,
    kind: Ready,
    addr: SocketAddr,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
) {
    let c = cancel.clone();
    let ok = crate::netns::run_in(&shared.plan.netns, move || {
        let deadline = Instant::now() + timeout;
        // A refused connect inside the node's own namespace costs microseconds: probed
        // often while most servers come up (at most 10 ms apart for 2 s), then every 50 ms.
        let started = Instant::now();
        let mut pause = PROBE_FIRST_PAUSE;
        while Instant::now() < deadline && !c.load(Ordering::Relaxed) {
            if crate::readiness::attempt(kind, addr) {
                return Ok(true);
            }
            std::thread::sleep(pause);
            let cap = if started.elapsed() < PROBE_EAGER_FOR {
                PROBE_EAGER_PAUSE
            } else {
                PROBE_MAX_PAUSE
            };
            pause = (pause * 2).min(cap);
        }
        Ok(false)
    })
    .await
    .unwrap_or(false);
    if !ok || cancel.load(Ordering::Relaxed) {
        if !ok {
            shared.log.note(&format!(
                "not ready: no {} answer on {addr} within {timeout:?}",
                kind.name()
            ));
        }
        return;
    }
    let mut current = false;
    shared.update(|s| {
        if s.pid == Some(pid) {
            s.ready = true;
            current = true;
        }
    });
    if current {
        shared
            .log
            .note(&format!("ready: {addr} answers ({})", kind.name()));
        shared.emit(RunEvent::Ready {
            key: shared.plan.key.clone(),
            pid,
        });
    }
}

fn open_netns(plan: &Plan) -> Result<File, String> {
    File::open(&plan.netns)
        .map_err(|e| format!("opening the namespace {}: {e}", plan.netns.display()))
}

/// Runs the prepare steps and spawns the node's process.
async fn start(shared: &Arc<Shared>) -> Result<tokio::process::Child, String> {
    let plan = &shared.plan;
    for (i, step) in plan.prepare.iter().enumerate() {
        run_step(shared, step)
            .await
            .map_err(|e| format!("prepare step {}: {e}", i + 1))?;
    }
    spawn_in_node(shared, &plan.argv)
}

/// Spawns `argv` as the node's user in its namespace and cgroup, its output copied to the
/// node's log.
fn spawn_in_node(shared: &Shared, argv: &[String]) -> Result<tokio::process::Child, String> {
    let plan = &shared.plan;
    let netns = open_netns(plan)?;
    let procs = shared.cgroup.procs_files().map_err(|e| e.to_string())?;
    let mut child = spawn::spawn(&SpawnSpec {
        argv,
        env: &plan.env,
        cwd: &plan.cwd,
        user: &plan.user,
        netns: &netns,
        cgroup_procs: &procs,
    })
    .map_err(|e| {
        format!(
            "spawning {:?}: {e}",
            argv.first().map_or("", String::as_str)
        )
    })?;
    if let Some(o) = child.stdout.take() {
        shared.log.spawn_copier(o);
    }
    if let Some(e) = child.stderr.take() {
        shared.log.spawn_copier(e);
    }
    Ok(child)
}

async fn run_step(shared: &Arc<Shared>, step: &Prep) -> Result<(), String> {
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    };
    let chown = |p: &Path, ids: &Ids, rec: bool| {
        spawn::chown(p, ids, rec).map_err(|e| format!("chown {} to {}: {e}", p.display(), ids.name))
    };
    match step {
        Prep::Mkdir { path, owner, mode } => {
            std::fs::create_dir_all(path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
            if let Some(m) = mode {
                chmod(path, *m)?;
            }
            if let Some(o) = owner {
                chown(path, o, false)?;
            }
        }
        Prep::Chown {
            path,
            owner,
            recursive,
        } => chown(path, owner, *recursive)?,
        Prep::Write {
            path,
            content,
            owner,
            mode,
            if_missing,
        } => {
            if !(*if_missing && path.exists()) {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                }
                let same = std::fs::read(path).is_ok_and(|c| c == content.as_bytes());
                if !same {
                    std::fs::write(path, content)
                        .map_err(|e| format!("writing {}: {e}", path.display()))?;
                }
                if let Some(m) = mode {
                    chmod(path, *m)?;
                }
                if let Some(o) = owner {
                    chown(path, o, false)?;
                }
            }
        }
        Prep::RunOnce {
            argv,
            creates,
            timeout,
        } => {
            if creates.exists() {
                return Ok(());
            }
            shared.log.note(&format!(
                "running once (until {} exists): {argv:?}",
                creates.display()
            ));
            run_once(shared, argv, *timeout)
                .await
                .map_err(|e| match e {
                    OnceError::Failed(m) => {
                        format!("{m}; its output is in {}", shared.log.path().display())
                    }
                    OnceError::Other(m) => m,
                })?;
            if !creates.exists() {
                return Err(format!(
                    "{:?} succeeded but did not create {}",
                    argv[0],
                    creates.display()
                ));
            }
        }
    }
    Ok(())
}

/// Why a [`run_once`] did not succeed.
enum OnceError {
    /// It ran and exited unsuccessfully.
    Failed(String),
    /// It could not be run, waited for, or did not finish in time.
    Other(String),
}

/// Runs `argv` once as the node's user in its namespace and cgroup, its output to the
/// node's log; killed (its process group) after `timeout`. A prepare step's `run_once`
/// and a profile's `before_snapshot` hook.
async fn run_once(shared: &Shared, argv: &[String], timeout: Duration) -> Result<(), OnceError> {
    let mut child = spawn_in_node(shared, argv).map_err(OnceError::Other)?;
    let pid = child.id().unwrap_or(0) as i32;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => Err(OnceError::Failed(format!("{:?} failed ({st})", argv[0]))),
        Ok(Err(e)) => Err(OnceError::Other(format!("waiting for {:?}: {e}", argv[0]))),
        Err(_) => {
            if pid > 0 {
                // SAFETY: kill(2) on the process group it leads.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            let _ = child.wait().await;
            Err(OnceError::Other(format!(
                "{:?} did not finish within {timeout:?}",
                argv[0]
            )))
        }
    }
}

/// What a node's image tag asks against what the host runs for it: profiles run the
/// host's own servers, so `postgres:16` on a host with PostgreSQL 15 runs 15. `None` when
/// the image has no version tag or the program's path shows the same major version.
pub fn version_note(image: &str, program: &str) -> Option<String> {
    let tag = image.split('+').next()?.split_once(':')?.1;
    if !tag.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let major = |v: &str| v.split(['.', '-']).next().unwrap_or(v).to_owned();
    match program
        .split('/')
        .find(|c| c.starts_with(|ch: char| ch.is_ascii_digit()))
    {
        Some(v) if major(v) == major(tag) => None,
        Some(v) => Some(format!(
            "image {image}: the host has version {v}, not {tag}; {program} runs"
        )),
        None => Some(format!(
            "image {image}: the host's {program} runs; its version is not checked against {tag}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tags_are_checked_against_the_host() {
        assert_eq!(
            version_note("postgres:16", "/usr/lib/postgresql/15/bin/postgres").as_deref(),
            Some(
                "image postgres:16: the host has version 15, not 16; /usr/lib/postgresql/15/bin/postgres runs"
            )
        );
        assert_eq!(
            version_note("postgres:15.4", "/usr/lib/postgresql/15/bin/postgres"),
            None
        );
        assert_eq!(
            version_note("postgres:16+replica", "/usr/lib/postgresql/16/bin/postgres"),
            None
        );
        assert!(
            version_note("redis:7", "/usr/bin/redis-server")
                .is_some_and(|n| n.contains("not checked against 7"))
        );
        assert_eq!(version_note("nginx:latest", "/usr/sbin/nginx"), None);
        assert_eq!(version_note("nginx", "/usr/sbin/nginx"), None);
    }

    #[test]
    fn keys_are_sanitised() {
        assert_eq!(
            split_key("net/a b").unwrap(),
            ("net".to_string(), "a_b".to_string())
        );
        assert!(split_key("net").is_err());
        assert!(split_key("net/..").is_err());
        assert!(split_key("/x").is_err());
        assert!(split_key("a/b/c").is_err());
    }
}

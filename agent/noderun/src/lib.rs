//! What a TDL node runs, and the limits around it.
//!
//! A node is a network namespace the agent made (`/run/netns/...`, with `eth0` on its
//! network's bridge). This crate runs the node's program inside it:
//!
//! - [`Supervisor`] starts the node's `command`, or its image's [profile](profiles), in the
//!   node's namespace, in its own process group and in a cgroup per node
//!   (`<cgroup root>/<network>/<node>`, v1 or v2) carrying its `cpu`/`memory` limits; keeps
//!   its output in `<root>/<network>/<node>/log/<profile>.log` (rotated); restarts it when it
//!   exits (200 ms doubling to 10 s, reset after 60 s up); stops the whole tree on removal.
//! - [`replies`] parses what the node's servers and tools answer the agent (no I/O; fuzzed).
//! - [`shape`] installs the node's egress limits (the TDL connections' `bandwidth`) as an htb
//!   qdisc with u32 filters on the node's device, by rtnetlink.
//!
//! Nodes share the host's mount namespace (a node is only a network namespace), so a
//! volume is a directory `<root>/<network>/<node>/volumes/<name>` handed to the profile as
//! `{volume:<name>}`; a volume named `data` is the profile's `{data}` (the PostgreSQL data
//! directory, the nginx docroot's parent, Redis' `dir`). A volume's `size_bytes` is not
//! enforced (the status says so).

mod cgroup;
mod logfile;
mod netns;
pub mod profiles;
pub mod readiness;
pub mod replies;
pub mod shape;
mod spawn;
mod supervisor;
mod template;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use cgroup::{CgroupVersion, Usage};
pub use profiles::{Profile, Profiles, ProfilesError};
pub use shape::{EgressLimit, ShapeError, shape};
pub use supervisor::{Backoff, CgroupParent, Supervisor, SupervisorConfig};

/// What the controller wants running in one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRun {
    /// `<network>/<node>`, for paths, logs and errors.
    pub key: String,
    /// The node's namespace file.
    pub netns: PathBuf,
    /// `vm`, `container` or `service`.
    pub node_type: String,
    /// `""` = none.
    #[serde(default)]
    pub image: String,
    /// argv; empty = the profile's; a single string with spaces is run by `/bin/sh -c`.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// 0 = no limit; 1000 = one CPU.
    #[serde(default)]
    pub cpu_millis: u32,
    /// 0 = no limit.
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// The node's addresses (a profile binds to them).
    #[serde(default)]
    pub listen: Vec<IpAddr>,
    /// The node's declared ports (the profile's default port if empty).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// A node volume: a directory under the node's data root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// Where the TDL mounts it in the node; recorded, not mounted (nodes share the host's
    /// mount namespace): the profile gets the directory as `{volume:<name>}`.
    #[serde(default)]
    pub path: String,
    /// Not enforced.
    #[serde(default)]
    pub size_bytes: u64,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Signal, if it was killed.
    pub signal: Option<i32>,
    pub at: SystemTime,
    /// How long it had run.
    pub uptime: Duration,
}

/// One line of a node's bounded restart log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    pub at: SystemTime,
    /// What ended the previous run (`exit code 1`, `signal 9`, `start failed: ...`).
    pub reason: String,
    /// The delay waited before this restart.
    pub backoff: Duration,
}

/// What runs in a node, as far as the supervisor knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub key: String,
    pub node_type: String,
    /// The profile in use (`None`: the node's own command or nothing).
    pub profile: Option<String>,
    /// The argv started (placeholders filled in).
    pub argv: Vec<String>,
    /// The main process, while one runs.
    pub pid: Option<u32>,
    pub running: bool,
    /// The profile's readiness probe passed for the current run (true at start without one).
    pub ready: bool,
    /// Restarts after the process exited (a spec change is not counted; see `generation`).
    pub restarts: u32,
    /// Bumped when `ensure` restarts the node for a changed spec.
    pub generation: u64,
    pub last_exit: Option<ExitInfo>,
    /// The last start failure (a prepare step or the spawn), if the last start failed.
    pub last_error: Option<String>,
    /// The last restarts, newest last (bounded).
    pub restart_log: Vec<RestartRecord>,
    /// Facts a reader should know (`type: vm` realization, nothing to run, volume sizes).
    pub notes: Vec<String>,
    pub log_path: PathBuf,
    pub data_dir: PathBuf,
    pub cgroup_paths: Vec<PathBuf>,
}

/// Something that happened to a node's process; for event-driven sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunEvent {
    Started {
        key: String,
        pid: u32,
    },
    Ready {
        key: String,
        pid: u32,
    },
    Exited {
        key: String,
        code: Option<i32>,
        signal: Option<i32>,
    },
    Restarted {
        key: String,
        pid: u32,
        restarts: u32,
    },
    /// A start failed (the supervisor retries with backoff).
    StartFailed {
        key: String,
        error: String,
    },
    /// Stopped by `remove` or for a spec change.
    Stopped {
        key: String,
    },
}

impl RunEvent {
    pub fn key(&self) -> &str {
        match self {
            RunEvent::Started { key, .. }
            | RunEvent::Ready { key, .. }
            | RunEvent::Exited { key, .. }
            | RunEvent::Restarted { key, .. }
            | RunEvent::StartFailed { key, .. }
            | RunEvent::Stopped { key } => key,
        }
    }
}

/// The note a `type: vm` node's status carries.
pub const VM_NOTE: &str =
    "type vm realized as a network namespace plus cgroup (no hypervisor on this host)";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("node key {0:?}: expected <network>/<node> with non-empty names")]
    BadKey(String),
    #[error("node {key}: {what}")]
    Spec { key: String, what: String },
    #[error("node {key}: no profile matches image {image:?}")]
    NoProfile { key: String, image: String },
    #[error(transparent)]
    Profiles(#[from] ProfilesError),
    #[error("node {key}: {op} {path}: {source}")]
    Io {
        key: String,
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroups: {0}")]
    Cgroup(String),
    #[error("node {key}: start failed: {error}")]
    Start { key: String, error: String },
    #[error("node {key}: the supervisor task ended")]
    Gone { key: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

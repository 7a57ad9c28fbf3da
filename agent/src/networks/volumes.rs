//! Volume replication between a source node and its mirror's copy, by rsync.
//!
//! Source side: an rsync daemon per node (on the host, `port`, open to the mirror hosts'
//! underlay addresses only) serves one read-only module per volume. Before each transfer
//! its `pre-xfer exec` takes a point-in-time copy of the volume: the node's processes are
//! stopped (SIGSTOP to its cgroup) while the volume is brought into the module's
//! directory (a local `rsync --delete`: only what changed since the last copy), then
//! continued; the transfer reads the copy.
//! Mirror side: `rsync -a --delete` of each module into `<volume>.staging` (only what
//! changed crosses), then the staging directory and the volume are swapped atomically
//! (`renameat2(RENAME_EXCHANGE)`): the mirror's node sees the old or the new state, never
//! a mix. Run at the node's apply when `generation` changed or `interval_seconds` passed.

use std::collections::HashMap;
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// What a mirror node last synced.
#[derive(Debug, Clone)]
pub struct Synced {
    pub generation: u64,
    pub at: Instant,
    pub took: Duration,
    pub bytes: u64,
}

struct Daemon {
    child: Child,
    config: String,
}

#[derive(Default)]
pub struct Volumes {
    daemons: Mutex<HashMap<String, Daemon>>,
    synced: Mutex<HashMap<String, Synced>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Swaps two directories atomically.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
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
        Err(std::io::Error::last_os_error())
    }
}

impl Volumes {
    /// Serves the volumes of node `key` (directory `node_dir`) to `peers` on `port`, or
    /// stops serving them (`None`). `procs`: the node's `cgroup.procs` file (its processes
    /// are stopped while a copy is taken).
    pub async fn export(
        &self,
        key: &str,
        node_dir: &Path,
        volumes: &[String],
        export: Option<(u16, &[String])>,
        procs: Option<&Path>,
    ) -> Result<Vec<String>, String> {
        let Some((port, peers)) = export.filter(|_| !volumes.is_empty()) else {
            lock(&self.daemons).remove(key);
            return Ok(Vec::new());
        };
        let dir = node_dir.join("replication");
        std::fs::create_dir_all(dir.join("snap")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let script = dir.join("snapshot.sh");
        let procs = procs.map(|p| p.display().to_string()).unwrap_or_default();
        let text = format!(
            r#"#!/bin/sh
# Written by weft-agent: a point-in-time copy of one volume of node {key}.
set -eu
name="$1"
src="{vols}/$name"
snap="{snap}/$name"
pids=""
if [ -n "{procs}" ] && [ -r "{procs}" ]; then pids=$(cat "{procs}"); fi
if [ -n "$pids" ]; then kill -STOP $pids 2>/dev/null || true; fi
cont() {{ if [ -n "$pids" ]; then kill -CONT $pids 2>/dev/null || true; fi; }}
trap cont EXIT
# In place: the daemon is already in the module's directory.
mkdir -p "$snap"
rsync -a --delete "$src/" "$snap/"
"#,
            vols = node_dir.join("volumes").display(),
            snap = dir.join("snap").display(),
        );
        std::fs::write(&script, text).map_err(|e| format!("{}: {e}", script.display()))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| e.to_string())?;
        let mut config = String::from(
            "use chroot = no\nread only = yes\nuid = root\ngid = root\nmax connections = 4\n",
        );
        for v in volumes {
            // The snapshot directory is made before the first transfer.
            let _ = std::fs::create_dir_all(dir.join("snap").join(v));
            config.push_str(&format!(
                "[vol-{v}]\n  path = {}\n  hosts allow = {}\n  hosts deny = *\n  pre-xfer exec = {} {v}\n",
                dir.join("snap").join(v).display(),
                peers.join(" "),
                script.display()
            ));
        }
        if let Some(d) = lock(&self.daemons).get_mut(key)
            && d.config == config
            && matches!(d.child.try_wait(), Ok(None))
        {
            return Ok(vec![format!("volumes exported on port {port}")]);
        }
        lock(&self.daemons).remove(key);
        let conf = dir.join("rsyncd.conf");
        std::fs::write(&conf, &config).map_err(|e| format!("{}: {e}", conf.display()))?;
        let child = Command::new("rsync")
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--log-file={}", dir.join("rsyncd.log").display()))
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the rsync daemon (is rsync installed?): {e}"))?;
        lock(&self.daemons).insert(key.to_owned(), Daemon { child, config });
        Ok(vec![format!("volumes exported on port {port}")])
    }

    /// Copies the source's volumes into node `key`'s when `generation` is new or
    /// `interval` passed since the last copy.
    pub async fn sync(
        &self,
        key: &str,
        node_dir: &Path,
        volumes: &[String],
        source: SocketAddr,
        interval: Duration,
        generation: u64,
    ) -> Result<Vec<String>, String> {
        if volumes.is_empty() {
            return Ok(Vec::new());
        }
        let last = lock(&self.synced).get(key).cloned();
        let due = match &last {
            None => true,
            Some(s) => s.generation != generation || s.at.elapsed() >= interval,
        };
        if due {
            let start = Instant::now();
            let mut bytes = 0;
            for v in volumes {
                bytes += self.sync_one(node_dir, v, source).await?;
            }
            lock(&self.synced).insert(
                key.to_owned(),
                Synced {
                    generation,
                    at: Instant::now(),
                    took: start.elapsed(),
                    bytes,
                },
            );
        }
        let s = lock(&self.synced).get(key).cloned();
        Ok(s.map(|s| {
            // The copy is of the source as it was when the copy began (the source's
            // processes are paused for it): that is how far behind the volumes are.
            vec![format!(
                "volumes synced (generation {}) {} s ago: {} bytes in {} ms; volume lag {} ms",
                s.generation,
                s.at.elapsed().as_secs(),
                s.bytes,
                s.took.as_millis(),
                (s.at.elapsed() + s.took).as_millis()
            )]
        })
        .unwrap_or_default())
    }

    async fn sync_one(
        &self,
        node_dir: &Path,
        volume: &str,
        source: SocketAddr,
    ) -> Result<u64, String> {
        let vol: PathBuf = node_dir.join("volumes").join(volume);
        let staging = node_dir.join("volumes").join(format!(".{volume}.staging"));
        let url = format!(
            "rsync://{}:{}/vol-{volume}/",
            match source.ip() {
                std::net::IpAddr::V6(a) => format!("[{a}]"),
                a => a.to_string(),
            },
            source.port()
        );
        let out = tokio::time::timeout(
            TRANSFER_TIMEOUT,
            Command::new("rsync")
                .args([
                    "-a",
                    "--delete",
                    "--stats",
                    "--contimeout=5",
                    "--timeout=60",
                ])
                .arg(&url)
                .arg(format!("{}/", staging.display()))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| {
            format!("copying volume {volume} from {url}: no end within {TRANSFER_TIMEOUT:?}")
        })?
        .map_err(|e| format!("running rsync: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "copying volume {volume} from {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        if !vol.exists() {
            std::fs::create_dir_all(&vol).map_err(|e| format!("{}: {e}", vol.display()))?;
        }
        exchange(&staging, &vol).map_err(|e| format!("swapping in volume {volume}: {e}"))?;
        // `Total transferred file size: 1,234 bytes`: what the copy moved, for the report
        // (0 when rsync's output says nothing readable about it; the copy itself is done).
        Ok(
            weft_noderun::replies::rsync_transferred_bytes(&out.stdout).unwrap_or_else(|e| {
                tracing::debug!(volume, error = %e, "rsync statistics");
                0
            }),
        )
    }

    pub fn remove(&self, key: &str) {
        lock(&self.daemons).remove(key);
        lock(&self.synced).remove(key);
    }
}

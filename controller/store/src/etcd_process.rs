//! A local etcd for tests, the lab and benchmarks: Debian's `etcd` binary started on
//! loopback ports of its own with a data directory of its own, one member or a cluster of
//! several, stopped (and its directory removed) on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::StoreError;

/// Where Debian puts it.
pub const ETCD_BIN: &str = "etcd";

/// One running member.
#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Member {
    /// Kills the member (SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.kill();
        self.child = Some(spawn(&self.args, &self.dir)?);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cluster of members on loopback.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<Member>,
    root: PathBuf,
}

fn free_port() -> Result<u16, StoreError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| StoreError(format!("finding a free port: {e}")))
}

fn spawn(args: &[String], dir: &Path) -> Result<Child, StoreError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .map_err(|e| StoreError(format!("etcd log in {}: {e}", dir.display())))?;
    Command::new(ETCD_BIN)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            StoreError(format!(
                "starting {ETCD_BIN}: {e} (Debian package etcd-server; `cargo xtask setup` installs it)"
            ))
        })
}

/// Whether the etcd binary is there.
pub fn available() -> bool {
    Command::new(ETCD_BIN)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl EtcdCluster {
    /// Starts `size` members under a fresh directory in `parent` and waits until the
    /// cluster serves requests. Transactions may hold up to 100,000 operations and
    /// requests 16 MiB (the controller commits allocations in groups).
    pub fn start(parent: &Path, size: usize) -> Result<Self, StoreError> {
        let root = parent.join(format!("etcd-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&root)
            .map_err(|e| StoreError(format!("making {}: {e}", root.display())))?;
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push((free_port()?, free_port()?));
        }
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("weft-{}", root.display());
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = root.join(format!("m{i}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError(format!("making {}: {e}", dir.display())))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let args: Vec<String> = [
                "--name",
                &format!("m{i}"),
                "--data-dir",
                &dir.join("data").display().to_string(),
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                &token,
                "--initial-cluster-state",
                "new",
                "--max-txn-ops",
                "100000",
                "--max-request-bytes",
                "16777216",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let child = spawn(&args, &dir)?;
            members.push(Member {
                name: format!("m{i}"),
                client_url,
                peer_url,
                dir,
                child: Some(child),
                args,
            });
        }
        let cluster = Self { members, root };
        cluster.wait_ready(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// `etcd://` URL naming every member.
    pub fn url(&self) -> String {
        let hosts: Vec<&str> = self
            .members
            .iter()
            .map(|m| m.client_url.trim_start_matches("http://"))
            .collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// Waits until a write through any member succeeds.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let deadline = Instant::now() + timeout;
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(1))
            .build();
        loop {
            let mut last = String::new();
            for m in self.members.iter().filter(|m| m.is_running()) {
                match agent
                    .post(&format!("{}/v3/kv/put", m.client_url))
                    .send_string(r#"{"key":"d2VmdC1yZWFkeQ==","value":"MQ=="}"#)
                {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                let log = self
                    .members
                    .first()
                    .and_then(|m| std::fs::read_to_string(m.dir.join("etcd.log")).ok())
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(StoreError(format!(
                    "etcd did not become ready in {timeout:?}: {last}; log: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The member that is the Raft leader now.
    pub fn leader(&self) -> Option<usize> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(1))
            .build();
        self.members.iter().position(|m| {
            m.is_running()
                && agent
                    .post(&format!("{}/v3/maintenance/status", m.client_url))
                    .send_string("{}")
                    .ok()
                    .and_then(|r| r.into_json::<serde_json::Value>().ok())
                    .is_some_and(|v| {
                        let leader = &v["leader"];
                        leader.is_string() && *leader == v["header"]["member_id"]
                    })
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

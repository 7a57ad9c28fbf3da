//! Replication relays: how a mirror node reaches its source node on another host when
//! both have the same addresses in isolated networks. The source's agent serves an
//! export (a TCP listener on the host, open to the mirror hosts' underlay addresses
//! only) and relays it into the source node; the mirror's agent serves an import
//! (127.0.0.1:port inside the mirror node) and relays it to the export. PostgreSQL
//! streaming replication and Redis `REPLICAOF` run over them.
//!
//! Sockets inside a node's namespace are made on a short-lived thread that `setns(2)`s
//! there (a socket stays in the namespace it was made in) and then run on the runtime.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Connections relayed at once per relay; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RelaySpec {
    Export {
        node_port: u16,
        listen_port: u16,
        peers: Vec<IpAddr>,
    },
    Import {
        local_port: u16,
        remote: SocketAddr,
    },
}

struct Relay {
    spec: RelaySpec,
    /// The node namespace it serves (a new namespace needs a new relay).
    netns: (u64, u64),
    task: JoinHandle<()>,
    relayed: std::sync::Arc<AtomicU64>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every relay of this host, by node key.
#[derive(Default)]
pub struct Relays {
    active: Mutex<HashMap<String, Vec<Relay>>>,
}

fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Runs `f` inside the namespace of `netns` (the agent's one helper for it).
async fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    crate::hostevents::in_netns(netns, f)
        .await
        .map_err(std::io::Error::other)?
}

async fn pipe(a: tokio::net::TcpStream, b: tokio::net::TcpStream, relayed: &AtomicU64) {
    let (mut a, mut b) = (a, b);
    if let Ok((x, y)) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
        relayed.fetch_add(x + y, Relaxed);
    }
}

async fn serve_export(
    listener: tokio::net::TcpListener,
    netns: PathBuf,
    target: SocketAddr,
    peers: Vec<IpAddr>,
    relayed: std::sync::Arc<AtomicU64>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((inbound, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if !peers.contains(&from.ip()) {
            debug!(%from, %target, "replication export: connection from a host that is not a mirror's, closed");
            continue;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (netns, relayed) = (netns.clone(), relayed.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let out = in_netns(&netns, move || {
                let s = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .await
            .and_then(tokio::net::TcpStream::from_std);
            match out {
                Ok(out) => pipe(inbound, out, &relayed).await,
                Err(e) => warn!(%target, error = %e, "replication export: node unreachable"),
            }
        });
    }
}

async fn serve_import(
    listener: tokio::net::TcpListener,
    remote: SocketAddr,
    relayed: std::sync::Arc<AtomicU64>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let relayed = relayed.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(remote))
                .await
            {
                Ok(Ok(out)) => pipe(inbound, out, &relayed).await,
                Ok(Err(e)) => warn!(%remote, error = %e, "replication import: source unreachable"),
                Err(_) => warn!(%remote, "replication import: source did not answer"),
            }
        });
    }
}

impl Relays {
    /// Makes the relays of node `key` exactly `want`. `node_addr`: the node's first
    /// address (an export's target). Returns what runs.
    pub async fn ensure(
        &self,
        key: &str,
        netns: &Path,
        node_addr: Option<IpAddr>,
        want: &[RelaySpec],
    ) -> Result<Vec<String>, String> {
        let ns_id = identity(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        let mut keep: Vec<Relay> = Vec::new();
        let old = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .unwrap_or_default();
        let mut old = old;
        for spec in want {
            if let Some(i) = old
                .iter()
                .position(|r| r.spec == *spec && r.netns == ns_id && !r.task.is_finished())
            {
                keep.push(old.swap_remove(i));
                continue;
            }
            let relayed = std::sync::Arc::new(AtomicU64::new(0));
            let task = match spec {
                RelaySpec::Export {
                    node_port,
                    listen_port,
                    peers,
                } => {
                    let addr =
                        node_addr.ok_or("a replication export on a node without an address")?;
                    // Closed first: a changed export may reuse the port.
                    old.retain(|r| !matches!(r.spec, RelaySpec::Export { listen_port: p, .. } if p == *listen_port));
                    let l = std::net::TcpListener::bind((
                        std::net::Ipv6Addr::UNSPECIFIED,
                        *listen_port,
                    ))
                    .or_else(|_| TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, *listen_port)))
                    .map_err(|e| format!("replication export on port {listen_port}: {e}"))?;
                    l.set_nonblocking(true).map_err(|e| e.to_string())?;
                    let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
                    // v4 peers arrive v4-mapped on a dual-stack socket.
                    let mut allowed = peers.clone();
                    for p in peers {
                        if let IpAddr::V4(v4) = p {
                            allowed.push(IpAddr::V6(v4.to_ipv6_mapped()));
                        }
                    }
                    tokio::spawn(serve_export(
                        l,
                        netns.to_owned(),
                        SocketAddr::new(addr, *node_port),
                        allowed,
                        relayed.clone(),
                    ))
                }
                RelaySpec::Import { local_port, remote } => {
                    old.retain(|r| !matches!(r.spec, RelaySpec::Import { local_port: p, .. } if p == *local_port));
                    let port = *local_port;
                    let l = in_netns(netns, move || {
                        let l = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    })
                    .await
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|e| format!("replication import on 127.0.0.1:{port}: {e}"))?;
                    tokio::spawn(serve_import(l, *remote, relayed.clone()))
                }
            };
            keep.push(Relay {
                spec: spec.clone(),
                netns: ns_id,
                task,
                relayed,
            });
        }
        drop(old);
        let observed = keep
            .iter()
            .map(|r| match &r.spec {
                RelaySpec::Export {
                    node_port,
                    listen_port,
                    ..
                } => format!(
                    "replication export :{listen_port} -> node :{node_port} ({} bytes relayed)",
                    r.relayed.load(Relaxed)
                ),
                RelaySpec::Import { local_port, remote } => format!(
                    "replication import 127.0.0.1:{local_port} -> {remote} ({} bytes relayed)",
                    r.relayed.load(Relaxed)
                ),
            })
            .collect();
        if !keep.is_empty() {
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.to_owned(), keep);
        }
        Ok(observed)
    }

    pub fn remove(&self, key: &str) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

//! rtnetlink connections inside other network namespaces. A netlink socket stays bound to
//! the namespace it was created in, so a short-lived thread `setns(2)`s into the namespace
//! file and creates the socket there; the connection then runs as a task on the agent's
//! runtime and the thread ends (it never has to find its way back).
//!
//! [`NetnsConnections`] keeps one connection per namespace for the agent's lifetime: a
//! burst of re-addresses on hundreds of workloads must not pay a thread, a `setns` and a
//! socket per workload per desired state. A cached connection is used only while the
//! namespace file still names the same namespace (device and inode) and its task runs.

use std::collections::HashMap;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rtnetlink::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::RealizeError;

/// A netlink handle bound to one namespace. Dropping it stops the connection's task.
pub struct NetnsHandle {
    pub handle: Handle,
    task: JoinHandle<()>,
    /// (device, inode) of the namespace file when it was opened; `None` for the agent's own.
    identity: Option<(u64, u64)>,
}

impl Drop for NetnsHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn label(netns: Option<&Path>) -> PathBuf {
    netns.map_or_else(|| PathBuf::from("(agent namespace)"), Path::to_owned)
}

fn identity(path: &Path) -> Result<(u64, u64), RealizeError> {
    let m = std::fs::metadata(path).map_err(|source| RealizeError::NetnsOpen {
        path: path.to_owned(),
        source,
    })?;
    Ok((m.dev(), m.ino()))
}

/// Opens rtnetlink in the namespace of `netns` (a netns file), or in the agent's own
/// namespace when `None`. Must be called on a tokio runtime (the connection runs on it).
pub async fn connect(netns: Option<&Path>) -> Result<NetnsHandle, RealizeError> {
    let label = label(netns);
    let file = match netns {
        Some(p) => Some(
            std::fs::File::open(p).map_err(|source| RealizeError::NetnsOpen {
                path: p.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    let identity = match &file {
        Some(f) => {
            let m = f.metadata().map_err(|source| RealizeError::NetnsOpen {
                path: label.clone(),
                source,
            })?;
            Some((m.dev(), m.ino()))
        }
        None => None,
    };
    let runtime = tokio::runtime::Handle::current();
    let (ready_tx, ready_rx) = oneshot::channel();
    let thread_label = label.clone();
    // Detached on purpose: it only creates the socket and ends.
    std::thread::Builder::new()
        .name("weft-netns-open".into())
        .spawn(move || {
            let fail = |source| RealizeError::NetnsEnter {
                path: thread_label.clone(),
                source,
            };
            if let Some(f) = &file {
                // SAFETY: setns on a valid, open namespace fd; it changes this thread only,
                // and the thread ends right after creating the socket.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(fail(std::io::Error::last_os_error())));
                    return;
                }
            }
            // The socket registers with the agent's runtime (its reactor drives it).
            let _entered = runtime.enter();
            let _ = ready_tx.send(rtnetlink::new_connection().map_err(fail));
        })
        .map_err(|source| RealizeError::NetnsEnter {
            path: label.clone(),
            source,
        })?;
    let (conn, handle, _unsolicited) = ready_rx.await.map_err(|_| RealizeError::NetnsEnter {
        path: label,
        source: std::io::Error::other("netlink thread ended before it was ready"),
    })??;
    let task = tokio::spawn(conn);
    Ok(NetnsHandle {
        handle,
        task,
        identity,
    })
}

/// One netlink connection per namespace, opened on first use and kept.
#[derive(Default)]
pub struct NetnsConnections {
    open: Mutex<HashMap<Option<PathBuf>, Arc<NetnsHandle>>>,
}

impl NetnsConnections {
    /// A handle into `netns` (`None`: the agent's own namespace). A namespace file that
    /// is gone is `NetnsOpen` with `NotFound`; one that names another namespace than
    /// when it was opened (deleted and made again) gets a new connection.
    pub async fn get(&self, netns: Option<&Path>) -> Result<Handle, RealizeError> {
        let key = netns.map(Path::to_owned);
        let now = match netns {
            Some(p) => Some(identity(p)?),
            None => None,
        };
        let usable = |c: &NetnsHandle| c.identity == now && !c.task.is_finished();
        {
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = open.get(&key).filter(|c| usable(c)) {
                return Ok(c.handle.clone());
            }
        }
        let fresh = Arc::new(connect(netns).await?);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // Another apply may have opened one meanwhile: keep that one (its handle is in use;
        // replacing it would end its connection under its users).
        if let Some(c) = open.get(&key).filter(|c| usable(c)) {
            return Ok(c.handle.clone());
        }
        let handle = fresh.handle.clone();
        open.insert(key, fresh);
        Ok(handle)
    }

    /// Closes the connection into `netns` (its namespace is gone).
    pub fn forget(&self, netns: Option<&Path>) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&netns.map(Path::to_owned));
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

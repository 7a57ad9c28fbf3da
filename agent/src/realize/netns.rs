//! An rtnetlink connection inside another network namespace. A netlink socket stays bound
//! to the namespace it was created in, so a dedicated thread `setns(2)`s into the
//! namespace file, creates the socket and drives the connection on its own current-thread
//! runtime; the caller gets the (channel-backed) handle and uses it from any runtime.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use rtnetlink::Handle;
use tokio::sync::oneshot;

use super::RealizeError;

/// A netlink handle bound to one namespace. Dropping it stops the connection's thread.
pub struct NetnsHandle {
    pub handle: Handle,
    _stop: oneshot::Sender<()>,
}

/// Opens rtnetlink in the namespace of `netns` (a netns file), or in the agent's own
/// namespace when `None`.
pub async fn connect(netns: Option<&Path>) -> Result<NetnsHandle, RealizeError> {
    let label = netns.map_or_else(|| PathBuf::from("(agent namespace)"), Path::to_owned);
    let file = match netns {
        Some(p) => Some(std::fs::File::open(p).map_err(|source| RealizeError::NetnsOpen {
            path: p.to_owned(),
            source,
        })?),
        None => None,
    };
    let (ready_tx, ready_rx) = oneshot::channel::<Result<Handle, RealizeError>>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread_label = label.clone();
    // Detached on purpose: the thread ends as soon as `stop_tx` (held by the returned
    // handle) is dropped or its connection fails; nothing needs its result.
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            let fail = |source| RealizeError::NetnsEnter { path: thread_label.clone(), source };
            if let Some(f) = &file {
                // SAFETY: setns on a valid, open namespace fd; it changes this thread only.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = ready_tx.send(Err(fail(std::io::Error::last_os_error())));
                    return;
                }
            }
            if file.is_some() {
                // Announce addresses with a gratuitous ARP whenever a link comes up, so
                // the hypervisor's neighbour cache learns a re-addressed workload at once
                // instead of after its entry for the new address times out. Per-netns
                // sysctl, read for this thread's namespace; best effort (a workload that
                // cannot be told still works, only slower to reach after a re-address).
                let _ = std::fs::write("/proc/sys/net/ipv4/conf/all/arp_notify", "1");
            }
            drop(file);
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(fail(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let (conn, handle, _unsolicited) = match rtnetlink::new_connection() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(fail(e)));
                        return;
                    }
                };
                if ready_tx.send(Ok(handle)).is_err() {
                    return;
                }
                tokio::select! {
                    _ = conn => {}
                    _ = stop_rx => {}
                }
            });
        })
        .map_err(|source| RealizeError::NetnsEnter { path: label.clone(), source })?;
    let handle = ready_rx.await.map_err(|_| RealizeError::NetnsEnter {
        path: label,
        source: std::io::Error::other("netlink thread ended before it was ready"),
    })??;
    Ok(NetnsHandle { handle, _stop: stop_tx })
}

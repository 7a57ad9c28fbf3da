//! Doing things inside a node's network namespace from the agent.
//!
//! `setns(2)` changes the calling thread only. Work that needs the namespace runs on a
//! fresh thread that enters it and then ends, so no thread of the runtime's pools is ever
//! left in a node's namespace. Sockets opened there stay in that namespace.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// Runs `f` on a new thread inside the namespace of `netns` (a `/run/netns/...` file);
/// waits for it without blocking the runtime.
pub(crate) async fn run_in<T, F>(netns: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let file = File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("weft-netns".into())
        .spawn(move || {
            // SAFETY: setns on an open namespace fd; affects this (throwaway) thread only.
            let r = if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                Err(io::Error::last_os_error())
            } else {
                f()
            };
            let _ = tx.send(r);
        })?;
    rx.await
        .map_err(|_| io::Error::other("namespace worker thread ended without an answer"))?
}

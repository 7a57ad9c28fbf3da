//! Test support: named network namespaces (`wft-<pid in hex>-ev-<n>` under /run/netns,
//! the lab's naming, so that a lab sweeping leftovers of finished runs leaves them alone) removed
//! by `Drop`, also when a test fails, and rtnetlink connections inside them. Root only;
//! tests call [`is_root`] first and skip with a printed reason otherwise. Addresses used
//! by the tests are from 198.18.0.0/15 and fd00::/8 only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use futures::TryStreamExt as _;
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use crate::hostevents::in_netns;

/// Enters the network namespace `file` on the calling thread only.
pub fn enter(file: &std::fs::File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: setns on a valid namespace fd, for the calling thread only.
    assert_eq!(
        unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
}

/// Runs `f` on a scratch thread inside the network namespace of `path`.
pub fn in_ns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(path).expect("netns file");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(&file);
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// Runs `ip ARGS`; a failure fails the test, with ip's message.
pub fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !$crate::testns::is_root() {
            eprintln!("skipped: needs root to create network namespaces");
            return;
        }
    };
}
pub(crate) use require_root;

/// A pin directory on bpffs for one test, removed (with every pin in it) on drop.
pub struct TempPins(pub std::path::PathBuf);

impl TempPins {
    pub fn new(what: &str) -> Self {
        let dir = format!("/sys/fs/bpf/weft-test-{}-{what}", std::process::id());
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir.into())
    }
}

impl Drop for TempPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, removed on drop.
pub struct TestNetns {
    pub name: String,
    pub path: PathBuf,
}

impl TestNetns {
    pub fn new() -> Self {
        let name = format!(
            "wft-{:x}-ev-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        );
        // /run/netns a shared mount point first, as the agent and `ip netns` make it: a
        // namespace mounted on the bare directory would be hidden under that bind mount when
        // one of them makes it later, and could then be neither unmounted nor removed.
        crate::networks::namespaces::prepare_dir().expect("preparing /run/netns");
        let path = crate::networks::namespaces::path_of(&name);
        std::fs::File::create(&path).expect("creating the netns mount point");
        let guard = Self {
            name,
            path: path.clone(),
        };
        // unshare(CLONE_NEWNET) changes the calling thread only: a scratch thread makes the
        // namespace and bind-mounts it so that it outlives the thread.
        std::thread::spawn(move || -> std::io::Result<()> {
            // SAFETY: plain syscalls on this thread; strings are NUL-terminated.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let src = c"/proc/thread-self/ns/net";
                let dst = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .expect("path without NUL");
                if libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
        .join()
        .expect("netns thread")
        .expect("creating a network namespace");
        guard
    }

    /// An rtnetlink handle inside this namespace (its connection runs on the current runtime).
    pub async fn handle(&self) -> Handle {
        Self::handle_of(&self.path).await
    }

    /// An rtnetlink handle inside the namespace of `path`.
    pub async fn handle_of(path: &std::path::Path) -> Handle {
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle, _) = in_netns(path, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
        .await
        .expect("entering the test namespace")
        .expect("rtnetlink in the test namespace");
        tokio::spawn(conn);
        handle
    }

    /// A veth pair `name` / `<name>p` in this namespace, both up; returns `name`'s index.
    pub async fn veth(&self, h: &Handle, name: &str) -> u32 {
        let peer = format!("{name}p");
        h.link()
            .add(LinkVeth::new(name, &peer).build())
            .execute()
            .await
            .expect("adding a veth pair");
        for n in [&peer, name] {
            let i = index_of(h, n).await;
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .expect("link up");
        }
        index_of(h, name).await
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Ok(dst) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: unmounting our own bind mount; failure leaves only an empty file.
            unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub async fn index_of(h: &Handle, name: &str) -> u32 {
    h.link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .expect("link lookup")
        .expect("link exists")
        .header
        .index
}

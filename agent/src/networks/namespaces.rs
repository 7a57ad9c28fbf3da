//! Named network namespaces (`/run/netns/<name>`, the files `ip netns` uses), made and
//! removed by the agent itself: a thread `unshare(2)`s a new namespace, bind-mounts its
//! `/proc/thread-self/ns/net` on the name, opens an rtnetlink socket while it is inside
//! (so that configuring the new namespace costs no second `setns`), and `setns(2)`s back
//! to the agent's namespace. `ip netns` sees them as its own.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rtnetlink::Handle;

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";
/// `statfs(2)` magic of nsfs: the file is a bind mount of a namespace.
const NSFS_MAGIC: i64 = 0x6e73_6673;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("network namespace {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> NamespaceError + 'a {
    move |source| NamespaceError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

fn cstring(path: &Path) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// The path of namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `path` is a mounted namespace (not a leftover empty file).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(c) = cstring(path) else { return false };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a zeroed out-struct of the right type.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Makes `/run/netns` a shared mount point (as `ip netns add` does), so that namespaces
/// mounted there are visible to every mount namespace that shares it.
pub fn prepare_dir() -> Result<(), NamespaceError> {
    let dir = Path::new(NETNS_DIR);
    std::fs::create_dir_all(dir).map_err(io_err(dir, "creating the directory"))?;
    let c = cstring(dir).map_err(io_err(dir, "path"))?;
    let none = c"none";
    // SAFETY: valid C strings; a propagation change has no data argument.
    let shared = |c: &std::ffi::CString| unsafe {
        libc::mount(
            none.as_ptr(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if shared(&c) == 0 {
        return Ok(());
    }
    let first = io::Error::last_os_error();
    if first.raw_os_error() != Some(libc::EINVAL) {
        return Err(io_err(dir, "making the mount shared")(first));
    }
    // Not a mount point yet: bind it onto itself first.
    // SAFETY: valid C strings.
    if unsafe {
        libc::mount(
            c.as_ptr(),
            c.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(io_err(dir, "bind-mounting onto itself")(
            io::Error::last_os_error(),
        ));
    }
    if shared(&c) != 0 {
        return Err(io_err(dir, "making the mount shared")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A namespace made by [`create`]: its file, an rtnetlink connection inside it (the
/// connection's future must be spawned on the runtime), and what `inside` made in it.
pub struct Created<X = ()> {
    pub file: File,
    pub connection: Option<(
        rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
        Handle,
    )>,
    pub inside: X,
}

/// Makes namespace `path` (a file under [`NETNS_DIR`]); blocking, for a worker thread.
/// The calling thread returns to the namespace of `home` before this returns; if it
/// cannot, the error says so and the thread must end (it is in the wrong namespace).
/// With `runtime`, an rtnetlink connection is opened inside the new namespace; `inside`
/// runs in it too (to open more sockets there without another `setns`).
pub fn create<X>(
    path: &Path,
    home: &File,
    runtime: Option<&tokio::runtime::Handle>,
    inside: impl FnOnce() -> io::Result<X>,
) -> Result<Created<X>, (NamespaceError, bool)> {
    if is_mounted(path) {
        return Err((
            io_err(path, "creating")(io::Error::from(io::ErrorKind::AlreadyExists)),
            false,
        ));
    }
    // A leftover empty file of an interrupted create.
    let _ = std::fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(path)
        .map_err(|e| (io_err(path, "creating the mount point")(e), false))?;
    // SAFETY: unshare changes this thread's network namespace only.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err((io_err(path, "unshare")(e), false));
    }
    let inner = (|| {
        let target = cstring(path).map_err(io_err(path, "path"))?;
        // SAFETY: valid C strings; a bind mount has no data argument.
        if unsafe {
            libc::mount(
                c"/proc/thread-self/ns/net".as_ptr(),
                target.as_ptr(),
                c"none".as_ptr(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        } != 0
        {
            return Err(io_err(path, "bind-mounting")(io::Error::last_os_error()));
        }
        let file = File::open(path).map_err(io_err(path, "opening"))?;
        let connection = match runtime {
            Some(rt) => {
                let _entered = rt.enter();
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io_err(path, "opening rtnetlink"))?;
                Some((conn, handle))
            }
            None => None,
        };
        let inside = inside().map_err(io_err(path, "opening sockets inside"))?;
        Ok(Created {
            file,
            connection,
            inside,
        })
    })();
    // SAFETY: setns on a valid, open namespace fd; changes this thread only.
    let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
    if !back {
        let e = io::Error::last_os_error();
        let _ = remove(path);
        return Err((io_err(path, "returning to the agent's namespace")(e), true));
    }
    match inner {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = remove(path);
            Err((e, false))
        }
    }
}

/// Removes namespace `path`: unmounts it (lazily: the kernel frees the namespace when
/// its last user is gone) and removes the file. A missing file is not an error.
pub fn remove(path: &Path) -> Result<(), NamespaceError> {
    let c = cstring(path).map_err(io_err(path, "path"))?;
    // SAFETY: valid C string.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (a leftover file); ENOENT: gone already.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(io_err(path, "unmounting")(e));
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, "removing the file")(e)),
    }
}

/// The agent's own network namespace, to come back to.
pub fn home() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

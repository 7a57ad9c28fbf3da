//! Creating sockets inside another network namespace: a short-lived thread `setns(2)`s
//! into the namespace file and creates them there (a netlink socket stays bound to the
//! namespace it was created in), then ends. The caller's thread never changes namespace.

use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use crate::error::{Error, Result};

/// How errors name a namespace.
pub fn label(netns: Option<&Path>) -> String {
    netns.map_or_else(
        || "(current namespace)".to_owned(),
        |p| p.display().to_string(),
    )
}

/// (device, inode) of a namespace file: which namespace it names.
pub type Identity = (u64, u64);

/// Runs `f` in the namespace of `netns` (in the calling thread when `None`) and returns
/// what it made, with the namespace's identity.
pub fn run_in<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<(T, Option<Identity>)> {
    let label = label(netns);
    let Some(path) = netns else {
        let t = f().map_err(|source| Error::Io {
            netns: label,
            op: "open nf_tables socket".into(),
            source,
        })?;
        return Ok((t, None));
    };
    let open_err = |source| Error::NetnsOpen {
        netns: label.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_err)?;
    let m = file.metadata().map_err(open_err)?;
    let identity = (m.dev(), m.ino());
    let fd = file.as_raw_fd();
    let joined = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("weft-fw-netns".into())
            .spawn_scoped(s, move || {
                // SAFETY: setns on an open namespace fd; it changes this thread only, and
                // the thread ends when `f` returns.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err((true, io::Error::last_os_error()));
                }
                f().map_err(|e| (false, e))
            })
            .map(|h| h.join())
    });
    match joined {
        Err(source) => Err(Error::NetnsEnter {
            netns: label,
            source,
        }),
        Ok(Err(_panic)) => Err(Error::NetnsEnter {
            netns: label,
            source: io::Error::other("namespace thread panicked"),
        }),
        Ok(Ok(Err((true, source)))) => Err(Error::NetnsEnter {
            netns: label,
            source,
        }),
        Ok(Ok(Err((false, source)))) => Err(Error::Io {
            netns: label,
            op: "open nf_tables socket".into(),
            source,
        }),
        Ok(Ok(Ok(t))) => Ok((t, Some(identity))),
    }
}

/// The identity of what `path` names now.
pub fn identity_of(path: &Path) -> Result<Identity> {
    let m = std::fs::metadata(path).map_err(|source| Error::NetnsOpen {
        netns: path.display().to_string(),
        source,
    })?;
    Ok((m.dev(), m.ino()))
}

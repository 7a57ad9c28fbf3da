//! Starting a node process: inside the node's network namespace, in its own process
//! group, in the node's cgroups, as the profile's user.
//!
//! The child does it itself between fork and exec (`pre_exec`): `setns(2)` into the
//! namespace, writes `0` into each pre-opened `cgroup.procs` (joining the groups), then
//! drops to the user (`setgroups`, `setgid`, `setuid` — after the two privileged steps, which
//! is why std's `uid()`/`gid()` are not used: they run before `pre_exec`). Doing it in the
//! child rather than on a helper thread that `setns`es and then forks keeps the agent's
//! threads untouched, puts the process in its namespace and groups before its first
//! instruction (no window in which it runs unconfined or unlimited), and needs only
//! async-signal-safe syscalls on pre-opened descriptors in the child.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::profiles::glob_match;

/// A user to run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ids {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Looks a user up in the passwd database.
pub(crate) fn lookup_user(name: &str) -> io::Result<Ids> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in user name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-struct; buf outlives the reads below.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers valid for the call; buf's length passed.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user {name:?}"),
        ));
    }
    let home = if pw.pw_dir.is_null() {
        PathBuf::from("/")
    } else {
        // SAFETY: getpwnam_r filled pw_dir with a NUL-terminated string inside buf.
        let s = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
        PathBuf::from(s.to_string_lossy().into_owned())
    };
    Ok(Ids {
        name: name.to_string(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home,
    })
}

/// Orders `postgresql/9.6` before `postgresql/15`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ca.len().cmp(&cb.len())
}

/// An absolute path with `*`/`?` in it: the highest existing match in version order
/// (`None` if nothing matches). Other strings are returned as they are.
pub(crate) fn resolve_program(p: &str) -> Option<String> {
    if !p.contains(['*', '?']) || !p.starts_with('/') {
        return Some(p.to_string());
    }
    let mut cands = vec![PathBuf::from("/")];
    for comp in p.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &cands {
            if comp.contains(['*', '?']) {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in rd.flatten() {
                    let name = e.file_name();
                    if glob_match(comp, &name.to_string_lossy()) {
                        next.push(dir.join(name));
                    }
                }
            } else {
                let d = dir.join(comp);
                if d.exists() {
                    next.push(d);
                }
            }
        }
        cands = next;
    }
    cands
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .max_by(|a, b| natural_cmp(a, b))
}

pub(crate) struct SpawnSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
    pub user: &'a Ids,
    pub netns: &'a File,
    pub cgroup_procs: &'a [File],
}

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Spawns the process (stdout and stderr piped, stdin from /dev/null), leader of its own
/// process group.
pub(crate) fn spawn(s: &SpawnSpec<'_>) -> io::Result<tokio::process::Child> {
    let (prog, args) = s
        .argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let prog = resolve_program(prog).ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("nothing matches {prog}"))
    })?;
    let mut cmd = tokio::process::Command::new(&prog);
    cmd.args(args)
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", &s.user.home)
        .env("USER", &s.user.name)
        .env("LOGNAME", &s.user.name)
        .env("LANG", "C.UTF-8")
        .envs(s.env)
        .current_dir(s.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let ns = s.netns.as_raw_fd();
    let procs: Vec<i32> = s.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
    let (uid, gid) = (s.user.uid, s.user.gid);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe syscalls on descriptors that stay open until spawn returns; it does
    // not allocate (the pid vector was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            for fd in &procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if uid != 0 || gid != 0 {
                let groups = [gid];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Chowns `path` to `ids`, optionally recursively. `path` itself is followed when it is a
/// symlink (a volume in the agent's copy-on-write pool is a link the agent made to its
/// subvolume, and chmod follows it too); what lies under it is not (a link a node wrote
/// in its data must not hand the node another file).
pub(crate) fn chown(path: &Path, ids: &Ids, recursive: bool) -> io::Result<()> {
    let top = if path.is_symlink() {
        std::fs::canonicalize(path)?
    } else {
        path.to_owned()
    };
    chown_below(&top, ids, recursive)
}

fn chown_below(path: &Path, ids: &Ids, recursive: bool) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid))?;
    if recursive && path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path)? {
            chown_below(&e?.path(), ids, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A volume that is a link to its subvolume is chowned where it points; a link inside
    /// the tree is not followed.
    #[test]
    fn chown_follows_the_top_link_only() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        use std::os::unix::fs::MetadataExt as _;
        let dir = std::env::temp_dir().join(format!("weft-chown-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (real, link, outside) = (dir.join("real"), dir.join("link"), dir.join("outside"));
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(&outside, b"x").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        std::os::unix::fs::symlink(&outside, real.join("sub/escape")).unwrap();
        let nobody = lookup_user("nobody").unwrap();
        chown(&link, &nobody, true).unwrap();
        let uid = |p: &Path| std::fs::metadata(p).unwrap().uid();
        assert_eq!(uid(&real), nobody.uid, "the link's target");
        assert_eq!(uid(&real.join("sub")), nobody.uid, "below it");
        assert_eq!(uid(&outside), 0, "a link inside the tree is not followed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn natural_order() {
        assert_eq!(natural_cmp("/p/9.6/bin", "/p/15/bin"), Ordering::Less);
        assert_eq!(natural_cmp("/p/16/bin", "/p/15/bin"), Ordering::Greater);
        assert_eq!(natural_cmp("a", "a"), Ordering::Equal);
    }

    #[test]
    fn program_globs() {
        assert_eq!(resolve_program("nginx").as_deref(), Some("nginx"));
        assert_eq!(
            resolve_program("/bi?/s*").is_some(),
            Path::new("/bin/sh").exists()
        );
        assert_eq!(resolve_program("/nonexistent-*/x"), None);
        assert_eq!(lookup_user("root").unwrap().uid, 0);
        assert!(lookup_user("no-such-user-wft").is_err());
    }
}

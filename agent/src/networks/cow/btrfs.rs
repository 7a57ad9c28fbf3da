//! The btrfs ioctls the volume store uses (no `btrfs` command per operation): create a
//! subvolume, snapshot one (read-only or writable), destroy one, and tell whether a
//! directory is a subvolume's root.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::CowError;

const BTRFS_IOCTL_MAGIC: u64 = 0x94;
/// `BTRFS_PATH_NAME_MAX + 1`.
const VOL_NAME: usize = 4088;
/// `BTRFS_SUBVOL_NAME_MAX + 1`.
const SUBVOL_NAME: usize = 4040;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;
/// The inode number of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`).
const SUBVOL_ROOT_INO: u64 = 256;
/// `BTRFS_SUPER_MAGIC` (statfs `f_type`).
pub const SUPER_MAGIC: i64 = 0x9123_683e;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; VOL_NAME],
}

/// `struct btrfs_ioctl_vol_args_v2`.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; SUBVOL_NAME],
}

const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

/// `_IOW(BTRFS_IOCTL_MAGIC, nr, 4096-byte struct)`.
const fn iow(nr: u64) -> u64 {
    (1 << 30) | (4096 << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr
}
const IOC_SUBVOL_CREATE: u64 = iow(14);
const IOC_SNAP_DESTROY: u64 = iow(15);
const IOC_SNAP_CREATE_V2: u64 = iow(23);

fn fill(dst: &mut [u8], name: &OsStr, path: &Path) -> Result<(), CowError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= dst.len() || b.contains(&0) || b.contains(&b'/') {
        return Err(CowError::io(
            "naming a subvolume",
            path,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    dst[..b.len()].copy_from_slice(b);
    Ok(())
}

/// The parent directory (opened) and last component of `path`.
fn parent_and_name(path: &Path) -> Result<(File, &OsStr), CowError> {
    let einval = || {
        CowError::io(
            "naming a subvolume",
            path,
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    };
    let name = path.file_name().ok_or_else(einval)?;
    let parent = path.parent().ok_or_else(einval)?;
    let dir = File::open(parent).map_err(|e| CowError::io("opening", parent, e))?;
    Ok((dir, name))
}

fn ioctl(fd: &File, req: u64, arg: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: `arg` points at a live, correctly sized struct for `req`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes an empty subvolume at `path` (its parent must exist, on btrfs).
pub fn create_subvolume(path: &Path) -> Result<(), CowError> {
    let (dir, name) = parent_and_name(path)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; VOL_NAME],
    });
    fill(&mut args.name, name, path)?;
    ioctl(&dir, IOC_SUBVOL_CREATE, (&mut *args as *mut VolArgs).cast())
        .map_err(|e| CowError::io("creating the subvolume", path, e))
}

/// Snapshots subvolume `src` at `dst` (same filesystem): read-only for history, writable
/// for a clone. Atomic: the snapshot is `src` as it was at one instant.
pub fn snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<(), CowError> {
    let source = File::open(src).map_err(|e| CowError::io("opening", src, e))?;
    let (dir, name) = parent_and_name(dst)?;
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(source.as_raw_fd()),
        transid: 0,
        flags: if read_only { SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; SUBVOL_NAME],
    });
    fill(&mut args.name, name, dst)?;
    ioctl(
        &dir,
        IOC_SNAP_CREATE_V2,
        (&mut *args as *mut VolArgsV2).cast(),
    )
    .map_err(|e| {
        CowError::io(
            "snapshotting",
            dst,
            std::io::Error::new(e.kind(), format!("from {}: {e}", src.display())),
        )
    })
}

/// Destroys the subvolume at `path` with everything in it (read-only or not).
pub fn destroy(path: &Path) -> Result<(), CowError> {
    let (dir, name) = parent_and_name(path)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; VOL_NAME],
    });
    fill(&mut args.name, name, path)?;
    ioctl(&dir, IOC_SNAP_DESTROY, (&mut *args as *mut VolArgs).cast())
        .map_err(|e| CowError::io("destroying the subvolume", path, e))
}

/// Whether `path` (not followed if a symlink) is the root of a btrfs subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.is_dir() && m.ino() == SUBVOL_ROOT_INO && on_btrfs(path))
}

/// Whether `path` is on a btrfs filesystem.
pub fn on_btrfs(path: &Path) -> bool {
    fs_type(path) == Some(SUPER_MAGIC)
}

/// statfs `f_type` of the filesystem holding `path`.
pub fn fs_type(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

/// Removes `path` whatever it is: a subvolume (destroyed), a directory tree, a file, a
/// symlink (not followed). Nested subvolumes inside a plain tree are destroyed too.
/// Missing is not an error.
pub fn remove_any(path: &Path) -> Result<(), CowError> {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !m.is_dir() {
        return std::fs::remove_file(path).map_err(|e| CowError::io("removing", path, e));
    }
    if is_subvolume(path) {
        return destroy(path);
    }
    let entries = std::fs::read_dir(path).map_err(|e| CowError::io("reading", path, e))?;
    for e in entries.flatten() {
        remove_any(&e.path())?;
    }
    std::fs::remove_dir(path).map_err(|e| CowError::io("removing", path, e))
}

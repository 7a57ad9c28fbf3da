//! The volume pool: where pool volumes and snapshots live. With btrfs, one filesystem per
//! agent in a sparse file (`<pool>.btrfs`), made once with `mkfs.btrfs`, attached to a
//! loop device (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE` with `LO_FLAGS_AUTOCLEAR`: the
//! device goes away by itself once unmounted) and mounted with mount(2) at `<pool>`; an
//! existing file or mount is reused at the next start (volumes are data). Without btrfs,
//! a plain directory `<pool>` (the copy method).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use super::{CowError, Method, btrfs};

/// Which store the agent uses (`--volume-store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// btrfs when the kernel has it and `mkfs.btrfs` is installed, else copy.
    Auto,
    /// A btrfs filesystem in a sparse file (fails the start when it cannot be made).
    Btrfs,
    /// Plain directories; snapshots and clones are `cp -a --reflink=auto`.
    Copy,
}

/// Where and how the pool is made.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The mount point (btrfs) or directory (copy); the btrfs file is `<dir>.btrfs`.
    pub dir: PathBuf,
    /// Size of the sparse btrfs file when it is made (only what is written takes space).
    pub bytes: u64,
    pub kind: StoreKind,
}

/// The pool, ready.
#[derive(Debug)]
pub struct Pool {
    root: PathBuf,
    method: Method,
    /// Mounted by this process: unmounted by [`Pool::unmount`].
    mounted_here: bool,
    /// How it came about, for the log and the nodes' status.
    pub note: String,
}

/// The smallest btrfs filesystem `mkfs.btrfs` makes with its defaults.
const MIN_BYTES: u64 = 256 << 20;

/// The pool file is sparse: blocks are taken from the filesystem holding it as volumes
/// are written. When that filesystem fills up, the loop device's writes fail and btrfs
/// turns the pool read-only (every volume of every node): said at start when the room
/// left is less than the pool's size.
fn warn_if_overcommitted(file: &Path, pool_bytes: u64) {
    let Some(parent) = file.parent() else { return };
    let Ok(c) = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: a zeroed statvfs is a valid out-struct; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return;
    }
    let available = st.f_bavail.saturating_mul(st.f_frsize);
    let used = std::fs::metadata(file)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m).saturating_mul(512))
        .unwrap_or(0);
    if available.saturating_add(used) < pool_bytes {
        tracing::warn!(
            pool = %file.display(),
            pool_bytes,
            available_bytes = available,
            "the volume pool is sparse and larger than the room left on its filesystem: if that fills up, the pool turns read-only (give it a filesystem of its own, or a smaller --volume-pool-bytes)"
        );
    }
}

impl Pool {
    /// Opens (makes, attaches, mounts) the pool as `cfg` says. Blocking.
    pub fn open(cfg: &PoolConfig) -> Result<Self, CowError> {
        let copy = |note: String| -> Result<Self, CowError> {
            std::fs::create_dir_all(&cfg.dir).map_err(|e| CowError::io("creating", &cfg.dir, e))?;
            Ok(Self {
                root: cfg.dir.clone(),
                method: Method::Copy,
                mounted_here: false,
                note,
            })
        };
        if cfg.kind == StoreKind::Copy {
            return copy("copy store (--volume-store copy)".into());
        }
        if let Err(why) = btrfs_available() {
            return match cfg.kind {
                StoreKind::Auto => copy(format!("copy store: {why}")),
                _ => Err(CowError::Pool(format!("--volume-store btrfs: {why}"))),
            };
        }
        match Self::open_btrfs(cfg) {
            Ok(p) => Ok(p),
            Err(e) if cfg.kind == StoreKind::Auto => {
                tracing::warn!(error = %e, "the btrfs volume pool could not be made; using the copy store");
                copy(format!("copy store: the btrfs pool failed: {e}"))
            }
            Err(e) => Err(e),
        }
    }

    fn open_btrfs(cfg: &PoolConfig) -> Result<Self, CowError> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir).map_err(|e| CowError::io("creating", dir, e))?;
        if btrfs::on_btrfs(dir) && is_mount_point(dir) {
            return Ok(Self {
                root: dir.clone(),
                method: Method::Btrfs,
                mounted_here: false,
                note: format!("btrfs pool {} (already mounted)", dir.display()),
            });
        }
        let file = image_of(dir);
        warn_if_overcommitted(&file, cfg.bytes.max(MIN_BYTES));
        let made = if file.exists() {
            false
        } else {
            let bytes = cfg.bytes.max(MIN_BYTES);
            let f = File::create(&file).map_err(|e| CowError::io("creating", &file, e))?;
            f.set_len(bytes)
                .map_err(|e| CowError::io("sizing", &file, e))?;
            drop(f);
            let out = std::process::Command::new("mkfs.btrfs")
                .arg("-q")
                .arg(&file)
                .output()
                .map_err(|e| CowError::Pool(format!("running mkfs.btrfs: {e}")))?;
            if !out.status.success() {
                let _ = std::fs::remove_file(&file);
                return Err(CowError::Pool(format!(
                    "mkfs.btrfs {}: {}",
                    file.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            true
        };
        // A loop device still attached to the file (the pool was unmounted lazily while
        // processes of nodes kept files open in it): mounted again, so that both see one
        // filesystem (a second device with the same btrfs filesystem id must not be).
        // Else a new one, held open until mounted: with LO_FLAGS_AUTOCLEAR the device is
        // cleared at its last close.
        let (dev, dev_file) = match attached_loop(&file) {
            Some(dev) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dev)
                    .map_err(|e| CowError::io("opening", &dev, e))?;
                (dev, f)
            }
            None => attach_loop(&file)?,
        };
        let src = std::ffi::CString::new(dev.as_os_str().as_bytes())
            .map_err(|_| CowError::Pool("loop device path".into()))?;
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| CowError::Pool(format!("{} has a NUL byte", dir.display())))?;
        // SAFETY: valid C strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                c"btrfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        let mount_error = std::io::Error::last_os_error();
        // The mount holds the device now; after a failed mount this close clears it.
        drop(dev_file);
        if rc != 0 {
            return Err(CowError::io(
                "mounting the btrfs pool",
                dir,
                std::io::Error::other(format!(
                    "{} from {}: {}",
                    dev.display(),
                    file.display(),
                    mount_error
                )),
            ));
        }
        Ok(Self {
            root: dir.clone(),
            method: Method::Btrfs,
            mounted_here: true,
            note: format!(
                "btrfs pool {} ({} {}, on {})",
                dir.display(),
                if made { "made in" } else { "reused from" },
                file.display(),
                dev.display()
            ),
        })
    }

    /// The pool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Unmounts the pool if this process mounted it (lazily: processes of nodes still
    /// running keep what they have open; the loop device goes with the last user).
    pub fn unmount(&self) -> Result<(), CowError> {
        if !self.mounted_here {
            return Ok(());
        }
        let target = std::ffi::CString::new(self.root.as_os_str().as_bytes())
            .map_err(|_| CowError::Pool("pool path".into()))?;
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(CowError::io(
                "unmounting the pool",
                &self.root,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// The btrfs file of pool directory `dir`: `<dir>.btrfs`.
pub fn image_of(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".btrfs");
    PathBuf::from(s)
}

/// Why the btrfs store cannot be used here, if it cannot.
fn btrfs_available() -> Result<(), String> {
    let fs = std::fs::read_to_string("/proc/filesystems")
        .map_err(|e| format!("reading /proc/filesystems: {e}"))?;
    if !fs
        .lines()
        .any(|l| l.split_whitespace().last() == Some("btrfs"))
    {
        return Err("the kernel has no btrfs (not in /proc/filesystems)".into());
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("mkfs.btrfs").is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin/mkfs.btrfs").is_file()
        || Path::new("/sbin/mkfs.btrfs").is_file();
    if !found {
        return Err("mkfs.btrfs is not installed (package btrfs-progs)".into());
    }
    Ok(())
}

/// Whether `dir` is a mount point (its device differs from its parent's, or it is `/`).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(m), Some(parent)) = (std::fs::metadata(dir), dir.parent()) else {
        return false;
    };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != m.dev())
}

const LOOP_CTL_GET_FREE: u64 = 0x4C82;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// The loop device `file` is attached to, if any (`/sys/block/loop*/loop/backing_file`).
fn attached_loop(file: &Path) -> Option<PathBuf> {
    let file = std::fs::canonicalize(file).ok()?;
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (Path::new(backing.trim_end()) == file).then(|| PathBuf::from(format!("/dev/{name}")))
        })
}

/// Attaches `file` to a free loop device (auto-clearing); returns the device's path and
/// an open handle on it (the device is cleared when the last handle closes, unmounted).
fn attach_loop(file: &Path) -> Result<(PathBuf, File), CowError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(|e| CowError::io("opening", file, e))?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| CowError::io("opening", Path::new("/dev/loop-control"), e))?;
    let mut last = None;
    // Another process may take the free device between the two calls: a few tries.
    for _ in 0..8 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(CowError::io(
                "finding a free loop device",
                Path::new("/dev/loop-control"),
                std::io::Error::last_os_error(),
            ));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let d = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| CowError::io("opening", &dev, e))?;
        // SAFETY: an all-zero loop_config is valid; the fields set are plain integers.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        let name = file.as_os_str().as_bytes();
        let n = name.len().min(63);
        cfg.info.lo_file_name[..n].copy_from_slice(&name[..n]);
        // SAFETY: `cfg` is a live loop_config.
        let rc = unsafe { libc::ioctl(d.as_raw_fd(), LOOP_CONFIGURE as _, &cfg) };
        if rc == 0 {
            return Ok((dev, d));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(CowError::io("configuring", &dev, e));
        }
        last = Some(e);
    }
    Err(CowError::io(
        "attaching a loop device",
        file,
        last.unwrap_or_else(|| std::io::Error::other("no free loop device")),
    ))
}

//! The volume store on a real filesystem (root): a real btrfs pool in a temporary
//! directory (loop-mounted; unmounted and removed by a Drop guard, also when a test
//! fails), and the copy store the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::Duration;

use super::store::VolumeRequest;
use super::{Method, Pool, PoolConfig, Store, StoreKind, btrfs};
use crate::networks::spec::{CloneFrom, SnapshotPolicy, SyncFrom, VolumeOps};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A pool and a node root under a fresh temporary directory; unmounted and removed on
/// drop.
pub(crate) struct Lab {
    pub dir: PathBuf,
    pub pool_dir: PathBuf,
    pub node_root: PathBuf,
    pub store: Option<Arc<Store>>,
}

impl Lab {
    pub(crate) fn new(kind: StoreKind) -> Self {
        let mut lab = Self::lazy(kind);
        let cfg = lab.config(kind);
        lab.store = Some(Arc::new(Store::new(Pool::open(&cfg).expect("the pool"))));
        lab
    }

    fn config(&self, kind: StoreKind) -> PoolConfig {
        PoolConfig {
            dir: self.pool_dir.clone(),
            bytes: 1 << 30,
            kind,
        }
    }

    /// With a store that makes its pool at first need.
    pub(crate) fn lazy(kind: StoreKind) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wft-{:x}-cow{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut lab = Self {
            pool_dir: dir.join("volume-pool"),
            node_root: dir.join("nodes"),
            dir,
            store: None,
        };
        lab.store = Some(Arc::new(Store::lazy(lab.config(kind))));
        lab
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        self.store.as_ref().expect("store")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.store = None;
        if btrfs::on_btrfs(&self.pool_dir) {
            use std::os::unix::ffi::OsStrExt as _;
            let c = std::ffi::CString::new(self.pool_dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn req(lab: &Lab, network: &str, node: &str, ops: VolumeOps) -> VolumeRequest {
    VolumeRequest {
        network: network.into(),
        node: node.into(),
        node_dir: lab.node_root.join(network).join(node),
        node_root: lab.node_root.clone(),
        volumes: vec!["data".into()],
        ops,
        clone_remove: vec!["postmaster.pid".into()],
    }
}

fn asked(generation: u64) -> VolumeOps {
    VolumeOps {
        snapshots: Some(SnapshotPolicy {
            interval: None,
            keep: 3,
            generation,
            pinned: Vec::new(),
        }),
        ..Default::default()
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn measurement(out: &super::store::Outcome, name: &str) -> f64 {
    out.measurements
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", out.measurements))
        .1
}

/// Snapshot, clone, writes on both sides, sync, reload, removal; returns the measured
/// (snapshot, clone, sync) seconds.
fn snapshot_clone_sync(kind: StoreKind, want: Method) -> (f64, f64, f64) {
    let lab = Lab::new(kind);
    let store = lab.store();
    assert_eq!(store.method(), Some(want));
    let prod = lab.node_root.join("prod/db/volumes/data");
    let weave = lab.node_root.join("w1/db/volumes/data");

    // Production's volume: a pool volume behind the node's link.
    store.prepare(&req(&lab, "prod", "db", asked(0))).unwrap();
    let target = std::fs::read_link(&prod).expect("a link");
    assert!(target.starts_with(&lab.pool_dir), "{}", target.display());
    if want == Method::Btrfs {
        assert!(btrfs::is_subvolume(&target));
    }
    std::fs::write(prod.join("file"), "v1").unwrap();
    std::fs::write(prod.join("postmaster.pid"), "12345").unwrap();

    // Asked for (generation 1): taken once, reported with it.
    let out = store.prepare(&req(&lab, "prod", "db", asked(1))).unwrap();
    let snap_s = measurement(&out, "volume_snapshot_seconds");
    let (snaps, _) = store.report("prod", "db");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].generation, 1);
    assert_eq!(snaps[0].method, want.name());
    assert_eq!(snaps[0].volumes, vec!["data".to_string()]);
    let id = snaps[0].id.clone();
    let again = store.prepare(&req(&lab, "prod", "db", asked(1))).unwrap();
    assert!(again.measurements.is_empty(), "{:?}", again.measurements);
    assert_eq!(store.report("prod", "db").0.len(), 1);
    if want == Method::Btrfs {
        // History is read-only.
        let in_snap = lab
            .pool_dir
            .join("snapshots/prod/db")
            .join(&id)
            .join("data/file");
        let e = std::fs::write(&in_snap, "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
    // By generation: the snapshot answering it, or one taken now (once); never one for a
    // generation the node has moved past.
    let vols = vec!["data".to_string()];
    let (m, fresh) = store
        .snapshot_for_generation("prod", "db", &vols, 1)
        .unwrap();
    assert_eq!((m.id.as_str(), fresh), (id.as_str(), false));
    let (m5, fresh) = store
        .snapshot_for_generation("prod", "db", &vols, 5)
        .unwrap();
    assert!(fresh);
    assert_eq!(m5.generation, 5);
    let again = store.prepare(&req(&lab, "prod", "db", asked(5))).unwrap();
    assert!(again.measurements.is_empty(), "{:?}", again.measurements);
    assert_eq!(
        store
            .snapshot_of_generation("prod", "db", 5)
            .unwrap()
            .map(|s| s.id),
        Some(m5.id.clone())
    );
    let e = store
        .snapshot_for_generation("prod", "db", &vols, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no snapshot of generation 4"), "{e}");
    // Production moves on.
    std::fs::write(prod.join("file"), "v2").unwrap();

    // The weave's node: a writable clone of the snapshot, with the old content and
    // without the copied postmaster.pid.
    let clone = VolumeOps {
        clone: Some(CloneFrom {
            network: "prod".into(),
            node: "db".into(),
            snapshot: id.clone(),
            generation: 0,
        }),
        ..Default::default()
    };
    let out = store
        .prepare(&req(&lab, "w1", "db", clone.clone()))
        .unwrap();
    let clone_s = measurement(&out, "volume_clone_seconds");
    assert_eq!(read(&weave.join("file")), "v1");
    assert!(!weave.join("postmaster.pid").exists());
    assert!(prod.join("postmaster.pid").exists());
    assert!(
        out.observed
            .iter()
            .any(|o| o.contains("removed postmaster.pid")),
        "{:?}",
        out.observed
    );
    std::fs::write(weave.join("file"), "weave").unwrap();
    assert_eq!(read(&prod.join("file")), "v2");
    // Existing volumes are kept, not cloned again.
    store
        .prepare(&req(&lab, "w1", "db", clone.clone()))
        .unwrap();
    assert_eq!(read(&weave.join("file")), "weave");

    // A clone of a snapshot that is not there says so.
    let mut bad = clone.clone();
    bad.clone.as_mut().unwrap().snapshot = "s-1".into();
    let e = store
        .prepare(&req(&lab, "w2", "db", bad))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no snapshot s-1"), "{e}");

    // Sync: the weave's volume becomes production's current state.
    let mut sync = clone.clone();
    sync.sync_from = vec![SyncFrom {
        volume: "data".into(),
        network: "prod".into(),
        node: "db".into(),
        generation: 1,
    }];
    let r1 = req(&lab, "w1", "db", sync.clone());
    assert!(store.needs_stop(&r1).unwrap());
    let link_before = std::fs::read_link(&weave).unwrap();
    let out = store.prepare(&r1).unwrap();
    let sync_s = measurement(&out, "volume_sync_seconds");
    assert_eq!(read(&weave.join("file")), "v2");
    assert!(!weave.join("postmaster.pid").exists());
    assert_eq!(std::fs::read_link(&weave).unwrap(), link_before);
    assert!(!store.needs_stop(&r1).unwrap(), "done once per generation");
    let (_, syncs) = store.report("w1", "db");
    assert_eq!(syncs.len(), 1);
    assert_eq!((syncs[0].volume.as_str(), syncs[0].generation), ("data", 1));
    assert_eq!(syncs[0].method, want.name());
    // No staging left behind.
    let left: Vec<String> = std::fs::read_dir(lab.pool_dir.join("nodes/w1/db"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.contains("staging")), "{left:?}");

    // A restarted agent reloads the snapshots and the syncs (no second sync).
    let reopened = Store::new(
        Pool::open(&PoolConfig {
            dir: lab.pool_dir.clone(),
            bytes: 1 << 30,
            kind,
        })
        .unwrap(),
    );
    assert_eq!(reopened.report("prod", "db").0.len(), 0, "loaded lazily");
    assert!(!reopened.needs_stop(&r1).unwrap());
    reopened
        .prepare(&req(&lab, "prod", "db", asked(1)))
        .unwrap();
    assert_eq!(reopened.report("prod", "db").0[0].id, id);
    drop(reopened);

    // Removing production removes its volumes and snapshots; the weave's clone stays.
    store
        .remove_node("prod", "db", &lab.node_root.join("prod/db"))
        .unwrap();
    assert!(!lab.pool_dir.join("nodes/prod").exists());
    assert!(!lab.pool_dir.join("snapshots/prod").exists());
    assert!(std::fs::symlink_metadata(&prod).is_err());
    assert_eq!(read(&weave.join("file")), "v2");
    (snap_s, clone_s, sync_s)
}

#[test]
fn btrfs_snapshot_clone_and_sync() {
    crate::testns::require_root!();
    let (s, c, y) = snapshot_clone_sync(StoreKind::Btrfs, Method::Btrfs);
    eprintln!(
        "btrfs: snapshot {:.2} ms, clone {:.2} ms, sync {:.2} ms",
        s * 1e3,
        c * 1e3,
        y * 1e3
    );
}

#[test]
fn copy_store_snapshot_clone_and_sync() {
    crate::testns::require_root!();
    let (s, c, y) = snapshot_clone_sync(StoreKind::Copy, Method::Copy);
    eprintln!(
        "copy: snapshot {:.2} ms, clone {:.2} ms, sync {:.2} ms",
        s * 1e3,
        c * 1e3,
        y * 1e3
    );
}

#[test]
fn a_plain_volume_directory_is_converted_once_keeping_its_content() {
    crate::testns::require_root!();
    let lab = Lab::new(StoreKind::Btrfs);
    let store = lab.store();
    let vol = lab.node_root.join("prod/web/volumes/data");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    std::fs::write(vol.join("sub/f"), "kept").unwrap();
    let r = req(&lab, "prod", "web", asked(0));
    assert!(store.needs_stop(&r).unwrap(), "a conversion stops the node");
    let out = store.prepare(&r).unwrap();
    assert!(
        out.observed.iter().any(|o| o.contains("converted")),
        "{:?}",
        out.observed
    );
    assert!(
        std::fs::symlink_metadata(&vol)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(btrfs::is_subvolume(&std::fs::read_link(&vol).unwrap()));
    assert_eq!(read(&vol.join("sub/f")), "kept");
    assert!(!store.needs_stop(&r).unwrap());
    // Nothing left of the old directory.
    let names: Vec<String> = std::fs::read_dir(lab.node_root.join("prod/web/volumes"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["data".to_string()]);
}

#[tokio::test]
async fn scheduled_snapshots_are_kept_bounded_and_signalled() {
    crate::testns::require_root!();
    let lab = Lab::new(StoreKind::Btrfs);
    let store = lab.store().clone();
    let policy = SnapshotPolicy {
        interval: Some(Duration::from_secs(1)),
        keep: 1,
        generation: 0,
        pinned: Vec::new(),
    };
    let ops = VolumeOps {
        snapshots: Some(policy.clone()),
        ..Default::default()
    };
    let r = req(&lab, "prod", "db", ops);
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.prepare(&r))
        .await
        .unwrap()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let schedules = super::schedule::Schedules::default();
    let volumes = vec!["data".to_string()];
    schedules.ensure(&store, "prod", "db", Some(&policy), &volumes, &tx);
    assert_eq!(schedules.len(), 1);
    // The same plan again, or a new `keep`, does not restart the timer: the new `keep`
    // applies at its next tick.
    schedules.ensure(&store, "prod", "db", Some(&policy), &volumes, &tx);
    let mut policy = policy;
    policy.keep = 2;
    schedules.ensure(&store, "prod", "db", Some(&policy), &volumes, &tx);
    for n in 1..=3 {
        let sig = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a REFRESH within 5 s")
            .expect("open");
        assert_eq!(sig.drift.key, "prod/db");
        assert_eq!(sig.drift.what, crate::control::REFRESH);
        assert_eq!(sig.kind, weft_proto::kinds::NETWORK_NODE);
        let (snaps, _) = store.report("prod", "db");
        assert_eq!(snaps.len(), n.min(2), "keep 2: {snaps:?}");
        assert!(snaps.iter().all(|s| s.generation == 0));
        assert!(
            snaps
                .windows(2)
                .all(|w| w[0].taken_unix_ns < w[1].taken_unix_ns)
        );
    }
    let on_disk = std::fs::read_dir(lab.pool_dir.join("snapshots/prod/db"))
        .unwrap()
        .count();
    assert_eq!(on_disk, 2);
    // No interval: no timer.
    schedules.ensure(&store, "prod", "db", None, &volumes, &tx);
    assert_eq!(schedules.len(), 0);
}

#[test]
fn a_pool_unmounted_while_in_use_is_mounted_again_from_the_same_device() {
    crate::testns::require_root!();
    let lab = Lab::new(StoreKind::Btrfs);
    let store = lab.store();
    store.prepare(&req(&lab, "prod", "db", asked(0))).unwrap();
    let vol = lab.node_root.join("prod/db/volumes/data");
    std::fs::write(vol.join("f"), "before").unwrap();
    // A node's process keeps a file open across the agent's exit.
    let held = std::fs::File::open(vol.join("f")).unwrap();
    let dev_of = |p: &Path| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(p).unwrap().dev()
    };
    let dev = dev_of(&lab.pool_dir);
    store.pool().unwrap().unmount().unwrap();
    assert!(!btrfs::on_btrfs(&lab.pool_dir), "unmounted");
    assert!(!vol.exists(), "the link dangles while the pool is away");
    // The next start: the same filesystem again, data and all.
    let again = Pool::open(&PoolConfig {
        dir: lab.pool_dir.clone(),
        bytes: 1 << 30,
        kind: StoreKind::Btrfs,
    })
    .unwrap();
    assert!(again.note.contains("reused"), "{}", again.note);
    assert_eq!(dev_of(&lab.pool_dir), dev, "{}", again.note);
    assert_eq!(read(&vol.join("f")), "before");
    drop(held);
    again.unmount().unwrap();
    assert!(!btrfs::on_btrfs(&lab.pool_dir));
}

/// Times of a snapshot, a clone and a sync of a volume holding one 128 MiB file, per
/// store (printed; `cargo test -p weft-agent volume_times -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement: writes 128 MiB per store"]
fn volume_times_with_128_mib() {
    crate::testns::require_root!();
    for (kind, want) in [
        (StoreKind::Btrfs, Method::Btrfs),
        (StoreKind::Copy, Method::Copy),
    ] {
        let lab = Lab::new(kind);
        let store = lab.store();
        store.prepare(&req(&lab, "prod", "db", asked(0))).unwrap();
        let vol = lab.node_root.join("prod/db/volumes/data");
        let block = vec![7u8; 1 << 20];
        let mut f = std::fs::File::create(vol.join("big")).unwrap();
        for _ in 0..128 {
            std::io::Write::write_all(&mut f, &block).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let (s, c, y) = {
            let out = store.prepare(&req(&lab, "prod", "db", asked(1))).unwrap();
            let s = measurement(&out, "volume_snapshot_seconds");
            let id = store.report("prod", "db").0[0].id.clone();
            let mut ops = VolumeOps {
                clone: Some(CloneFrom {
                    network: "prod".into(),
                    node: "db".into(),
                    snapshot: id,
                    generation: 0,
                }),
                ..Default::default()
            };
            let out = store.prepare(&req(&lab, "w1", "db", ops.clone())).unwrap();
            let c = measurement(&out, "volume_clone_seconds");
            // The first write into the clone.
            let t = std::time::Instant::now();
            let mut w = std::fs::OpenOptions::new()
                .write(true)
                .open(lab.node_root.join("w1/db/volumes/data/big"))
                .unwrap();
            std::io::Write::write_all(&mut w, &[1u8; 8192]).unwrap();
            w.sync_all().unwrap();
            let first_write = t.elapsed().as_secs_f64();
            ops.sync_from = vec![SyncFrom {
                volume: "data".into(),
                network: "prod".into(),
                node: "db".into(),
                generation: 1,
            }];
            let out = store.prepare(&req(&lab, "w1", "db", ops)).unwrap();
            let y = measurement(&out, "volume_sync_seconds");
            eprintln!(
                "{} (128 MiB): first 8 KiB write into the clone {:.2} ms",
                want.name(),
                first_write * 1e3
            );
            (s, c, y)
        };
        eprintln!(
            "{} (128 MiB): snapshot {:.2} ms, clone {:.2} ms, sync {:.2} ms",
            want.name(),
            s * 1e3,
            c * 1e3,
            y * 1e3
        );
    }
}

#[test]
fn a_lazy_store_makes_its_pool_only_when_a_node_needs_it() {
    crate::testns::require_root!();
    let lab = Lab::lazy(StoreKind::Btrfs);
    let store = lab.store();
    // A node removed before any needed the pool: nothing is made to look.
    assert!(!store.has_node("prod", "db").unwrap());
    assert!(store.pool().is_none());
    assert!(!super::pool::image_of(&lab.pool_dir).exists());
    store.prepare(&req(&lab, "prod", "db", asked(0))).unwrap();
    assert_eq!(store.method(), Some(Method::Btrfs));
    assert!(btrfs::on_btrfs(&lab.pool_dir));
    assert!(store.has_node("prod", "db").unwrap());
}

/// Dirty pages of `f` in the page cache (cachestat(2), Linux 6.5+; `None` before).
fn dirty_pages(f: &std::fs::File) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: 0, len: 0 };
    let mut st = Cachestat::default();
    // SAFETY: both structs are the kernel's layout and live across the call.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Cachestat,
            0u32,
        )
    };
    (rc == 0).then_some(st.nr_dirty + st.nr_writeback)
}

#[test]
fn the_flusher_writes_the_pool_back_so_a_snapshot_finds_nothing_dirty() {
    crate::testns::require_root!();
    let lab = Lab::new(StoreKind::Btrfs);
    let store = lab.store();
    store.prepare(&req(&lab, "prod", "db", asked(0))).unwrap();
    let path = lab.node_root.join("prod/db/volumes/data/f");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![7u8; 16 << 20]).unwrap();
    let Some(dirty) = dirty_pages(&f) else {
        eprintln!("skipped: no cachestat(2) on this kernel");
        return;
    };
    // The kernel keeps it dirty for up to 30 s (vm.dirty_expire_centisecs).
    assert!(dirty > 1000, "16 MiB just written: {dirty} dirty pages");
    assert_eq!(
        super::flusher::flush_once(&lab.node_root),
        None,
        "not btrfs: not written back"
    );
    let flusher =
        super::flusher::Flusher::start(lab.pool_dir.clone(), Duration::from_millis(50)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while dirty_pages(&f).unwrap() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(dirty_pages(&f), Some(0), "written back by the flusher");
    // Stopping does not wait out the interval.
    let long =
        super::flusher::Flusher::start(lab.pool_dir.clone(), Duration::from_secs(3600)).unwrap();
    let t = std::time::Instant::now();
    drop(long);
    drop(flusher);
    assert!(t.elapsed() < Duration::from_secs(60), "drop joined at once");
}

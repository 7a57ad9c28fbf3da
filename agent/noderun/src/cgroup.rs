//! A cgroup per node, on cgroup v1 (a directory in the `cpu` and in the `memory`
//! hierarchy) or v2 (one directory in the unified hierarchy).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// CFS period used for CPU limits.
const PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// The hierarchies in use and where node groups go in each.
#[derive(Debug, Clone)]
pub(crate) struct Hierarchies {
    pub version: CgroupVersion,
    /// v1: `[cpu, memory]` bases; v2: `[unified]` base. Node groups are `<base>/<net>/<node>`.
    pub bases: Vec<PathBuf>,
}

fn cg_err(what: impl std::fmt::Display) -> Error {
    Error::Cgroup(what.to_string())
}

/// Mount points of cgroup filesystems: (fstype, mount point, super options).
fn cgroup_mounts() -> io::Result<Vec<(String, PathBuf, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split(' ').nth(4).unwrap_or("");
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let _source = r.next();
        let opts = r.next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            out.push((fstype.to_string(), PathBuf::from(mount), opts.to_string()));
        }
    }
    Ok(out)
}

/// This process's cgroup in the hierarchy with `controller` (`""` for v2).
fn own_path(controller: &str) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        if hit {
            return Ok(PathBuf::from(path.trim_start_matches('/')));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no {controller:?} line in /proc/self/cgroup"),
    ))
}

impl Hierarchies {
    /// Detects v1/v2 and places the node groups under `root_name`, itself under the
    /// hierarchy's root or under this process's own cgroup.
    pub fn detect(root_name: &str, under_own: bool) -> Result<Self, Error> {
        let mounts = cgroup_mounts().map_err(|e| cg_err(format!("reading mountinfo: {e}")))?;
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        if unified {
            let mount = mounts
                .iter()
                .find(|(t, m, _)| t == "cgroup2" && m == Path::new("/sys/fs/cgroup"))
                .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), |(_, m, _)| m.clone());
            let mut base = mount;
            if under_own {
                base.push(own_path("").map_err(|e| cg_err(format!("own cgroup: {e}")))?);
            }
            base.push(root_name);
            return Ok(Hierarchies {
                version: CgroupVersion::V2,
                bases: vec![base],
            });
        }
        let mut bases = Vec::new();
        for ctrl in ["cpu", "memory"] {
            let (_, mount, _) = mounts
                .iter()
                .find(|(t, _, o)| t == "cgroup" && o.split(',').any(|x| x == ctrl))
                .ok_or_else(|| {
                    cg_err(format!(
                        "no cgroup v1 hierarchy with the {ctrl} controller is mounted"
                    ))
                })?;
            let mut base = mount.clone();
            if under_own {
                base.push(own_path(ctrl).map_err(|e| cg_err(format!("own cgroup: {e}")))?);
            }
            base.push(root_name);
            bases.push(base);
        }
        Ok(Hierarchies {
            version: CgroupVersion::V1,
            bases,
        })
    }
}

/// One node's group(s).
#[derive(Debug, Clone)]
pub(crate) struct NodeCgroup {
    pub version: CgroupVersion,
    /// v1: `[cpu, memory]`; v2: `[unified]`.
    pub dirs: Vec<PathBuf>,
    /// The bases, to prune empty parents up to.
    bases: Vec<PathBuf>,
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value)
        .map_err(|e| cg_err(format!("writing {value:?} to {}: {e}", path.display())))
}

impl NodeCgroup {
    /// Makes (or finds) the group for `rel` (`<network>/<node>`, sanitised).
    pub fn create(h: &Hierarchies, rel: &Path) -> Result<Self, Error> {
        let dirs: Vec<PathBuf> = h.bases.iter().map(|b| b.join(rel)).collect();
        for (base, dir) in h.bases.iter().zip(&dirs) {
            if h.version == CgroupVersion::V2 {
                // Enable cpu and memory for the children of every level we own.
                let mut level = base.clone();
                std::fs::create_dir_all(&level)
                    .map_err(|e| cg_err(format!("creating {}: {e}", level.display())))?;
                let parent_ctl = base.parent().map(|p| p.join("cgroup.subtree_control"));
                if let Some(p) = parent_ctl {
                    let _ = std::fs::write(&p, "+cpu +memory");
                }
                for comp in rel.components() {
                    write(&level.join("cgroup.subtree_control"), "+cpu +memory")?;
                    level.push(comp);
                    std::fs::create_dir_all(&level)
                        .map_err(|e| cg_err(format!("creating {}: {e}", level.display())))?;
                }
            } else {
                std::fs::create_dir_all(dir)
                    .map_err(|e| cg_err(format!("creating {}: {e}", dir.display())))?;
            }
        }
        Ok(NodeCgroup {
            version: h.version,
            dirs,
            bases: h.bases.clone(),
        })
    }

    /// Writes the CPU and memory limits (0 = none).
    pub fn set_limits(&self, cpu_millis: u32, memory_bytes: u64) -> Result<(), Error> {
        let quota = u64::from(cpu_millis) * PERIOD_US / 1000;
        match self.version {
            CgroupVersion::V1 => {
                let (cpu, mem) = (&self.dirs[0], &self.dirs[1]);
                write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                let q = if cpu_millis == 0 {
                    "-1".to_string()
                } else {
                    quota.max(1000).to_string()
                };
                write(&cpu.join("cpu.cfs_quota_us"), &q)?;
                let m = if memory_bytes == 0 {
                    "-1".to_string()
                } else {
                    memory_bytes.to_string()
                };
                write(&mem.join("memory.limit_in_bytes"), &m)?;
            }
            CgroupVersion::V2 => {
                let d = &self.dirs[0];
                let c = if cpu_millis == 0 {
                    format!("max {PERIOD_US}")
                } else {
                    format!("{} {PERIOD_US}", quota.max(1000))
                };
                write(&d.join("cpu.max"), &c)?;
                let m = if memory_bytes == 0 {
                    "max".to_string()
                } else {
                    memory_bytes.to_string()
                };
                write(&d.join("memory.max"), &m)?;
            }
        }
        Ok(())
    }

    /// `cgroup.procs` of every group, opened for the child to write `0` into (joining them
    /// before it execs). Close-on-exec.
    pub fn procs_files(&self) -> Result<Vec<File>, Error> {
        self.dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&p)
                    .map_err(|e| cg_err(format!("opening {}: {e}", p.display())))
            })
            .collect()
    }

    /// Pids in the node's group (the memory hierarchy's on v1: every node process joins it).
    pub fn pids(&self) -> Vec<i32> {
        let dir = self.dirs.last().unwrap_or(&self.dirs[0]);
        let mut out: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for d in &self.dirs {
            if d != dir {
                for p in std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
        out
    }

    /// Sends `sig` to every process in the group; returns how many there were.
    pub fn signal_all(&self, sig: i32) -> usize {
        let pids = self.pids();
        for p in &pids {
            if *p > 1 {
                // SAFETY: kill(2) with a pid read from the node's own cgroup.
                unsafe { libc::kill(*p, sig) };
            }
        }
        pids.len()
    }

    /// Removes the groups (waiting up to `wait` for exiting tasks to leave) and prunes empty
    /// parents up to the bases.
    pub fn remove(&self, wait: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + wait;
        for d in &self.dirs {
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        return Err(cg_err(format!("removing {}: {e}", d.display())));
                    }
                }
            }
        }
        for (d, base) in self.dirs.iter().zip(&self.bases) {
            let mut p = d.parent();
            while let Some(dir) = p {
                if !dir.starts_with(base) || std::fs::remove_dir(dir).is_err() {
                    break;
                }
                p = dir.parent();
            }
        }
        Ok(())
    }
}

/// What a node's processes use, read from its cgroup(s): the evidence for a scaling
/// recommendation (CPU throttled by the quota, memory at its limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time of the group (v2 and v1 with cpuacct co-mounted: the group's cumulative
    /// counter; otherwise the sum over the group's live processes).
    pub cpu_seconds: f64,
    /// CFS periods with runnable tasks, and those in which the quota throttled them.
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_seconds: f64,
    pub memory_bytes: u64,
    /// `None`: no limit.
    pub memory_limit_bytes: Option<u64>,
    /// Times the memory limit was hit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub memory_limit_hits: u64,
}

/// `key value` lines (cpu.stat, memory.events): the value of `key`.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// CPU seconds of the live processes `pids` (utime + stime of /proc/<pid>/stat).
fn process_cpu_seconds(pids: &[i32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // The command may contain spaces and parentheses: fields start after the last ')'.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5): 12 and 13 after the comm.
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .sum::<f64>()
        / ticks
}

/// Reads the usage of the group in `dirs` (v1: `[cpu, memory]`, v2: `[unified]`).
pub(crate) fn usage(version: CgroupVersion, dirs: &[PathBuf], pids: &[i32]) -> Usage {
    let mut u = Usage::default();
    match version {
        CgroupVersion::V2 => {
            let Some(d) = dirs.first() else { return u };
            let cpu = read_trimmed(&d.join("cpu.stat")).unwrap_or_default();
            u.cpu_seconds = stat_value(&cpu, "usage_usec").unwrap_or(0) as f64 / 1e6;
            u.cpu_periods = stat_value(&cpu, "nr_periods").unwrap_or(0);
            u.cpu_throttled_periods = stat_value(&cpu, "nr_throttled").unwrap_or(0);
            u.cpu_throttled_seconds = stat_value(&cpu, "throttled_usec").unwrap_or(0) as f64 / 1e6;
            u.memory_bytes = read_trimmed(&d.join("memory.current"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            u.memory_limit_bytes = read_trimmed(&d.join("memory.max")).and_then(|v| v.parse().ok());
            u.memory_limit_hits = read_trimmed(&d.join("memory.events"))
                .and_then(|t| stat_value(&t, "max"))
                .unwrap_or(0);
        }
        CgroupVersion::V1 => {
            if let Some(cpu_dir) = dirs.first() {
                let cpu = read_trimmed(&cpu_dir.join("cpu.stat")).unwrap_or_default();
                u.cpu_periods = stat_value(&cpu, "nr_periods").unwrap_or(0);
                u.cpu_throttled_periods = stat_value(&cpu, "nr_throttled").unwrap_or(0);
                u.cpu_throttled_seconds =
                    stat_value(&cpu, "throttled_time").unwrap_or(0) as f64 / 1e9;
                u.cpu_seconds = match read_trimmed(&cpu_dir.join("cpuacct.usage"))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    Some(ns) => ns as f64 / 1e9,
                    None => process_cpu_seconds(pids),
                };
            }
            if let Some(mem) = dirs.get(1) {
                u.memory_bytes = read_trimmed(&mem.join("memory.usage_in_bytes"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                // v1 writes "no limit" as the largest page-aligned value.
                u.memory_limit_bytes = read_trimmed(&mem.join("memory.limit_in_bytes"))
                    .and_then(|v| v.parse::<u64>().ok())
                    .filter(|v| *v < (1 << 62));
                u.memory_limit_hits = read_trimmed(&mem.join("memory.failcnt"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    u
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    /// A directory of fake cgroup files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(files: &[(&str, &str)]) -> Dir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "weft-usage-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        Dir(d)
    }

    #[test]
    fn v2_usage_is_read_from_cpu_stat_and_memory_files() {
        let d = dir(&[
            (
                "cpu.stat",
                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 40\nnr_throttled 10\nthrottled_usec 750000\n",
            ),
            ("memory.current", "104857600\n"),
            ("memory.max", "209715200\n"),
            ("memory.events", "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n"),
        ]);
        let u = usage(CgroupVersion::V2, &[d.path().to_path_buf()], &[]);
        assert_eq!(u.cpu_seconds, 2.5);
        assert_eq!((u.cpu_periods, u.cpu_throttled_periods), (40, 10));
        assert_eq!(u.cpu_throttled_seconds, 0.75);
        assert_eq!(u.memory_bytes, 104_857_600);
        assert_eq!(u.memory_limit_bytes, Some(209_715_200));
        assert_eq!(u.memory_limit_hits, 7);
        // "max": no limit.
        let d = dir(&[("memory.max", "max\n")]);
        assert_eq!(
            usage(CgroupVersion::V2, &[d.path().to_path_buf()], &[]).memory_limit_bytes,
            None
        );
    }

    #[test]
    fn v1_usage_reads_both_hierarchies_and_no_limit_is_none() {
        let cpu = dir(&[
            (
                "cpu.stat",
                "nr_periods 12\nnr_throttled 3\nthrottled_time 1500000000\n",
            ),
            ("cpuacct.usage", "4000000000\n"),
        ]);
        let mem = dir(&[
            ("memory.usage_in_bytes", "5000\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.failcnt", "2\n"),
        ]);
        let u = usage(
            CgroupVersion::V1,
            &[cpu.path().to_path_buf(), mem.path().to_path_buf()],
            &[],
        );
        assert_eq!(u.cpu_seconds, 4.0);
        assert_eq!((u.cpu_periods, u.cpu_throttled_periods), (12, 3));
        assert_eq!(u.cpu_throttled_seconds, 1.5);
        assert_eq!(u.memory_bytes, 5000);
        assert_eq!(u.memory_limit_bytes, None);
        assert_eq!(u.memory_limit_hits, 2);
    }

    #[test]
    fn without_cpuacct_the_cpu_time_of_the_live_processes_is_summed() {
        let cpu = dir(&[(
            "cpu.stat",
            "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
        )]);
        // This test process has used some CPU by now.
        let me = std::process::id() as i32;
        let busy = std::time::Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert!(x != 1);
        let u = usage(CgroupVersion::V1, &[cpu.path().to_path_buf()], &[me]);
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        // A pid that does not exist counts nothing.
        let none = usage(CgroupVersion::V1, &[cpu.path().to_path_buf()], &[i32::MAX]);
        assert_eq!(none.cpu_seconds, 0.0);
    }
}

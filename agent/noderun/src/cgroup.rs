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

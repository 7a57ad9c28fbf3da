//! The lab: hypervisor namespaces (bridge `br0`, controller uplink) and workload namespaces
//! (`eth0` with IPv4 and IPv6, host side `wl-<name>` on the bridge). With more than one
//! hypervisor, an underlay namespace joins them (bridge `ul0`, a veth into each hypervisor).
//! Drop removes it all.
//!
//! Addresses of lab X (only 198.18.0.0/15 and fd00::/8):
//! - 198.18.X.0/24, fd00:X::/64: workloads (host numbers from [`FIRST_HOST`], unique in
//!   the lab); hypervisor i's `br0` holds 198.18.X.(1+i) and fd00:X::(1+i). Each bridge is
//!   its own L2 segment until a test joins them (e.g. [`Lab::join_bridges`]).
//! - 198.19.X.(4i)/30: hypervisor i's controller uplink (root end .4i+1, `up0` .4i+2).
//!   Every hypervisor routes 198.19.X.0/27 through its own uplink, so all agents reach a
//!   controller bound on the first uplink's root address.
//! - 198.19.X.64/27, fd00:X:ff::/64: the underlay; hypervisor i's `ul0` holds
//!   198.19.X.(65+i) and fd00:X:ff::(1+i).
//! - 198.19.X.128/25: free for tests (shard pools).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::links::{self, Place};
use crate::names;
use crate::netns::{self, Netns};
use crate::vxlan::{Vxlan, VxlanSpec};

/// Where the lab keeps its lock files.
const LOCK_DIR: &str = "/run/weft-lab";
/// Where bpffs is mounted (`cargo xtask setup` mounts it).
const BPFFS: &str = "/sys/fs/bpf";
/// Bridge name in every hypervisor namespace.
pub const BRIDGE: &str = "br0";
/// Uplink name inside every hypervisor namespace.
pub const UPLINK: &str = "up0";
/// First host number of workload addresses (198.18.X.11, fd00:X::11, ...).
pub const FIRST_HOST: usize = 11;
/// At most this many hypervisors per lab (their bridge addresses sit below `FIRST_HOST`).
pub const MAX_HYPERVISORS: usize = 8;
/// Role (namespace name suffix) of the underlay namespace; no workload may be called so.
pub const UNDERLAY_ROLE: &str = "underlay";
/// The underlay bridge (in the underlay namespace) and the underlay port in every
/// hypervisor namespace.
pub const UNDERLAY: &str = "ul0";
/// MTU of the underlay: room for a 1500-byte frame plus VXLAN's 50 bytes.
pub const UNDERLAY_MTU: u32 = 1600;

static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// A hypervisor namespace: the bridge the workloads hang off and the uplink to the root
/// namespace where the controller listens.
#[derive(Debug)]
pub struct Hypervisor {
    pub name: String,
    pub netns: Netns,
    /// Bridge addresses, the workloads' default gateways.
    pub gateway4: String,
    pub gateway6: String,
    /// Root-namespace end of the uplink and its address (the controller binds here).
    pub uplink_root_if: String,
    pub uplink_root_addr: String,
    /// Hypervisor-namespace end (`up0`) address.
    pub uplink_addr: String,
    /// The port on the underlay (labs with more than one hypervisor).
    pub underlay: Option<UnderlayPort>,
}

/// A hypervisor's port on the underlay: `ul0` in its namespace, a veth to the underlay
/// bridge.
#[derive(Debug, Clone)]
pub struct UnderlayPort {
    /// `ul0`.
    pub dev: String,
    /// 198.19.X.(65+i), in 198.19.X.64/27.
    pub addr4: String,
    /// fd00:X:ff::(1+i), in fd00:X:ff::/64.
    pub addr6: String,
}

/// A workload namespace with `eth0`, and its host-side interface on a hypervisor.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub netns: Netns,
    pub ipv4: String,
    pub ipv6: String,
    /// `wl-<name>` in the hypervisor namespace.
    pub host_if: String,
    /// Index into `Lab::hypervisors()`.
    pub hypervisor: usize,
    /// The lab's temp dir (servers keep their state below it).
    pub dir: PathBuf,
}

impl Workload {
    /// `[fd00:X::N]`, for URLs.
    pub fn ipv6_url_host(&self) -> String {
        format!("[{}]", self.ipv6)
    }
}

/// Describes a lab before it is built.
#[derive(Debug, Default)]
pub struct LabBuilder {
    hypervisors: Vec<String>,
    workloads: Vec<(String, usize)>,
    shared: bool,
}

impl LabBuilder {
    /// Adds a hypervisor namespace; workloads added after it go on it.
    pub fn hypervisor(mut self, name: &str) -> Self {
        self.hypervisors.push(name.to_string());
        self
    }

    /// Adds a workload on the last hypervisor added (the first one, `hv1`, by default).
    pub fn workload(mut self, name: &str) -> Self {
        let hv = self.hypervisors.len().saturating_sub(1);
        self.workloads.push((name.to_string(), hv));
        self
    }

    /// Lets this lab run beside others (by default labs take a machine-wide lock and run
    /// one at a time, so timing-sensitive tests do not compete for 2 cores).
    pub fn shared(mut self) -> Self {
        self.shared = true;
        self
    }

    pub fn build(mut self) -> Result<Lab> {
        if self.hypervisors.is_empty() {
            self.hypervisors.push("hv1".to_string());
        }
        if self.hypervisors.len() > MAX_HYPERVISORS {
            bail!("at most {MAX_HYPERVISORS} hypervisors per lab");
        }
        let mut seen = std::collections::BTreeSet::new();
        for n in self
            .hypervisors
            .iter()
            .chain(self.workloads.iter().map(|(n, _)| n))
        {
            names::validate_role(n)?;
            if n == UNDERLAY_ROLE {
                bail!("{UNDERLAY_ROLE:?} is the underlay namespace's name");
            }
            if !seen.insert(n.clone()) {
                bail!("name {n:?} used twice in one lab");
            }
        }
        if self.workloads.len() + FIRST_HOST > 250 {
            bail!("too many workloads");
        }
        std::fs::create_dir_all(LOCK_DIR).with_context(|| format!("create {LOCK_DIR}"))?;
        let mut locks = Vec::new();
        if !self.shared {
            locks.push(lock(&Path::new(LOCK_DIR).join("lab.lock"), true)?);
        }
        let (x, xlock) = allocate_x()?;
        locks.push(xlock);
        sweep_stale(x);

        let run = names::run_id();
        let dir = std::env::temp_dir().join(format!("weft-lab-{run}-{x}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("remove old {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // Servers run as other users (postgres): let them traverse the lab dir.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;

        let mut lab = Lab {
            x,
            run,
            dir,
            hypervisors: Vec::new(),
            workloads: Vec::new(),
            underlay: None,
            _locks: locks,
        };
        if self.hypervisors.len() > 1 {
            let ns = Netns::create(&names::netns_name(&lab.run, x, UNDERLAY_ROLE))?;
            // Kept by the lab before anything exists in it, so a failure below cleans up.
            let ns = lab.underlay.insert(ns);
            let at = Place::Ns(ns);
            links::bridge(at, UNDERLAY)?;
            links::mtu(at, UNDERLAY, UNDERLAY_MTU)?;
        }
        for (i, name) in self.hypervisors.iter().enumerate() {
            lab.add_hypervisor(i, name)?;
        }
        for (i, (name, hv)) in self.workloads.iter().enumerate() {
            lab.add_workload(FIRST_HOST + i, name, *hv)?;
        }
        Ok(lab)
    }
}

/// A built lab. Dropping it kills everything still running in its namespaces, deletes
/// them (which removes their links) and removes the temp dir (kept after a panic, for
/// its logs).
#[derive(Debug)]
pub struct Lab {
    x: u8,
    run: String,
    dir: PathBuf,
    hypervisors: Vec<Hypervisor>,
    workloads: Vec<Workload>,
    /// The underlay namespace (labs with more than one hypervisor).
    underlay: Option<Netns>,
    _locks: Vec<File>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The lab's number: its subnets are 198.18.X.0/24, fd00:X::/64 and 198.19.X.0/24
    /// (see the module documentation for the layout).
    pub fn x(&self) -> u8 {
        self.x
    }

    /// The temp dir holding configs, logs and server state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hypervisors(&self) -> &[Hypervisor] {
        &self.hypervisors
    }

    /// The first hypervisor.
    pub fn hypervisor(&self) -> &Hypervisor {
        &self.hypervisors[0]
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    pub fn workload(&self, name: &str) -> Result<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.name == name)
            .with_context(|| format!("no workload {name:?} in this lab"))
    }

    /// The hypervisor called `name`, with its index into [`Lab::hypervisors`].
    pub fn hypervisor_named(&self, name: &str) -> Result<(usize, &Hypervisor)> {
        self.hypervisors
            .iter()
            .enumerate()
            .find(|(_, h)| h.name == name)
            .with_context(|| format!("no hypervisor {name:?} in this lab"))
    }

    /// The underlay namespace (bridge `ul0`), in labs with more than one hypervisor.
    pub fn underlay(&self) -> Option<&Netns> {
        self.underlay.as_ref()
    }

    /// Workloads on hypervisor `hv_index`.
    pub fn workloads_on(&self, hv_index: usize) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| w.hypervisor == hv_index)
            .collect()
    }

    /// Names of all namespaces of this lab (the underlay's last, when there is one).
    pub fn netns_names(&self) -> Vec<String> {
        self.hypervisors
            .iter()
            .map(|h| h.netns.name().to_string())
            .chain(self.workloads.iter().map(|w| w.netns.name().to_string()))
            .chain(self.underlay.iter().map(|u| u.name().to_string()))
            .collect()
    }

    /// The lab's directory on bpffs: each hypervisor's agent pins its maps and links in
    /// `<this>/<hypervisor>` (`--bpffs-dir`). Pins outlive the namespaces and the agents
    /// (a killed agent leaves them for the next), so the lab removes it when dropped and a
    /// later run removes those of runs that were killed.
    pub fn bpffs_dir(&self) -> PathBuf {
        Path::new(BPFFS).join(names::netns_name(&self.run, self.x, "pins"))
    }

    /// The name prefix of the network-node namespaces the agent of hypervisor `hv` makes
    /// (`--node-netns-prefix`): the lab's, so that they are swept with the lab.
    pub fn node_netns_prefix(&self, hv: &str) -> String {
        names::netns_name(&self.run, self.x, &format!("{hv}-n"))
    }

    /// Joins every hypervisor's `br0` into one L2 segment: a VXLAN device `vx<vni>` on each
    /// bridge, over the underlay, with every other hypervisor as a flooding peer. The
    /// devices live as long as the returned guards.
    #[must_use = "the VXLAN devices are removed when the guards drop"]
    pub fn join_bridges(&self, vni: u32) -> Result<Vec<Vxlan>> {
        let mut out = Vec::new();
        for hv in &self.hypervisors {
            let port = hv
                .underlay
                .as_ref()
                .context("joining bridges needs an underlay (more than one hypervisor)")?;
            let peers = self
                .hypervisors
                .iter()
                .filter(|o| o.name != hv.name)
                .filter_map(|o| o.underlay.as_ref().map(|p| p.addr4.clone()))
                .collect();
            let spec = VxlanSpec {
                name: format!("vx{vni}"),
                vni,
                local: port.addr4.clone(),
                underlay_dev: port.dev.clone(),
                peers,
                bridge: Some(BRIDGE.to_string()),
                ..VxlanSpec::default()
            };
            out.push(
                Vxlan::create(&hv.netns, &spec)
                    .with_context(|| format!("join {}'s bridge", hv.name))?,
            );
        }
        Ok(out)
    }

    /// Adds a workload to a running lab on the first hypervisor (its host-side interface
    /// appears on the hypervisor now, as when an orchestrator starts a VM or container).
    pub fn add_late_workload(&mut self, name: &str) -> Result<&Workload> {
        self.add_late_workload_on(name, 0)
    }

    /// As [`Lab::add_late_workload`], on hypervisor `hv_index`.
    pub fn add_late_workload_on(&mut self, name: &str, hv_index: usize) -> Result<&Workload> {
        names::validate_role(name)?;
        if name == UNDERLAY_ROLE {
            bail!("{UNDERLAY_ROLE:?} is the underlay namespace's name");
        }
        if self.workloads.iter().any(|w| w.name == name)
            || self.hypervisors.iter().any(|h| h.name == name)
        {
            bail!("name {name:?} used twice in one lab");
        }
        if hv_index >= self.hypervisors.len() {
            bail!("no hypervisor {hv_index} in this lab");
        }
        // Host numbers stay unique after removals: one past the highest in use.
        let host = self
            .workloads
            .iter()
            .filter_map(|w| w.ipv4.rsplit('.').next()?.parse::<usize>().ok())
            .max()
            .map_or(FIRST_HOST, |h| h + 1);
        if host > 250 {
            bail!("too many workloads");
        }
        self.add_workload(host, name, hv_index)?;
        self.workloads.last().context("workload just added")
    }

    /// Removes a workload: its namespace and with it both ends of its veth.
    pub fn remove_workload(&mut self, name: &str) -> Result<()> {
        let i = self
            .workloads
            .iter()
            .position(|w| w.name == name)
            .with_context(|| format!("no workload {name:?} in this lab"))?;
        // Dropping the guard kills its processes and deletes the namespace.
        self.workloads.remove(i);
        Ok(())
    }

    fn add_hypervisor(&mut self, i: usize, name: &str) -> Result<()> {
        let x = self.x;
        let netns = Netns::create(&names::netns_name(&self.run, x, name))?;
        // With br_netfilter loaded, bridged IP frames would go through the hypervisor's
        // netfilter, which validates and drops malformed IP headers: a lab bridge is a plain
        // switch. Best effort: the keys only exist when the module is loaded.
        for fam in ["iptables", "ip6tables", "arptables"] {
            let _ = netns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.bridge.bridge-nf-call-{fam}=0"),
            ]);
        }
        let at = Place::Ns(&netns);
        links::bridge(at, BRIDGE)?;
        let gateway4 = format!("198.18.{x}.{}", 1 + i);
        let gateway6 = format!("fd00:{x}::{}", 1 + i);
        links::addr(at, BRIDGE, &format!("{gateway4}/24"))?;
        links::addr(at, BRIDGE, &format!("{gateway6}/64"))?;
        let uplink_root_if = names::uplink_name(x, i);
        let uplink_root_addr = format!("198.19.{x}.{}", 4 * i + 1);
        let uplink_addr = format!("198.19.{x}.{}", 4 * i + 2);
        let hv = Hypervisor {
            name: name.to_string(),
            netns,
            gateway4,
            gateway6,
            uplink_root_if,
            uplink_root_addr,
            uplink_addr,
            underlay: None,
        };
        // Pushed before the uplink exists so a failure below still cleans up.
        self.hypervisors.push(hv);
        let hv = &self.hypervisors[i];
        links::veth(
            Place::Root,
            &hv.uplink_root_if,
            Place::Ns(&hv.netns),
            UPLINK,
        )?;
        links::addr(
            Place::Root,
            &hv.uplink_root_if,
            &format!("{}/30", hv.uplink_root_addr),
        )?;
        links::addr(
            Place::Ns(&hv.netns),
            UPLINK,
            &format!("{}/30", hv.uplink_addr),
        )?;
        if i > 0 {
            // The controller binds on the first uplink's root end: reach it (and every
            // other uplink's) through this hypervisor's own uplink.
            Place::Ns(&hv.netns)
                .ip(&[
                    "route",
                    "add",
                    &format!("198.19.{x}.0/27"),
                    "via",
                    &hv.uplink_root_addr,
                ])
                .with_context(|| format!("route to the uplinks from {name}"))?;
        }
        if let Some(ul) = &self.underlay {
            let port = UnderlayPort {
                dev: UNDERLAY.to_string(),
                addr4: format!("198.19.{x}.{}", 65 + i),
                addr6: format!("fd00:{x}:ff::{}", 1 + i),
            };
            let ul_at = Place::Ns(ul);
            let hv_at = Place::Ns(&hv.netns);
            let ul_if = format!("ul-{name}");
            links::veth(ul_at, &ul_if, hv_at, UNDERLAY)?;
            links::mtu(ul_at, &ul_if, UNDERLAY_MTU)?;
            links::mtu(hv_at, UNDERLAY, UNDERLAY_MTU)?;
            links::enslave(ul_at, &ul_if, UNDERLAY)?;
            links::addr(hv_at, UNDERLAY, &format!("{}/27", port.addr4))?;
            links::addr(hv_at, UNDERLAY, &format!("{}/64", port.addr6))?;
            self.hypervisors[i].underlay = Some(port);
        }
        Ok(())
    }

    fn add_workload(&mut self, host: usize, name: &str, hv_index: usize) -> Result<()> {
        let x = self.x;
        let netns = Netns::create(&names::netns_name(&self.run, x, name))?;
        let w = Workload {
            name: name.to_string(),
            netns,
            ipv4: format!("198.18.{x}.{host}"),
            ipv6: format!("fd00:{x}::{host}"),
            host_if: names::host_ifname(name),
            hypervisor: hv_index,
            dir: self.dir.clone(),
        };
        self.workloads.push(w);
        let w = self.workloads.last().context("workload just pushed")?;
        let hv = &self.hypervisors[hv_index];
        let hv_at = Place::Ns(&hv.netns);
        let w_at = Place::Ns(&w.netns);
        links::veth(hv_at, &w.host_if, w_at, "eth0")?;
        links::enslave(hv_at, &w.host_if, BRIDGE)?;
        links::addr(w_at, "eth0", &format!("{}/24", w.ipv4))?;
        links::addr(w_at, "eth0", &format!("{}/64", w.ipv6))?;
        links::default_route(w_at, &hv.gateway4)?;
        links::default_route(w_at, &hv.gateway6)?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let uplinks: Vec<String> = self
            .hypervisors
            .iter()
            .map(|h| h.uplink_root_if.clone())
            .collect();
        self.workloads.clear();
        self.hypervisors.clear();
        self.underlay = None;
        // What the agents made in the lab's name (network nodes), also when a test
        // failed before deleting its networks.
        let mine = names::netns_name(&self.run, self.x, "");
        if let Ok(all) = netns::list() {
            for name in all.iter().filter(|n| n.starts_with(&mine)) {
                netns::delete_netns(name);
            }
        }
        for u in uplinks {
            links::delete_root_link(&u);
        }
        // An agent's volume pool (a loop-mounted file under the lab directory), also when
        // the agent was killed before it could unmount it.
        crate::mounts::detach_under(&self.dir);
        // Agents' pins (after the namespaces: their links are defunct by now).
        remove_pins(&self.bpffs_dir());
        if std::thread::panicking() || std::env::var_os("WEFT_LAB_KEEP").is_some() {
            eprintln!("lab logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Opens and flocks `path`. Blocking: waits (and says so) for the holder to finish.
fn lock(path: &Path, blocking: bool) -> Result<File> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("open lock {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(f);
    }
    if !blocking {
        bail!("{} is held", path.display());
    }
    eprintln!(
        "waiting for another lab to finish ({} is held)",
        path.display()
    );
    // SAFETY: as above.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    if rc != 0 {
        bail!(
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(f)
}

/// Picks a lab number X no live lab holds (a flock per X, released when its process dies).
fn allocate_x() -> Result<(u8, File)> {
    let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
    let start = (std::process::id()
        .wrapping_mul(31)
        .wrapping_add(seq.wrapping_mul(7)))
        % 254;
    for k in 0..254u32 {
        let x = u8::try_from((start + k) % 254 + 1).context("lab number")?;
        if let Ok(f) = lock(&Path::new(LOCK_DIR).join(format!("x-{x}.lock")), false) {
            return Ok((x, f));
        }
    }
    bail!("all 254 lab numbers are in use")
}

/// Removes namespaces left by lab processes that no longer exist, and root-namespace
/// uplinks of lab number `x` (which we now hold).
fn sweep_stale(x: u8) {
    if let Ok(all) = netns::list() {
        for name in all {
            if let Some(pid) = names::netns_owner(&name)
                && !process_alive(pid)
            {
                eprintln!("removing namespace {name} left by a finished run");
                netns::delete_netns(&name);
            }
        }
    }
    for i in 0..MAX_HYPERVISORS {
        links::delete_root_link(&names::uplink_name(x, i));
    }
    if let Ok(entries) = std::fs::read_dir(BPFFS) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = names::netns_owner(&name)
                && !process_alive(pid)
            {
                eprintln!("removing pins {name} left by a finished run");
                remove_pins(&e.path());
            }
        }
    }
}

/// Removes a directory of pins (unlinking a pinned link detaches it, a pinned map is freed
/// with its last reference). Missing is fine; anything else is said.
fn remove_pins(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("cannot remove {}: {e}", dir.display());
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

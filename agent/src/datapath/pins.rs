//! The datapath pinned in bpffs, so that an agent restart or upgrade neither loses flow
//! state nor leaves a packet unobserved.
//!
//! # What is pinned
//! One directory per agent (`--bpffs-dir`, default `/sys/fs/bpf/weft/<host-id>`):
//!
//! ```text
//! <dir>/maps/FLOWS            the flow table (cumulative counters per flow)
//! <dir>/maps/FLOW_REPORTED    what the agent last exported of each flow (delta baseline)
//! <dir>/maps/FLOW_EVENTS      the final state of flows that ended (their entries are gone)
//! <dir>/maps/STEER_*          steering's policy entries, steered connections, counters
//! <dir>/maps/SHADOW_*         the shadow taps' policies, source prefixes, sampled
//!                             connections, counters, and SHADOW_COPIES, the ring of copies
//! <dir>/links/<ifindex>_<hook>_<program>   the tcx links of the flow observer, steering
//!                             and the shadow taps
//! ```
//!
//! - **Maps.** At start each pinned map is compared with this agent's definition of it
//!   (type, key and value size, capacity, flags: [`compat`]). A match is reused: the
//!   programs are loaded against the pinned map, so every counter continues. A mismatch
//!   (an upgrade that changed a layout) is logged saying what changed, the old pin is
//!   removed and the map starts empty; the agent never fails on it. `FLOWS`,
//!   `FLOW_REPORTED` and `FLOW_EVENTS` are one unit ([`plan_group`]): counters without
//!   their baseline would be exported twice, a baseline without its counters means
//!   nothing, so if either starts fresh both do (an agent from before `FLOW_EVENTS` was
//!   pinned leaves the other two: they are reused and the ring is made beside them). Steering's maps are another unit ([`STEER_MAPS`]): its slots are read
//!   back from them at start (`crate::steer`'s `adopt`), so a steered connection keeps its
//!   slot and its side. The shadow taps' maps are a third unit ([`TAP_MAPS`]), the ring
//!   their copies leave the kernel through included: a tap on the same interface keeps its
//!   counter slot and source prefixes (`crate::shadow::tap`), its connections keep their
//!   sampling decision, and the copies the programs made while no agent ran wait in the
//!   ring (16 MiB; a full ring drops a copy, never a packet, and counts it in the tap's
//!   `ring_full` counter, `weft_agent_shadow_ring_full_total`). Records carry a layout
//!   version, so one an agent of another version left in a reused ring is not decoded.
//! - **Links.** The tcx links of the flow observer, steering and the shadow taps are
//!   pinned. A restarted agent finds the link
//!   of an interface still attached (the previous agent's program still running in it,
//!   counting into the pinned `FLOWS`) and swaps its own program in with one
//!   `BPF_LINK_UPDATE` (`SchedClassifier::attach_to_link`): at every instant exactly one
//!   observer runs on the hook, so no packet passes unobserved and none is counted twice,
//!   and the link keeps its place among the programs of the hook. A link whose interface
//!   went away while no agent ran cannot be updated: its pin is removed and the interface,
//!   if it is there again, gets a new link. Pins of interfaces the new agent does not
//!   observe are removed after its first full listing of the links; those of steering's
//!   programs once steering's first full apply is done, those of the taps once the taps'
//!   first full reconcile is done (each owner removes the unheld pins of its own programs
//!   only: another's may still wait to be taken over).
//! - **Shadow taps across a restart.** The new agent reads the ring only after its first
//!   full reconcile has set the taps up again, so the copies that waited are routed to
//!   their taps and streamed to the sinks (over new streams: a sink replays each over a
//!   new connection into the shadow). What the previous agent had read from the ring but
//!   not yet streamed is lost (a kill -9: at most the few milliseconds in the reader, the
//!   assembler and the sink queues; a SIGTERM with `--keep-pins-on-exit` streams what is
//!   queued within the grace period). A connection it had begun streaming is resumed by
//!   the new agent at the client's next request (the kernel marks where a client's turn
//!   starts, `TapRecord::mark`; `crate::shadow::reassembly`), never in the middle of one:
//!   the request cut by the stop is the one that may miss the shadow, none is replayed
//!   twice or in part.
//! - **Flows that end while no agent runs.** The kernel deletes a flow's entry when it
//!   posts the flow's final state to `FLOW_EVENTS`, so that ring is pinned with the flow
//!   table: the next agent reads the ends that waited there (256 KiB, about 1,700 flows;
//!   an end that does not fit leaves its entry in `FLOWS` with the `END_REPORTED` bit,
//!   where the drain finds it).
//! - **Not pinned:** the payload-sample ring, the L7 sessions in user space (request
//!   counts continue from the kernel's exact counter; a parse in progress starts over),
//!   and the taps' reassembly and sink streams in user space (see above).
//!
//! # Exporting each byte once across a restart
//! Records are deltas: the agent reports what changed on a flow since its last record of
//! that flow ([`crate::flows::FlowTracker`]). The baseline of that subtraction is what
//! must survive, and it does, in `FLOW_REPORTED`: the collector writes a flow's entry when
//! it makes a record of it (and deletes it with the flow), and a new agent seeds its
//! tracker from the map. So after a restart the first record of a running flow is the
//! traffic since the last record the previous agent made, never the flow from its start,
//! and it is not marked as a new connection.
//!
//! - **Clean stop** (SIGTERM/SIGINT): the collector reads the ring buffers and the whole
//!   flow map a last time and the exporter hands every queued record to the controller
//!   within its grace period (3 s) before the agent exits. With `--keep-pins-on-exit` the
//!   programs stay attached and keep counting into `FLOWS` until the next agent takes the
//!   links over; that agent reports exactly the traffic since the last drain. Nothing is
//!   lost or counted twice unless the controller was unreachable for the whole grace
//!   period (those records are dropped and counted in
//!   `weft_agent_records_dropped_total`, as at any stop).
//! - **kill -9**: the baseline is written when a record is made, not when the controller
//!   acknowledges it, so the records the agent had made but the controller had not yet
//!   acknowledged (at most what was queued: the last drain interval's records while the
//!   controller keeps up) are lost, never sent twice. Writing the baseline at the
//!   acknowledgement instead would resend them, but the controller deduplicates batches
//!   per agent instance and a new agent is a new instance, so a batch merged whose
//!   acknowledgement the killed agent never read would be counted twice; weft prefers a
//!   bounded undercount to a double count.

use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::Hook;

/// Maps whose contents only make sense together: pinned and reused across restarts as
/// one unit (see [`plan_group`]).
#[derive(Debug, Clone, Copy)]
pub struct MapGroup {
    pub maps: &'static [&'static str],
    /// Members an earlier agent may not have pinned and whose absence loses nothing (a
    /// ring added in a later version): created beside the others, which are still reused.
    pub added_later: &'static [&'static str],
    /// What starting the group fresh loses (for the log).
    pub fresh_means: &'static str,
}

/// The flow table and the records' baseline.
pub const FLOW_MAPS: MapGroup = MapGroup {
    maps: &["FLOWS", "FLOW_REPORTED", "FLOW_EVENTS"],
    // Agents before the kernel deleted ended flows itself did not pin it.
    added_later: &["FLOW_EVENTS"],
    fresh_means: "its flows are counted again from now",
};

/// Steering: the slots' policy entries, the steered connections and the slots' counters.
/// The agent reads its slot assignment back from them at start (`crate::steer`), so a
/// connection steered before a restart keeps its slot and its side.
pub const STEER_MAPS: MapGroup = MapGroup {
    maps: &[
        "STEER_ORIGINS",
        "STEER_PORTS",
        "STEER_RETURNS",
        "STEER_TUNNELS",
        "STEER_CONNS",
        "STEER_STATS",
    ],
    added_later: &[],
    fresh_means: "connections steered before are reset, new ones are decided afresh",
};

/// The shadow taps: their policies and source prefixes, the sampled connections (with
/// whose turn it is), the counters, and the ring the copies wait in. The agent reads its
/// taps' slots and policy generations back from them at start (`crate::shadow::tap`), so
/// sampling decisions and counters continue and the copies taken while no agent ran are
/// streamed.
pub const TAP_MAPS: MapGroup = MapGroup {
    maps: &[
        "SHADOW_POLICY",
        "SHADOW_SOURCES",
        "SHADOW_CONNS",
        "SHADOW_COUNTERS",
        "SHADOW_COPIES",
    ],
    added_later: &[],
    fresh_means: "the taps' counters start at zero, connections sampled before are no longer copied, copies waiting in the ring are dropped",
};

/// The groups of maps whose contents are state.
pub const PINNED_GROUPS: [MapGroup; 3] = [FLOW_MAPS, STEER_MAPS, TAP_MAPS];

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "{path} is not on a BPF filesystem (mount one: `mount -t bpf bpf /sys/fs/bpf`, or choose another --bpffs-dir)"
    )]
    NotBpffs { path: PathBuf },
    #[error("creating {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("reading the map definitions of the eBPF object: {0}")]
    Object(#[source] Box<aya_obj::ParseError>),
    #[error("map {0} is not in the eBPF object")]
    NoMap(String),
    #[error("removing {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("listing {path}: {source}")]
    List { path: PathBuf, source: io::Error },
}

/// What a map is, as far as reusing it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapShape {
    /// `bpf_map_type`.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// Whether a pinned map can serve as this agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat {
    Reuse,
    /// Why not (what changed, old -> new).
    Fresh(String),
}

/// Compares a pinned map with the definition this agent loads.
pub fn compat(pinned: &MapShape, wanted: &MapShape) -> Compat {
    let fields = [
        ("type", pinned.map_type, wanted.map_type),
        ("key size", pinned.key_size, wanted.key_size),
        ("value size", pinned.value_size, wanted.value_size),
        ("capacity", pinned.max_entries, wanted.max_entries),
        ("flags", pinned.flags, wanted.flags),
    ];
    let changed: Vec<String> = fields
        .iter()
        .filter(|(_, old, new)| old != new)
        .map(|(what, old, new)| format!("{what} {old} -> {new}"))
        .collect();
    if changed.is_empty() {
        Compat::Reuse
    } else {
        Compat::Fresh(changed.join(", "))
    }
}

/// What to do with one map of a group at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing pinned: create it and pin it.
    Create,
    /// Load the programs against the pinned map.
    Reuse,
    /// Remove the pin (saying why), create it anew and pin it.
    Fresh(String),
}

/// Decides for a group of maps that only make sense together: `found` holds each map's
/// name and, when it is pinned, whether the pin fits. All are reused or none is, except
/// that a member of `added_later` that is not pinned is created beside the others.
pub fn plan_group<'a>(
    found: &[(&'a str, Option<Compat>)],
    added_later: &[&str],
) -> Vec<(&'a str, Plan)> {
    let why_not = found.iter().find_map(|(name, c)| match c {
        Some(Compat::Fresh(why)) => Some(format!("{name}'s layout changed ({why})")),
        Some(Compat::Reuse) => None,
        None => None,
    });
    let pinned = found.iter().filter(|(_, c)| c.is_some()).count();
    let why_not = why_not.or_else(|| {
        let missing: Vec<&str> = found
            .iter()
            .filter(|(n, c)| c.is_none() && !added_later.contains(n))
            .map(|(n, _)| *n)
            .collect();
        (pinned > 0 && !missing.is_empty()).then(|| format!("{} is not pinned", missing.join(", ")))
    });
    found
        .iter()
        .map(|(name, c)| {
            let plan = match (c, &why_not) {
                (None, _) => Plan::Create,
                (Some(_), None) => Plan::Reuse,
                (Some(_), Some(why)) => Plan::Fresh(why.clone()),
            };
            (*name, plan)
        })
        .collect()
}

/// The default directory of the agent of `host_id`: `/sys/fs/bpf/weft/<host-id>` (bpffs
/// refuses names with dots, so a dotted host name's dots become `_`).
pub fn default_dir(host_id: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/weft").join(bpffs_name(host_id))
}

/// `name` as a bpffs file name: no `.` and no `/`.
fn bpffs_name(name: &str) -> String {
    name.chars()
        .map(|c| if c == '.' || c == '/' { '_' } else { c })
        .collect()
}

/// One agent's pin directory.
#[derive(Debug, Clone)]
pub struct Pins {
    dir: PathBuf,
}

/// What [`Pins::remove_all`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    pub links: usize,
    pub maps: usize,
}

impl Pins {
    /// Makes the directory (and its `maps/` and `links/`) on bpffs.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        mount_bpffs_if_missing(dir)?;
        for sub in ["maps", "links"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| PinError::Dir {
                path: path.clone(),
                source,
            })?;
        }
        if fs_type(dir) != Some(BPF_FS_MAGIC) {
            return Err(PinError::NotBpffs {
                path: dir.to_owned(),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The directory, when it exists (for removal: nothing is made).
    pub fn existing(dir: &Path) -> Option<Self> {
        dir.is_dir().then(|| Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(bpffs_name(name))
    }

    pub fn link_path(&self, ifindex: u32, hook: Hook, program: &str) -> PathBuf {
        self.dir
            .join("links")
            .join(bpffs_name(&format!("{ifindex}_{hook}_{program}")))
    }

    /// The link pins there are now of the programs in `programs`.
    pub fn link_pins(&self, programs: &[&str]) -> Result<Vec<PathBuf>, PinError> {
        Ok(list(&self.dir.join("links"))?
            .into_iter()
            .filter(|p| link_program(p).is_some_and(|n| programs.contains(&n)))
            .collect())
    }

    /// Decides, for the maps of each of `groups`, whether their pins are reused (see
    /// [`plan_group`]); removes the pins that do not fit, saying why. Returns each map's
    /// pin path for the loader (`EbpfLoader::map_pin_path`: reused when pinned, else
    /// created and pinned).
    pub fn prepare_maps(
        &self,
        object: &[u8],
        groups: &[MapGroup],
    ) -> Result<Vec<(&'static str, PathBuf)>, PinError> {
        let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(Box::new(e)))?;
        let mut paths = Vec::new();
        for group in groups {
            paths.extend(self.prepare_group(&obj, group)?);
        }
        Ok(paths)
    }

    fn prepare_group(
        &self,
        obj: &aya_obj::Object,
        group: &MapGroup,
    ) -> Result<Vec<(&'static str, PathBuf)>, PinError> {
        let mut found = Vec::new();
        for &name in group.maps {
            let def = obj
                .maps
                .get(name)
                .ok_or_else(|| PinError::NoMap(name.to_owned()))?;
            let wanted = MapShape {
                map_type: def.map_type(),
                key_size: def.key_size(),
                value_size: def.value_size(),
                max_entries: def.max_entries(),
                flags: def.map_flags(),
            };
            let path = self.map_path(name);
            let c = if path.exists() {
                Some(match pinned_shape(&path) {
                    Ok(pinned) => compat(&pinned, &wanted),
                    Err(e) => Compat::Fresh(format!("the pin cannot be read: {e}")),
                })
            } else {
                None
            };
            found.push((name, c));
        }
        let mut paths = Vec::new();
        for (name, plan) in plan_group(&found, group.added_later) {
            let path = self.map_path(name);
            match plan {
                Plan::Create => info!(map = name, pin = %path.display(), "map created and pinned"),
                Plan::Reuse => {
                    info!(map = name, pin = %path.display(), "reusing the pinned map: its state continues")
                }
                Plan::Fresh(why) => {
                    warn!(
                        map = name,
                        pin = %path.display(),
                        reason = %why,
                        consequence = group.fresh_means,
                        "the pinned map does not fit this agent: starting it fresh"
                    );
                    remove_file(&path)?;
                }
            }
            paths.push((name, path));
        }
        Ok(paths)
    }

    /// Removes every pin and the directory: link pins first (a link whose last reference
    /// was its pin is detached with it), then the maps.
    pub fn remove_all(&self) -> Result<Removed, PinError> {
        let mut removed = Removed::default();
        for (sub, count) in [("links", &mut removed.links), ("maps", &mut removed.maps)] {
            let dir = self.dir.join(sub);
            if !dir.exists() {
                continue;
            }
            for path in list(&dir)? {
                remove_file(&path)?;
                *count += 1;
            }
            remove_dir(&dir)?;
        }
        remove_dir(&self.dir)?;
        Ok(removed)
    }
}

/// The program of a link pin (`<ifindex>_<hook>_<program>`).
fn link_program(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()?.splitn(3, '_').nth(2)
}

fn pinned_shape(path: &Path) -> Result<MapShape, aya::maps::MapError> {
    let info = aya::maps::MapInfo::from_pin(path)?;
    Ok(MapShape {
        map_type: info.map_type()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
        flags: info.map_flags(),
    })
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PinError::List {
        path: dir.to_owned(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    out.sort();
    Ok(out)
}

/// Removes a pin; a missing one is not an error.
pub fn remove_file(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PinError::Remove {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<(), PinError> {
    match std::fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PinError::Remove {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// The standard bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs on `/sys/fs/bpf` when `dir` is under it and nothing is mounted there (as
/// in a fresh mount namespace, e.g. `ip netns exec`, which mounts a new sysfs without it;
/// systemd mounts it on a host). Pins in a private mount namespace last as long as it.
fn mount_bpffs_if_missing(dir: &Path) -> Result<(), PinError> {
    let base = Path::new(BPFFS);
    if !dir.starts_with(base) || fs_type(base) == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
    let (source, target, kind) = (c("bpf"), c(BPFFS), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            kind.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Dir {
            path: base.to_owned(),
            source: io::Error::other(format!(
                "no BPF filesystem is mounted there and mounting one failed: {}",
                io::Error::last_os_error()
            )),
        });
    }
    tracing::info!(path = BPFFS, "mounted a BPF filesystem (none was mounted)");
    Ok(())
}

fn fs_type(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statfs is a valid out-parameter; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOWS: MapShape = MapShape {
        map_type: 9, // BPF_MAP_TYPE_LRU_HASH
        key_size: 44,
        value_size: 96,
        max_entries: 65_536,
        flags: 0,
    };

    #[test]
    fn a_pinned_map_of_the_same_definition_is_reused() {
        assert_eq!(compat(&FLOWS, &FLOWS), Compat::Reuse);
    }

    #[test]
    fn a_changed_layout_says_what_changed() {
        let wanted = MapShape {
            value_size: 104,
            max_entries: 131_072,
            ..FLOWS
        };
        assert_eq!(
            compat(&FLOWS, &wanted),
            Compat::Fresh("value size 96 -> 104, capacity 65536 -> 131072".into())
        );
        let hash = MapShape {
            map_type: 1,
            ..FLOWS
        };
        assert!(matches!(compat(&FLOWS, &hash), Compat::Fresh(w) if w == "type 9 -> 1"));
    }

    #[test]
    fn a_group_is_reused_only_when_every_member_fits() {
        let all = plan_group(
            &[
                ("FLOWS", Some(Compat::Reuse)),
                ("FLOW_REPORTED", Some(Compat::Reuse)),
            ],
            &[],
        );
        assert_eq!(
            all,
            vec![("FLOWS", Plan::Reuse), ("FLOW_REPORTED", Plan::Reuse)]
        );
        let none = plan_group(&[("FLOWS", None), ("FLOW_REPORTED", None)], &[]);
        assert_eq!(
            none,
            vec![("FLOWS", Plan::Create), ("FLOW_REPORTED", Plan::Create)]
        );
    }

    #[test]
    fn counters_never_outlive_their_baseline() {
        // The baseline's layout changed: the counters must not be reused without it.
        let plan = plan_group(
            &[
                ("FLOWS", Some(Compat::Reuse)),
                (
                    "FLOW_REPORTED",
                    Some(Compat::Fresh("value size 96 -> 104".into())),
                ),
            ],
            &[],
        );
        let why = "FLOW_REPORTED's layout changed (value size 96 -> 104)".to_owned();
        assert_eq!(
            plan,
            vec![
                ("FLOWS", Plan::Fresh(why.clone())),
                ("FLOW_REPORTED", Plan::Fresh(why))
            ]
        );
        // The baseline is missing (removed by hand): the counters start over too.
        let plan = plan_group(
            &[("FLOWS", Some(Compat::Reuse)), ("FLOW_REPORTED", None)],
            &["FLOW_EVENTS"],
        );
        assert_eq!(
            plan,
            vec![
                ("FLOWS", Plan::Fresh("FLOW_REPORTED is not pinned".into())),
                ("FLOW_REPORTED", Plan::Create)
            ]
        );
    }

    #[test]
    fn a_member_added_later_is_created_beside_the_reused_ones() {
        // An agent from before FLOW_EVENTS was pinned: its counters and baseline continue.
        let found = [
            ("FLOWS", Some(Compat::Reuse)),
            ("FLOW_REPORTED", Some(Compat::Reuse)),
            ("FLOW_EVENTS", None),
        ];
        assert_eq!(
            plan_group(&found, FLOW_MAPS.added_later),
            vec![
                ("FLOWS", Plan::Reuse),
                ("FLOW_REPORTED", Plan::Reuse),
                ("FLOW_EVENTS", Plan::Create)
            ]
        );
        // Not listed as added later, its absence starts the group over.
        assert!(matches!(
            &plan_group(&found, &[])[0].1,
            Plan::Fresh(why) if why == "FLOW_EVENTS is not pinned"
        ));
        // Added later but pinned with another layout: the group starts over as usual.
        let changed = [
            ("FLOWS", Some(Compat::Reuse)),
            ("FLOW_REPORTED", Some(Compat::Reuse)),
            ("FLOW_EVENTS", Some(Compat::Fresh("capacity 1 -> 2".into()))),
        ];
        assert!(
            plan_group(&changed, FLOW_MAPS.added_later)
                .iter()
                .all(|(_, p)| matches!(p, Plan::Fresh(_)))
        );
    }

    #[test]
    fn pin_names_have_no_dots() {
        assert_eq!(
            default_dir("hv1.example.org"),
            PathBuf::from("/sys/fs/bpf/weft/hv1_example_org")
        );
        let pins = Pins {
            dir: PathBuf::from("/sys/fs/bpf/x"),
        };
        let path = pins.link_path(7, Hook::Ingress, "flow_ingress");
        assert_eq!(
            path,
            PathBuf::from("/sys/fs/bpf/x/links/7_ingress_flow_ingress")
        );
        assert_eq!(link_program(&path), Some("flow_ingress"));
        let steer = pins.link_path(12, Hook::Egress, "steer_origin");
        assert_eq!(link_program(&steer), Some("steer_origin"));
    }
}

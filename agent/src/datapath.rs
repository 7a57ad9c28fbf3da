//! The datapath manager: the one owner of the loaded eBPF object, its programs, their
//! per-interface links and its maps.
//!
//! - Programs are TC classifiers attached with tcx (kernel >= 6.6, no clsact qdisc), each
//!   at an explicit place on its hook ([`Order`]), so several weft programs can share an
//!   interface's ingress or egress: the flow observer goes [`Order::First`] and later
//!   programs (sampling, routing) [`Order::After`] it, so observation always sees the
//!   packet as it arrived.
//! - Maps are handed out by name: [`Datapath::take_map`] for an owner that keeps the map
//!   (the collector), [`Datapath::map_mut`] for an update made under the datapath's lock.
//! - [`Datapath::detach_interface`] drops every link of an interface that went away.
//! - With a pin directory ([`Datapath::load_pinned`], [`pins`]) the state maps are pinned
//!   and reused across restarts, and the links of the programs named there are pinned: a
//!   new agent swaps its program into the previous agent's link atomically.
//!
//! Several tasks share one `Datapath` behind a mutex ([`SharedDatapath`]); it is held for
//! an attach or detach (one syscall each), never per packet or per flow.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::Map,
    programs::{
        LinkOrder, ProgramError, ProgramId, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
    },
};
use tracing::{info, warn};

pub mod pins;

pub use pins::{PinError, Pins};

/// A datapath shared by the tasks that attach programs and update maps.
pub type SharedDatapath = Arc<Mutex<Datapath>>;

/// Which hook of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        })
    }
}

/// Where on a hook a program goes, relative to everything attached there (tcx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order<'a> {
    /// Before every program on the hook (the flow observer).
    First,
    /// After every program on the hook.
    Last,
    /// Right before this weft program, which must be attached on the same hook.
    Before(&'a str),
    /// Right after this weft program, which must be attached on the same hook.
    After(&'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("program {0} is not in the eBPF object")]
    NoProgram(String),
    #[error("program {name}: {source}")]
    Program {
        name: String,
        source: Box<ProgramError>,
    },
    #[error("loading program {name} into the kernel (verifier): {source}")]
    Verifier {
        name: String,
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to {hook} of {interface}: {source}")]
    Attach {
        program: String,
        hook: Hook,
        interface: String,
        source: Box<ProgramError>,
    },
    #[error(
        "{program} cannot go next to {anchor} on {hook} of {interface}: {anchor} is not attached there"
    )]
    NoAnchor {
        program: String,
        anchor: String,
        hook: Hook,
        interface: String,
    },
    #[error("map {0} is not in the eBPF object (or was taken already)")]
    NoMap(String),
    #[error("querying the programs on {hook} of {interface}: {source}")]
    Query {
        hook: Hook,
        interface: String,
        source: Box<ProgramError>,
    },
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("pinning the link of {program} on {hook} of {interface} at {path}: {source}")]
    PinLink {
        program: String,
        hook: Hook,
        interface: String,
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A link as the datapath holds it.
enum Held {
    /// Owned by the program's link set (aya); detached when dropped or at exit.
    Owned(SchedClassifierLinkId),
    /// Pinned at `path`: stays attached while the pin exists, whoever holds it.
    Pinned { link: FdLink, path: PathBuf },
}

struct Attachment {
    program: String,
    hook: Hook,
    link: Held,
}

/// One program on a hook, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnHook {
    pub id: u32,
    /// The kernel's name of the program (at most 15 bytes).
    pub name: String,
    /// Whether it is one of this datapath's programs.
    pub ours: bool,
}

pub struct Datapath {
    ebpf: Ebpf,
    /// Attachments per interface index, in the order they were made.
    links: HashMap<u32, Vec<Attachment>>,
    /// Where maps and links are pinned, if they are.
    pins: Option<Pins>,
    /// The programs whose links are pinned.
    pinned_programs: Vec<String>,
}

/// One attach of [`Datapath::attach_all`].
#[derive(Debug, Clone, Copy)]
pub struct AttachRequest<'a> {
    pub interface: &'a str,
    pub ifindex: u32,
    pub hook: Hook,
    pub program: &'a str,
    pub order: Order<'a>,
}

/// Where a link goes, and where it is pinned (if it is).
struct Target {
    interface: String,
    ifindex: u32,
    hook: Hook,
    program: String,
    pin: Option<PathBuf>,
}

struct Planned {
    at: Target,
    order: LinkOrder,
}

/// Makes the tcx link of `classifier` at `at` (and pins it when `at` says so): the
/// syscalls of an attach, without the datapath's bookkeeping.
fn link(
    classifier: &mut SchedClassifier,
    at: &Target,
    order: LinkOrder,
) -> Result<Held, DatapathError> {
    let attach_err = |e: ProgramError| DatapathError::Attach {
        program: at.program.clone(),
        hook: at.hook,
        interface: at.interface.clone(),
        source: Box::new(e),
    };
    let id = classifier
        .attach_with_options(
            &at.interface,
            at.hook.attach_type(),
            TcAttachOptions::TcxOrder(order),
        )
        .map_err(attach_err)?;
    Ok(match &at.pin {
        None => Held::Owned(id),
        Some(path) => {
            let pin_err = |e: Box<dyn std::error::Error + Send + Sync>| DatapathError::PinLink {
                program: at.program.clone(),
                hook: at.hook,
                interface: at.interface.clone(),
                path: path.clone(),
                source: e,
            };
            let owned = classifier.take_link(id).map_err(attach_err)?;
            let fd = FdLink::try_from(owned).map_err(|e| pin_err(Box::new(e)))?;
            // On failure the link is dropped, so detached: nothing half-made stays.
            let pinned = fd.pin(path).map_err(|e| pin_err(Box::new(e)))?;
            Held::Pinned {
                link: pinned.into(),
                path: path.clone(),
            }
        }
    })
}

impl Datapath {
    /// Loads an eBPF object (maps are created; programs are loaded with [`Self::load_classifier`]).
    pub fn load(object: &[u8]) -> Result<Self, DatapathError> {
        let ebpf = Ebpf::load(object).map_err(|e| DatapathError::Load(Box::new(e)))?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            pins: None,
            pinned_programs: Vec::new(),
        })
    }

    /// Loads an eBPF object with the state maps of `groups` ([`pins::PINNED_GROUPS`])
    /// pinned in `pins`: reused when a previous agent left them there and their definition
    /// matches, else created (and pinned). The links of `pinned_programs` are pinned as
    /// they are made, and a link a previous agent pinned is taken over (see [`Self::attach`]).
    pub fn load_pinned(
        object: &[u8],
        pins: Pins,
        groups: &[pins::MapGroup],
        pinned_programs: &[&str],
    ) -> Result<Self, DatapathError> {
        let paths = pins.prepare_maps(object, groups)?;
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(object)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            pins: Some(pins),
            pinned_programs: pinned_programs.iter().map(|p| (*p).to_owned()).collect(),
        })
    }

    pub fn pins(&self) -> Option<&Pins> {
        self.pins.as_ref()
    }

    pub fn into_shared(self) -> SharedDatapath {
        Arc::new(Mutex::new(self))
    }

    fn classifier(&mut self, name: &str) -> Result<&mut SchedClassifier, DatapathError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::NoProgram(name.to_owned()))?
            .try_into()
            .map_err(|e| DatapathError::Program {
                name: name.to_owned(),
                source: Box::new(e),
            })
    }

    /// Loads a TC classifier of the object into the kernel (runs the verifier). Loading
    /// one that is loaded already is a no-op.
    pub fn load_classifier(&mut self, name: &str) -> Result<(), DatapathError> {
        let prog = self.classifier(name)?;
        if prog.fd().is_ok() {
            return Ok(());
        }
        prog.load().map_err(|e| DatapathError::Verifier {
            name: name.to_owned(),
            source: Box::new(e),
        })
    }

    fn program_id(&mut self, name: &str) -> Result<u32, DatapathError> {
        let prog = self.classifier(name)?;
        prog.info()
            .map(|i| i.id())
            .map_err(|e| DatapathError::Program {
                name: name.to_owned(),
                source: Box::new(e),
            })
    }

    /// Attaches `program` (loaded) to `hook` of the interface `name` (index `ifindex`, in
    /// the calling thread's network namespace) at `order`. Attaching a program where it is
    /// attached already is a no-op (its place is kept).
    pub fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        hook: Hook,
        program: &str,
        order: Order<'_>,
    ) -> Result<(), DatapathError> {
        self.attach_all(&[AttachRequest {
            interface,
            ifindex,
            hook,
            program,
            order,
        }])
    }

    /// Attaches several programs at once, each as [`Self::attach`] would. The kernel's
    /// tcx attach waits for an RCU grace period (about 10 ms here) before it returns; the
    /// links of distinct programs are made in parallel threads (in the calling thread's
    /// network namespace), so they cost one wait, not one each. Returns the first error;
    /// the links made are kept (as separate attaches would have).
    pub fn attach_all(&mut self, wanted: &[AttachRequest<'_>]) -> Result<(), DatapathError> {
        let mut planned = Vec::with_capacity(wanted.len());
        for w in wanted {
            if let Some(p) = self.plan(w)? {
                planned.push(p);
            }
        }
        let mut names: Vec<String> = planned.iter().map(|p| p.at.program.clone()).collect();
        names.sort_unstable();
        names.dedup();
        if planned.len() < 2 || names.len() < planned.len() {
            // One link, or a program twice: one after the other.
            for p in planned {
                let held = link(self.classifier(&p.at.program)?, &p.at, p.order)?;
                self.record(p.at, held);
            }
            return Ok(());
        }
        let mut classifiers: HashMap<&str, &mut SchedClassifier> = HashMap::new();
        for (name, prog) in self.ebpf.programs_mut() {
            if let Some(n) = names.iter().find(|n| n.as_str() == name) {
                let c: &mut SchedClassifier =
                    prog.try_into().map_err(|e| DatapathError::Program {
                        name: name.to_owned(),
                        source: Box::new(e),
                    })?;
                classifiers.insert(n, c);
            }
        }
        let mut jobs = Vec::with_capacity(planned.len());
        for p in planned {
            let c = classifiers
                .remove(p.at.program.as_str())
                .ok_or_else(|| DatapathError::NoProgram(p.at.program.clone()))?;
            jobs.push((c, p));
        }
        let made: Vec<(Target, Result<Held, DatapathError>)> = std::thread::scope(|s| {
            let running: Vec<_> = jobs
                .into_iter()
                .map(|(c, p)| {
                    s.spawn(move || {
                        let r = link(c, &p.at, p.order);
                        (p.at, r)
                    })
                })
                .collect();
            running
                .into_iter()
                .map(|t| t.join().expect("an attach thread panicked"))
                .collect()
        });
        let mut first_err = None;
        for (at, r) in made {
            match r {
                Ok(held) => self.record(at, held),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The checks and choices of an attach before its link is made: `None` when the
    /// program is there already (or its pinned link was taken over, and recorded).
    fn plan(&mut self, w: &AttachRequest<'_>) -> Result<Option<Planned>, DatapathError> {
        let AttachRequest {
            interface,
            ifindex,
            hook,
            program,
            order,
        } = *w;
        if self.is_attached(ifindex, hook, program) {
            return Ok(None);
        }
        let anchor = |anchor: &str| -> Result<u32, DatapathError> {
            Err(DatapathError::NoAnchor {
                program: program.to_owned(),
                anchor: anchor.to_owned(),
                hook,
                interface: interface.to_owned(),
            })
        };
        let link_order = match order {
            Order::First => LinkOrder::first(),
            Order::Last => LinkOrder::last(),
            Order::Before(a) | Order::After(a) => {
                let id = if self.is_attached(ifindex, hook, a) {
                    self.program_id(a)?
                } else {
                    anchor(a)?
                };
                // SAFETY: `id` is the id of a program this datapath holds loaded.
                let id = unsafe { ProgramId::new(id) };
                match order {
                    Order::Before(_) => LinkOrder::before_program_id(id),
                    _ => LinkOrder::after_program_id(id),
                }
            }
        };
        let pin = match &self.pins {
            Some(p) if self.pinned_programs.iter().any(|n| n == program) => {
                Some(p.link_path(ifindex, hook, program))
            }
            _ => None,
        };
        if let Some(path) = &pin
            && path.exists()
        {
            match self.take_over(program, path) {
                Ok(link) => {
                    info!(%interface, %hook, program, "took over the pinned link (program replaced in place)");
                    self.links.entry(ifindex).or_default().push(Attachment {
                        program: program.to_owned(),
                        hook,
                        link: Held::Pinned {
                            link,
                            path: path.clone(),
                        },
                    });
                    return Ok(None);
                }
                Err(e) => {
                    // The interface went away while no agent ran (the link is defunct), or
                    // the pin is not a tcx link: start over on this interface.
                    warn!(%interface, %hook, program, pin = %path.display(), error = %e,
                        "the pinned link cannot be taken over; attaching anew");
                    pins::remove_file(path)?;
                }
            }
        }
        Ok(Some(Planned {
            at: Target {
                interface: interface.to_owned(),
                ifindex,
                hook,
                program: program.to_owned(),
                pin,
            },
            order: link_order,
        }))
    }

    fn record(&mut self, at: Target, link: Held) {
        self.links.entry(at.ifindex).or_default().push(Attachment {
            program: at.program,
            hook: at.hook,
            link,
        });
    }

    /// Swaps `program` into the tcx link pinned at `path` (one `BPF_LINK_UPDATE`: the
    /// link's place on the hook is kept and no packet sees the hook without a program).
    fn take_over(
        &mut self,
        program: &str,
        path: &std::path::Path,
    ) -> Result<FdLink, Box<dyn std::error::Error + Send + Sync>> {
        let pinned = PinnedLink::from_pin(path)?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
        let classifier = self.classifier(program)?;
        let id = classifier.attach_to_link(link)?;
        let link = classifier.take_link(id)?;
        Ok(FdLink::try_from(link)?)
    }

    pub fn is_attached(&self, ifindex: u32, hook: Hook, program: &str) -> bool {
        self.links
            .get(&ifindex)
            .is_some_and(|v| v.iter().any(|a| a.hook == hook && a.program == program))
    }

    /// This datapath's programs on `ifindex`: (hook, program), in the order they were attached.
    pub fn attached(&self, ifindex: u32) -> Vec<(Hook, String)> {
        self.links.get(&ifindex).map_or_else(Vec::new, |v| {
            v.iter().map(|a| (a.hook, a.program.clone())).collect()
        })
    }

    /// Interfaces with at least one of this datapath's programs.
    pub fn interfaces(&self) -> Vec<u32> {
        self.links.keys().copied().collect()
    }

    /// Detaches `program` from `hook` of `ifindex`; returns whether it was attached.
    pub fn detach(&mut self, ifindex: u32, hook: Hook, program: &str) -> bool {
        let Some(v) = self.links.get_mut(&ifindex) else {
            return false;
        };
        let Some(pos) = v
            .iter()
            .position(|a| a.hook == hook && a.program == program)
        else {
            return false;
        };
        let a = v.remove(pos);
        if v.is_empty() {
            self.links.remove(&ifindex);
        }
        self.drop_link(a);
        true
    }

    /// Detaches everything of `ifindex` (the interface went away, or is no longer
    /// observed); returns how many links there were.
    pub fn detach_interface(&mut self, ifindex: u32) -> usize {
        let gone = self.links.remove(&ifindex).unwrap_or_default();
        let n = gone.len();
        // Later programs first: nothing is ever left ordered relative to a missing one.
        for a in gone.into_iter().rev() {
            self.drop_link(a);
        }
        n
    }

    /// Detaches every program from every interface.
    pub fn detach_all(&mut self) -> usize {
        self.interfaces()
            .into_iter()
            .map(|i| self.detach_interface(i))
            .sum()
    }

    fn drop_link(&mut self, a: Attachment) {
        match a.link {
            Held::Owned(id) => {
                // A deleted device's links are gone in the kernel already: errors are expected.
                if let Ok(p) = self.classifier(&a.program) {
                    let _ = p.detach(id);
                }
            }
            Held::Pinned { link, path } => {
                // The pin, then our descriptor: the last reference gone detaches the link.
                if let Err(e) = pins::remove_file(&path) {
                    warn!(error = %e, "the link stays attached while its pin does");
                }
                drop(link);
            }
        }
    }

    /// At an exit that keeps the pins: pinned links are let go of (they stay attached, the
    /// programs in them keep running until the next agent takes them over); the others
    /// are detached. Returns how many stay attached.
    pub fn release_keeping_pins(&mut self) -> usize {
        let mut kept = 0;
        let all: Vec<Attachment> = self
            .links
            .drain()
            .flat_map(|(_, v)| v.into_iter().rev())
            .collect();
        for a in all {
            match a.link {
                Held::Pinned { link, .. } => {
                    kept += 1;
                    drop(link);
                }
                owned => self.drop_link(Attachment { link: owned, ..a }),
            }
        }
        kept
    }

    /// Removes the link pins of `programs` that no attachment of this datapath holds (a
    /// previous agent's links on interfaces this one does not use, or that are gone);
    /// returns how many. Each owner of programs calls it once it has taken over what it
    /// wants: another owner's pins may still wait for theirs.
    pub fn remove_unheld_link_pins(&mut self, programs: &[&str]) -> Result<usize, DatapathError> {
        let Some(pins) = &self.pins else {
            return Ok(0);
        };
        let held: Vec<&PathBuf> = self
            .links
            .values()
            .flatten()
            .filter_map(|a| match &a.link {
                Held::Pinned { path, .. } => Some(path),
                Held::Owned(_) => None,
            })
            .collect();
        let mut n = 0;
        for path in pins.link_pins(programs)? {
            if !held.contains(&&path) {
                pins::remove_file(&path)?;
                info!(pin = %path.display(), "removed a previous agent's pinned link that no longer has a use");
                n += 1;
            }
        }
        Ok(n)
    }

    /// Takes a map out of the object for an owner that keeps it (e.g. a ring buffer reader).
    pub fn take_map(&mut self, name: &str) -> Result<Map, DatapathError> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| DatapathError::NoMap(name.to_owned()))
    }

    /// A map to read under the datapath's lock.
    pub fn map(&self, name: &str) -> Result<&Map, DatapathError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| DatapathError::NoMap(name.to_owned()))
    }

    /// A map for an update under the datapath's lock (`aya::maps::HashMap::try_from(map)`...).
    pub fn map_mut(&mut self, name: &str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::NoMap(name.to_owned()))
    }

    /// The programs on `hook` of `interface` (calling thread's namespace) in the order the
    /// kernel runs them, with which of them are this datapath's.
    pub fn query(&mut self, interface: &str, hook: Hook) -> Result<Vec<OnHook>, DatapathError> {
        let (_, infos) =
            SchedClassifier::query_tcx(interface, hook.attach_type()).map_err(|e| {
                DatapathError::Query {
                    hook,
                    interface: interface.to_owned(),
                    source: Box::new(e),
                }
            })?;
        let ours: Vec<u32> = {
            let names: Vec<String> = self.ebpf.programs().map(|(n, _)| n.to_owned()).collect();
            names
                .iter()
                .filter_map(|n| self.program_id(n).ok())
                .collect()
        };
        Ok(infos
            .iter()
            .map(|i| OnHook {
                id: i.id(),
                name: i.name_as_str().unwrap_or_default().to_owned(),
                ours: ours.contains(&i.id()),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;

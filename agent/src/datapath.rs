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
//!
//! Several tasks share one `Datapath` behind a mutex ([`SharedDatapath`]); it is held for
//! an attach or detach (one syscall each), never per packet or per flow.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aya::{
    Ebpf, EbpfError,
    maps::Map,
    programs::{
        LinkOrder, ProgramError, ProgramId, SchedClassifier, TcAttachType,
        tc::{SchedClassifierLinkId, TcAttachOptions},
    },
};

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
}

struct Attachment {
    program: String,
    hook: Hook,
    link: SchedClassifierLinkId,
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
}

impl Datapath {
    /// Loads an eBPF object (maps are created; programs are loaded with [`Self::load_classifier`]).
    pub fn load(object: &[u8]) -> Result<Self, DatapathError> {
        let ebpf = Ebpf::load(object).map_err(|e| DatapathError::Load(Box::new(e)))?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
        })
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
        if self.is_attached(ifindex, hook, program) {
            return Ok(());
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
        let link = self
            .classifier(program)?
            .attach_with_options(
                interface,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(link_order),
            )
            .map_err(|e| DatapathError::Attach {
                program: program.to_owned(),
                hook,
                interface: interface.to_owned(),
                source: Box::new(e),
            })?;
        self.links.entry(ifindex).or_default().push(Attachment {
            program: program.to_owned(),
            hook,
            link,
        });
        Ok(())
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
        // A deleted device's links are gone in the kernel already: errors are expected.
        if let Ok(p) = self.classifier(&a.program) {
            let _ = p.detach(a.link);
        }
    }

    /// Takes a map out of the object for an owner that keeps it (e.g. a ring buffer reader).
    pub fn take_map(&mut self, name: &str) -> Result<Map, DatapathError> {
        self.ebpf
            .take_map(name)
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

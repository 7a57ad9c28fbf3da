//! Loads the flow programs and keeps them attached to the workload interfaces of this
//! host: a new veth/tap that matches the patterns is attached within a poll interval
//! (500 ms); one that disappears is forgotten.

use std::collections::HashMap;
use std::sync::{Arc, atomic::Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TcAttachType, tc::SchedClassifierLinkId},
};
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{config::glob_match, metrics::Metrics, workloads::Registry};

pub const PROG_INGRESS: &str = "flow_ingress";
pub const PROG_EGRESS: &str = "flow_egress";
const POLL: Duration = Duration::from_millis(500);

/// A link as seen over netlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
}

/// Whether the agent should observe this link.
pub fn wanted(link: &Link, include: &[String], exclude: &[String]) -> bool {
    let workload_kind = matches!(link.kind.as_deref(), Some("veth") | Some("tun"));
    workload_kind
        && include.iter().any(|p| glob_match(p, &link.name))
        && !exclude.iter().any(|p| glob_match(p, &link.name))
}

fn link_from_message(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(match k {
                            InfoKind::Veth => "veth".to_owned(),
                            InfoKind::Tun => "tun".to_owned(),
                            other => format!("{other:?}").to_lowercase(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link { index: msg.header.index, name: name?, kind })
}

struct Attached {
    ifindex: u32,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

pub struct Attacher {
    ebpf: Ebpf,
    attached: HashMap<String, Attached>,
    include: Vec<String>,
    exclude: Vec<String>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the flow object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

impl Attacher {
    /// `ebpf` must hold the loaded flow programs.
    pub fn new(
        mut ebpf: Ebpf,
        include: Vec<String>,
        exclude: Vec<String>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        for name in [PROG_INGRESS, PROG_EGRESS] {
            classifier(&mut ebpf, name)?
                .load()
                .with_context(|| format!("loading {name} into the kernel (verifier)"))?;
        }
        Ok(Self { ebpf, attached: HashMap::new(), include, exclude, registry, metrics })
    }

    fn attach(&mut self, link: &Link) -> anyhow::Result<()> {
        let ingress = classifier(&mut self.ebpf, PROG_INGRESS)?
            .attach(&link.name, TcAttachType::Ingress)
            .with_context(|| format!("attaching {PROG_INGRESS} to {}", link.name))?;
        let egress = match classifier(&mut self.ebpf, PROG_EGRESS)?
            .attach(&link.name, TcAttachType::Egress)
            .with_context(|| format!("attaching {PROG_EGRESS} to {}", link.name))
        {
            Ok(e) => e,
            Err(e) => {
                let _ = classifier(&mut self.ebpf, PROG_INGRESS)?.detach(ingress);
                return Err(e);
            }
        };
        self.attached.insert(link.name.clone(), Attached { ifindex: link.index, ingress, egress });
        self.registry.attached(link.index, &link.name);
        Ok(())
    }

    fn detach(&mut self, name: &str) {
        if let Some(a) = self.attached.remove(name) {
            // The kernel already dropped the links of a deleted device; errors are expected.
            if let Ok(p) = classifier(&mut self.ebpf, PROG_INGRESS) {
                let _ = p.detach(a.ingress);
            }
            if let Ok(p) = classifier(&mut self.ebpf, PROG_EGRESS) {
                let _ = p.detach(a.egress);
            }
            self.registry.detached(a.ifindex);
        }
    }

    /// Brings the attachments in line with the current links.
    pub fn reconcile(&mut self, links: &[Link]) {
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, a)| !links.iter().any(|l| &l.name == *name && l.index == a.ifindex))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            info!(interface = %name, "interface gone; forgotten");
            self.detach(&name);
        }
        for link in links {
            if self.attached.contains_key(&link.name) || !wanted(link, &self.include, &self.exclude) {
                continue;
            }
            match self.attach(link) {
                Ok(()) => {
                    // Tests and the demo wait for this line.
                    println!("weft-agent attached interface={} ifindex={}", link.name, link.index);
                    info!(interface = %link.name, ifindex = link.index, "attached flow programs");
                }
                Err(e) => {
                    self.metrics.attach_errors.fetch_add(1, Relaxed);
                    warn!(interface = %link.name, error = format!("{e:#}"), "attach failed; retrying");
                }
            }
        }
        self.metrics.interfaces_attached.store(self.attached.len() as u64, Relaxed);
    }

    /// Polls the links of this network namespace until `shutdown`, then detaches
    /// everything (dropping the programs' links).
    pub async fn watch(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        // The connection task ends when `handle` is dropped at the end of this function.
        let conn = tokio::spawn(conn);
        loop {
            let mut links = Vec::new();
            let mut stream = handle.link().get().execute();
            match async {
                while let Some(msg) = stream.try_next().await? {
                    if let Some(l) = link_from_message(&msg) {
                        links.push(l);
                    }
                }
                Ok::<_, rtnetlink::Error>(())
            }
            .await
            {
                Ok(()) => self.reconcile(&links),
                Err(e) => warn!(error = %e, "listing links failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => break,
            }
        }
        let names: Vec<String> = self.attached.keys().cloned().collect();
        for n in names {
            self.detach(&n);
        }
        info!("flow programs detached from all interfaces");
        drop(handle);
        conn.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link { index: 1, name: name.into(), kind: kind.map(Into::into) }
    }

    #[test]
    fn only_matching_veth_and_tap_are_wanted() {
        let inc = vec!["wl-*".to_owned(), "tap*".to_owned()];
        let exc = vec!["wl-skip".to_owned()];
        assert!(wanted(&link("wl-web", Some("veth")), &inc, &exc));
        assert!(wanted(&link("tap3", Some("tun")), &inc, &exc));
        assert!(!wanted(&link("wl-skip", Some("veth")), &inc, &exc));
        assert!(!wanted(&link("up0", Some("veth")), &inc, &exc));
        assert!(!wanted(&link("wl-br", Some("bridge")), &inc, &exc));
        assert!(!wanted(&link("lo", None), &["*".into()], &[]));
    }
}

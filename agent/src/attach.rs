//! Keeps the flow programs attached to the workload interfaces of this host. It follows
//! the host's link events ([`HostEvents`]): a new veth/tap that matches the patterns is
//! attached as soon as the kernel announces it, one that disappears is detached and
//! forgotten. A full listing of the links (resync) runs at start, after any event loss
//! (receive-buffer overrun, a lagging subscription) and every [`SAFETY_RESYNC`] in case
//! an event was missed some other way.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::LinkMessage;
use tokio::sync::watch;
use tracing::{info, warn};

use agent_common::glob::glob_match;

use crate::{
    datapath::{Hook, Order, SharedDatapath},
    hostevents::{Change, HostEvents, Received, link_name_kind},
    metrics::Metrics,
    workloads::Registry,
};

pub const PROG_INGRESS: &str = "flow_ingress";
pub const PROG_EGRESS: &str = "flow_egress";
/// A full listing of the links this often, in case an event was missed without notice.
const SAFETY_RESYNC: Duration = Duration::from_secs(30);

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
    let (name, kind) = link_name_kind(msg);
    Some(Link {
        index: msg.header.index,
        name: name?,
        kind,
    })
}

pub struct Attacher {
    datapath: SharedDatapath,
    /// Observed interfaces: name -> index.
    attached: HashMap<String, u32>,
    include: Vec<String>,
    exclude: Vec<String>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// At the end of [`Self::watch`], leave pinned links attached for the next agent.
    keep_pins: bool,
}

impl Attacher {
    /// Loads the flow programs of `datapath` into the kernel (verifier).
    pub fn new(
        datapath: SharedDatapath,
        include: Vec<String>,
        exclude: Vec<String>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        {
            let mut dp = datapath.lock().unwrap_or_else(|p| p.into_inner());
            for name in [PROG_INGRESS, PROG_EGRESS] {
                dp.load_classifier(name)?;
            }
        }
        Ok(Self {
            datapath,
            attached: HashMap::new(),
            include,
            exclude,
            registry,
            metrics,
            keep_pins: false,
        })
    }

    /// At shutdown, leave the pinned links attached (and their programs running) for the
    /// next agent instead of detaching everything.
    pub fn keeping_pins(mut self, keep: bool) -> Self {
        self.keep_pins = keep;
        self
    }

    fn attach(&mut self, link: &Link) -> anyhow::Result<()> {
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        // The observer runs first on both hooks: it sees packets as they arrived, before any
        // other weft program acts on them.
        let done = dp
            .attach(
                &link.name,
                link.index,
                Hook::Ingress,
                PROG_INGRESS,
                Order::First,
            )
            .and_then(|()| {
                dp.attach(
                    &link.name,
                    link.index,
                    Hook::Egress,
                    PROG_EGRESS,
                    Order::First,
                )
            });
        if let Err(e) = done {
            dp.detach(link.index, Hook::Ingress, PROG_INGRESS);
            return Err(e.into());
        }
        drop(dp);
        self.attached.insert(link.name.clone(), link.index);
        self.registry.attached(link.index, &link.name);
        Ok(())
    }

    /// Forgets an observed interface. `gone`: the device is deleted, so every program of
    /// the datapath on it goes; otherwise (renamed, moved) only the flow programs.
    fn forget(&mut self, name: &str, gone: bool) {
        let Some(index) = self.attached.remove(name) else {
            return;
        };
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        if gone {
            dp.detach_interface(index);
        } else {
            dp.detach(index, Hook::Ingress, PROG_INGRESS);
            dp.detach(index, Hook::Egress, PROG_EGRESS);
        }
        drop(dp);
        self.registry.detached(index);
        info!(interface = %name, "interface gone; forgotten");
    }

    /// A link exists now (new or changed): attach it if it is wanted and not observed yet.
    fn link_seen(&mut self, link: &Link) {
        // Same name on another device, or this device under another name: start over.
        let stale: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, index)| (**name == link.name) != (**index == link.index))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.forget(&name, false);
        }
        if self.attached.contains_key(&link.name) || !wanted(link, &self.include, &self.exclude) {
            return;
        }
        match self.attach(link) {
            Ok(()) => {
                // Tests and the demo wait for this line.
                println!(
                    "weft-agent attached interface={} ifindex={}",
                    link.name, link.index
                );
                info!(interface = %link.name, ifindex = link.index, "attached flow programs");
            }
            Err(e) => {
                self.metrics.attach_errors.inc();
                warn!(interface = %link.name, error = format!("{e:#}"), "attach failed; retrying at the next resync");
            }
        }
    }

    fn link_gone(&mut self, index: u32, name: &str) {
        if self.attached.get(name) == Some(&index) {
            self.forget(name, true);
        } else {
            // Not observed, but another weft program may be on it.
            self.datapath
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .detach_interface(index);
        }
    }

    /// Brings the attachments in line with the current links (a full listing).
    pub fn reconcile(&mut self, links: &[Link]) {
        let gone: Vec<String> = self
            .attached
            .iter()
            .filter(|(name, index)| !links.iter().any(|l| &l.name == *name && l.index == **index))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let deleted = !links
                .iter()
                .any(|l| Some(&l.index) == self.attached.get(&name));
            self.forget(&name, deleted);
        }
        for link in links {
            self.link_seen(link);
        }
        self.publish_count();
    }

    fn publish_count(&self) {
        self.metrics
            .interfaces_attached
            .set(self.attached.len() as u64);
    }

    async fn resync(&mut self, handle: &rtnetlink::Handle) {
        let mut links = Vec::new();
        let mut stream = handle.link().get().execute();
        let listed = async {
            while let Some(msg) = stream.try_next().await? {
                links.extend(link_from_message(&msg));
            }
            Ok::<_, rtnetlink::Error>(())
        }
        .await;
        match listed {
            Ok(()) => self.reconcile(&links),
            Err(e) => warn!(error = %e, "listing links failed; next try at the safety resync"),
        }
    }

    /// Follows the links of this network namespace until `shutdown`, then detaches
    /// everything (dropping the programs' links).
    pub async fn watch(
        mut self,
        events: HostEvents,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        // The connection task ends when `handle` is dropped at the end of this function.
        let conn = tokio::spawn(conn);
        // Subscribe before listing, so that no change falls between the two.
        let mut sub = events.subscribe();
        self.resync(&handle).await;
        // Every observed interface has its link now (taken over or new): a previous agent's
        // links on interfaces this one does not observe go.
        let stale = self
            .datapath
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove_unheld_link_pins(&[PROG_INGRESS, PROG_EGRESS]);
        match stale {
            Ok(0) => {}
            Ok(n) => info!(
                links = n,
                "removed a previous agent's links of interfaces not observed"
            ),
            Err(e) => warn!(error = %e, "removing a previous agent's links"),
        }
        let mut safety = tokio::time::interval(SAFETY_RESYNC);
        safety.tick().await;
        let outcome = loop {
            tokio::select! {
                received = sub.recv() => match received {
                    Some(Received::Event(ev)) if ev.netns.is_none() => match ev.change {
                        Change::LinkNew { ifindex, name, kind, .. } => {
                            self.link_seen(&Link { index: ifindex, name, kind });
                            self.publish_count();
                        }
                        Change::LinkDel { ifindex, name } => {
                            self.link_gone(ifindex, &name);
                            self.publish_count();
                        }
                        Change::Overrun => self.resync(&handle).await,
                        _ => {}
                    },
                    Some(Received::Event(_)) => {}
                    Some(Received::Lagged { .. }) => self.resync(&handle).await,
                    None => break Err(anyhow::anyhow!("the host event listener stopped")),
                },
                _ = safety.tick() => self.resync(&handle).await,
                _ = shutdown.changed() => break Ok(()),
            }
        };
        let mut dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        if self.keep_pins {
            let n = dp.release_keeping_pins();
            info!(
                links = n,
                "flow programs left attached for the next agent (pinned)"
            );
        } else {
            let n = dp.detach_all();
            info!(links = n, "flow programs detached from all interfaces");
        }
        drop(dp);
        drop(handle);
        conn.abort();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, kind: Option<&str>) -> Link {
        Link {
            index: 1,
            name: name.into(),
            kind: kind.map(Into::into),
        }
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

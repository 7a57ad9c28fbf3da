//! What every end-to-end test needs: a lab, a static site, weft started on it, and waits on
//! the controller's topology.

use std::time::Duration;

use anyhow::{Context, Result};
use weft_lab::servers::{self, Site};
use weft_lab::topology::Dependency;
use weft_lab::weft::{Agent, Controller};
use weft_lab::{Lab, eventually};

/// Size of `/blob.bin` on the static sites (large enough that headers are noise).
pub const BLOB_SIZE: usize = 200 * 1024;

/// A lab with one hypervisor `hv1` and these workloads.
pub fn lab(workloads: &[&str]) -> Result<Lab> {
    let mut b = Lab::builder().hypervisor("hv1");
    for w in workloads {
        b = b.workload(w);
    }
    b.build()
}

/// `/small.json` and `/blob.bin` (BLOB_SIZE bytes).
pub fn static_site() -> Site {
    Site::Static(vec![
        ("small.json".into(), b"{\"ok\":true}\n".to_vec()),
        ("blob.bin".into(), servers::blob(BLOB_SIZE)),
    ])
}

/// The controller and one agent on `hv1`.
pub struct Weft {
    pub controller: Controller,
    pub agent: Agent,
}

impl Weft {
    pub fn start(lab: &Lab) -> Result<Weft> {
        let controller = Controller::start(lab)?;
        let agent = Agent::start(lab, 0, &controller.grpc_url())?;
        Ok(Weft { controller, agent })
    }

    /// The last lines of both logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "controller output:\n{}\nagent output:\n{}",
            self.controller.child.tail(20),
            self.agent.child.tail(20)
        )
    }
}

/// Waits (20 s) until `controller` has a dependency `source->target`.
pub fn wait_edge_of(controller: &Controller, source: &str, target: &str) -> Result<()> {
    eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        controller.topology()?.edge(source, target).map(|_| ())
    })
    .with_context(|| controller.child.tail(20))
}

/// Waits (20 s) until the controller has the dependency `source->target` and `ready`
/// holds for it.
pub fn wait_edge(
    weft: &Weft,
    source: &str,
    target: &str,
    ready: impl Fn(&Dependency) -> bool,
) -> Result<Dependency> {
    eventually(Duration::from_secs(20), Duration::from_millis(500), || {
        let t = weft.controller.topology()?;
        let d = t.edge(source, target)?;
        anyhow::ensure!(ready(d), "{source}->{target} not there yet: {d:?}");
        Ok(d.clone())
    })
    .with_context(|| weft.logs())
}

//! Where the shard manager's decisions go: the addresses each workload should have, handed
//! to whoever makes them real (the control plane, which streams them to the host's agent),
//! and how to learn that they were applied. The shard manager knows this trait only; the
//! controller joins it to the control hub (`crate::compose`).

use std::fmt::Debug;
use std::time::Duration;

use futures::future::BoxFuture;

/// One address a workload should have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressAssignment {
    /// `198.18.128.5/22`.
    pub cidr: String,
    /// Default gateway for the family; empty for none.
    pub gateway: String,
    pub shard_id: String,
    pub allocation_seq: u64,
}

/// What applying a workload's addresses took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressesApplied {
    /// How long the workload's interface was down for the re-address (0: untouched).
    pub readdress_down_us: u64,
}

/// The sink of desired addresses.
pub trait AddressPublisher: Debug + Send + Sync {
    /// Sets the addresses of `workload` on `host` (empty: none); returns the generation
    /// of the host's desired state that carries them.
    fn publish(&self, host: &str, workload: &str, addresses: Vec<AddressAssignment>) -> u64;

    /// The generation to wait for to see `workload`'s addresses as they are now: the one at
    /// which they last changed (or, with none left, the host's current one).
    fn generation(&self, host: &str, workload: &str) -> u64;

    /// Waits until `host` applied `workload`'s addresses of `generation` (or a later one);
    /// the error says why not (a failure the agent reported, or nothing within `timeout`).
    fn wait_applied<'a>(
        &'a self,
        host: &'a str,
        workload: &'a str,
        generation: u64,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<AddressesApplied, String>>;
}

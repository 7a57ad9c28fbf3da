//! The namespace lab: guards for network namespaces, links and processes, real servers
//! (nginx, PostgreSQL, Redis, socat) and real clients (curl, wrk, pgbench,
//! redis-benchmark) inside workload namespaces, and helpers to run weft's own binaries
//! against it. Used by `cargo xtask demo` and by the end-to-end tests in `tests/tests/`;
//! `shard_soak` (two controllers on etcd under random kills) by `cargo xtask soak` and the
//! controller's tests.
//!
//! Everything the lab creates is removed when its guard drops, also on panic.

pub mod browser;
pub mod cmd;
pub mod delay;
pub mod eventually;
pub mod http1;
pub mod lab;
pub mod links;
pub mod load;
pub mod mounts;
pub mod names;
pub mod netns;
pub mod nft;
pub mod pgwire;
pub mod process;
pub mod rawframes;
pub mod servers;
pub mod shard_soak;
pub mod supervise;
pub mod topology;
pub mod traffic;
pub mod vxlan;
pub mod weft;

pub use eventually::eventually;
pub use lab::{Hypervisor, Lab, LabBuilder, Workload};
pub use netns::Netns;
pub use process::Child;
pub use supervise::Supervised;

/// True when the current process runs as root (the lab needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For root-gated tests: returns true (after printing why) when the test must be skipped.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        false
    } else {
        println!("skipping {test}: the namespace lab needs root (run `cargo xtask test` as root)");
        true
    }
}

//! Types that cross the kernel/user boundary. Every struct here is `#[repr(C)]` with
//! explicit padding and a compile-time size check, because the kernel program and the
//! agent must agree on the layout byte for byte.
//!
//! With the `std` feature (user space only; the kernel crate builds without it) it also
//! holds the vocabulary the agent and the controller share: IP prefixes and families
//! (`net`) and shell-style globs (`glob`).
#![cfg_attr(not(any(feature = "std", test)), no_std)]

pub mod flow;
pub mod hash;
pub mod latency;
pub mod shadow;
pub mod steer;
// Decoding ring-buffer items: user space only.
#[cfg(any(feature = "std", feature = "user", test))]
pub mod wire;

#[cfg(feature = "config")]
pub mod config_file;
#[cfg(feature = "std")]
pub mod glob;
#[cfg(feature = "std")]
pub mod net;
#[cfg(feature = "std")]
pub mod netnames;
#[cfg(feature = "std")]
pub mod time;

pub use flow::{FlowEvent, FlowKey, FlowStats, PayloadSample, StreamChunk};

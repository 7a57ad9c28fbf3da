//! Types that cross the kernel/user boundary. Every struct here is `#[repr(C)]` with
//! explicit padding and a compile-time size check, because the kernel program and the
//! agent must agree on the layout byte for byte.
#![no_std]

pub mod flow;
pub mod latency;

pub use flow::{FlowEvent, FlowKey, FlowStats, PayloadSample};

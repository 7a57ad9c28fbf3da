//! Unix nanoseconds, RFC 3339 timestamps and durations: the shared implementation in
//! `agent_common::time`, re-exported where the topology library's users expect it.

pub use agent_common::time::*;

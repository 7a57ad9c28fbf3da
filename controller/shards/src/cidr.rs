//! Prefixes and families: the implementation shared with the agent lives in
//! `agent_common::net` (prefixes as 128-bit integers, so IPv4 and IPv6 share one arithmetic).

pub use agent_common::net::{Cidr, Family, ParseError, from_u128, to_u128};

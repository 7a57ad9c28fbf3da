//! weft's topology library: what the controller and the CLI's offline mode share. It turns
//! observations into services and dependencies and answers questions about them; it opens
//! no socket and runs no server.
//!
//! - [`observation`], [`model`]: what goes in (traffic observations, validated flow records).
//! - [`registry`]: registered agents and their workloads (names for addresses).
//! - [`topology`]: services and dependencies built from observations.
//! - [`analytics`], [`history`]: critical services, patterns, anomalies, scaling; snapshots
//!   kept in a [`weft_store::Store`], diffs, events and the allow-list.
//! - [`mapper`]: the topology of a set of observations, in one call.
//! - [`import`]: pcap, JSON lines and Envoy access logs as observations.
//! - [`render`]: the topology as ASCII, Graphviz DOT or JSON.
//! - [`spec`]: the specification's data models (`Service`, `ServiceDependency`, the map).

pub mod analytics;

/// The hash of the topology's maps, keyed per process: foldhash (hashbrown's default),
/// several times faster than SipHash on short keys (addresses, names).
pub(crate) type FastHash = foldhash::fast::RandomState;

pub mod history;
pub mod import;
pub mod mapper;
pub mod model;
pub mod observation;
pub mod registry;
pub mod render;
pub mod spec;
pub mod time;
pub mod topology;

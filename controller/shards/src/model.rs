//! The shard manager's records (as stored, JSON) and its errors.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cidr::{Cidr, Family};

/// Smallest and largest shard prefix per family. IPv4: /28 (16 addresses) to /20 (4096),
/// as the spec says; IPv6: the same address counts, /124 to /116.
pub fn prefix_bounds(family: Family) -> (u8, u8) {
    match family {
        Family::Ipv4 => (20, 28),
        Family::Ipv6 => (116, 124),
    }
}

/// The default shard: 1024 addresses (/22, or /118 for IPv6).
pub fn default_prefix(family: Family) -> u8 {
    match family {
        Family::Ipv4 => 22,
        Family::Ipv6 => 118,
    }
}

/// The shard manager's configuration (flags of `weft-controller`).
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// Prefixes shards are carved from, tried in order.
    pub pools: Vec<Cidr>,
    /// Ranges no shard may overlap.
    pub reserved: Vec<Cidr>,
    /// Most shards one network may hold (a migrating shard still counts).
    pub max_shards_per_network: usize,
    /// How long a migration waits for an agent to report a re-addressed workload.
    pub migration_timeout: Duration,
    /// A migration not completed this long after it started fails: its unfinished moves
    /// are rolled back as if the operator had cancelled it. `None`: no deadline.
    pub migration_deadline: Option<Duration>,
    /// Workloads of one migration re-addressed at once.
    pub migration_concurrency: usize,
    /// Events kept in the store (older ones are dropped).
    pub event_retention: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            pools: vec![
                "198.18.128.0/17".parse().expect("a valid prefix"),
                "fd00:80::/56".parse().expect("a valid prefix"),
            ],
            reserved: Vec::new(),
            max_shards_per_network: 16,
            migration_timeout: Duration::from_secs(5),
            migration_deadline: None,
            migration_concurrency: 16,
            event_retention: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ShardStatus {
    /// Not allocated to any network.
    Available,
    /// Allocated to a network; its addresses are handed out to that network's workloads.
    #[serde(rename = "In-Use")]
    InUse,
    /// Being emptied: no new allocations; its workloads are moving to other shards.
    Migrating,
    /// Set aside: never allocated to a network.
    Reserved,
}

impl ShardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Available => "Available",
            Self::InUse => "In-Use",
            Self::Migrating => "Migrating",
            Self::Reserved => "Reserved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "available" => Some(Self::Available),
            "inuse" => Some(Self::InUse),
            "migrating" => Some(Self::Migrating),
            "reserved" => Some(Self::Reserved),
            _ => None,
        }
    }
}

/// A shard's metadata, as stored under `shards/shard/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: String,
    pub cidr: Cidr,
    pub family: Family,
    pub network_id: Option<String>,
    pub status: ShardStatus,
    /// Addresses currently allocated from it.
    pub resource_count: u64,
    /// Unix ns of the last address allocation or release (creation at first).
    pub last_accessed_ns: u64,
    pub created_ns: u64,
    /// The gateway of workloads addressed from it: its first usable address.
    pub gateway: IpAddr,
}

/// One allocated address, as stored under `shards/addr/{ip}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub address: IpAddr,
    pub shard_id: String,
    pub network_id: String,
    pub workload: String,
    pub host_id: String,
    /// Allocation sequence: strictly increasing over all allocations (so also per
    /// address); a release must name the current one.
    pub seq: u64,
    pub allocated_ns: u64,
    /// Being replaced by a migration: no longer in the workload's desired state.
    #[serde(default)]
    pub retiring: bool,
    /// Rolled back by a failed migration (its workload has its old address again), but
    /// not released yet: the agent may still have it on the interface until it applies
    /// the rollback. Neither desired nor allocatable (it keeps its bit and counts in its
    /// shard's `resource_count`); released once the host's agent reports a desired state
    /// generation that no longer holds it.
    #[serde(default)]
    pub releasing: bool,
    /// The shard's prefix length (the address's interface prefix).
    #[serde(default)]
    pub prefix_len: u8,
}

impl Allocation {
    /// `address/prefix_len`, as the agent configures it.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }

    /// The shard's gateway: the first address after the shard's network address.
    pub fn gateway(&self) -> IpAddr {
        let family = Family::of(self.address);
        let host_bits = u32::from(family.bits() - self.prefix_len.min(family.bits()));
        let mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        super::cidr::from_u128(family, (super::cidr::to_u128(self.address) & !mask) + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationState {
    Running,
    /// Waiting for an agent (offline or failing); retried with backoff.
    Paused,
    Completed,
    /// Cancelled by the operator or past its deadline: the moves not done were rolled
    /// back and the shard is back in its network (`error` says why).
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveState {
    /// No new address yet.
    Pending,
    /// New address allocated and desired; waiting for the agent, then the old one is
    /// released.
    Moving,
    Done,
    /// The workload released its old address meanwhile: nothing to move.
    Skipped,
    /// The migration failed before this move completed: the workload's old address is
    /// desired again; the new address (if still held) is `releasing` until the agent
    /// applied that, then released.
    RolledBack,
}

/// One workload address a migration moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadMove {
    pub workload: String,
    pub host_id: String,
    pub old_address: IpAddr,
    pub old_seq: u64,
    pub new_address: Option<IpAddr>,
    pub new_seq: u64,
    pub state: MoveState,
    /// The last failure of this move (empty when none).
    #[serde(default)]
    pub error: String,
    /// How long the agent reported the interface down while re-addressing.
    #[serde(default)]
    pub down_us: u64,
}

/// A migration, as stored under `shards/mig/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: String,
    pub shard_id: String,
    pub network_id: String,
    pub state: MigrationState,
    /// Why it is paused or failed (empty otherwise).
    #[serde(default)]
    pub error: String,
    pub created_ns: u64,
    pub updated_ns: u64,
    #[serde(default)]
    pub finished_ns: u64,
    pub moves: Vec<WorkloadMove>,
}

impl Migration {
    pub fn is_active(&self) -> bool {
        matches!(self.state, MigrationState::Running | MigrationState::Paused)
    }

    /// How many of its moves are in each state.
    pub fn counts(&self) -> MoveCounts {
        let mut c = MoveCounts::default();
        for mv in &self.moves {
            *match mv.state {
                MoveState::Pending => &mut c.pending,
                MoveState::Moving => &mut c.moving,
                MoveState::Done => &mut c.done,
                MoveState::Skipped => &mut c.skipped,
                MoveState::RolledBack => &mut c.rolled_back,
            } += 1;
        }
        c
    }
}

/// A migration's moves per state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MoveCounts {
    pub pending: usize,
    pub moving: usize,
    pub done: usize,
    pub skipped: usize,
    pub rolled_back: usize,
}

/// Why a shard operation was refused; the API maps the kinds onto 400/404/409.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Bad input; names the field.
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl ShardError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// A checked name (network, workload, host): 1..=128 of `[A-Za-z0-9._-]`.
pub fn check_name(field: &str, value: &str) -> Result<(), ShardError> {
    if value.is_empty() {
        return Err(ShardError::invalid(field, "must not be empty"));
    }
    if value.len() > 128 {
        return Err(ShardError::invalid(field, "must be at most 128 characters"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ShardError::invalid(
            field,
            format!("`{value}` contains {c:?}; use letters, digits, `.`, `_` and `-` only"),
        ));
    }
    Ok(())
}

//! Bounds on what the topology keeps: services, dependencies, names learned per address,
//! endpoints per service, and the window of timestamps it accepts. Every refusal is
//! counted per [`Limit`]; the caller (the controller) turns the counts into metrics and log
//! lines.
//!
//! Service names come from what the wire says (spoofable source addresses, TLS SNI, HTTP
//! Host, DNS answers, an agent record's workload field, REST observations): without these
//! bounds ordinary traffic grows memory without end.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::time::rfc3339;

/// Services kept at most by default.
pub const DEFAULT_MAX_SERVICES: usize = 20_000;
/// Dependencies kept at most by default.
pub const DEFAULT_MAX_DEPENDENCIES: usize = 50_000;
/// Distinct names (SNI, Host, DNS answer, record workload field) one address may take.
pub const DEFAULT_MAX_NAMES_PER_ADDRESS: usize = 16;
/// Server endpoints (address, port) kept per service.
pub const DEFAULT_MAX_ENDPOINTS_PER_SERVICE: usize = 256;
/// Longest name (service, host, SNI, DNS name) accepted: a DNS name's maximum. Every
/// service keeps its name, so the caps on counts bound memory only with this.
pub const MAX_NAME_BYTES: usize = 253;
/// Longest request method or path accepted (the agent reports path patterns from the
/// first 128 bytes of a request).
pub const MAX_LABEL_BYTES: usize = 256;

/// Whether `c` may stand in a name or label (service, host, method, path): not a control
/// character (C0, DEL, C1) nor an invisible format character (zero-width, bidirectional
/// overrides and isolates, byte-order mark, soft hyphen, interlinear annotation) that would
/// make two names look alike or reorder a terminal's text.
pub fn is_printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{ad}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// The share of the service and dependency caps that peers not registered as workloads
/// may fill (nine tenths): the rest stays for registered workloads, so a flood of spoofed
/// sources cannot keep the workloads' own dependencies out.
fn unregistered_share(max: usize) -> usize {
    max - max / 10
}

/// What the topology keeps at most, and which timestamps it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyLimits {
    pub max_services: usize,
    pub max_dependencies: usize,
    pub max_names_per_address: usize,
    pub max_endpoints_per_service: usize,
    /// How far ahead of the clock a timestamp may be; `None` accepts any.
    pub max_future: Option<Duration>,
    /// How far behind the clock a timestamp may be; `None` accepts any (the library and
    /// the importers read old captures). The controller sets the bucket retention.
    pub max_age: Option<Duration>,
}

impl Default for TopologyLimits {
    fn default() -> Self {
        Self {
            max_services: DEFAULT_MAX_SERVICES,
            max_dependencies: DEFAULT_MAX_DEPENDENCIES,
            max_names_per_address: DEFAULT_MAX_NAMES_PER_ADDRESS,
            max_endpoints_per_service: DEFAULT_MAX_ENDPOINTS_PER_SERVICE,
            max_future: None,
            max_age: None,
        }
    }
}

impl TopologyLimits {
    /// No bound at all (benchmarks that measure the cost of size).
    pub fn unbounded() -> Self {
        Self {
            max_services: usize::MAX,
            max_dependencies: usize::MAX,
            max_names_per_address: usize::MAX,
            max_endpoints_per_service: usize::MAX,
            max_future: None,
            max_age: None,
        }
    }

    /// Whether `value_unix_ns` (0: not given) is inside the window around `now_unix_ns`.
    /// `check_age` is false for a flow's first-seen time: a long connection started
    /// before the retention.
    pub fn check_timestamp(
        &self,
        field: &'static str,
        value_unix_ns: u64,
        now_unix_ns: u64,
        check_age: bool,
    ) -> Result<(), TimestampError> {
        if value_unix_ns == 0 {
            return Ok(());
        }
        if let Some(max) = self.max_future {
            let max_ns = duration_ns(max);
            if value_unix_ns > now_unix_ns.saturating_add(max_ns) {
                return Err(TimestampError {
                    field,
                    value_unix_ns,
                    now_unix_ns,
                    bound_ns: max_ns,
                    future: true,
                });
            }
        }
        if let Some(max) = self.max_age.filter(|_| check_age) {
            let max_ns = duration_ns(max);
            if now_unix_ns.saturating_sub(value_unix_ns) > max_ns {
                return Err(TimestampError {
                    field,
                    value_unix_ns,
                    now_unix_ns,
                    bound_ns: max_ns,
                    future: false,
                });
            }
        }
        Ok(())
    }

    /// The cap that applies to a new service: registered workloads may use all of it.
    pub(crate) fn services_for(&self, registered: bool) -> usize {
        if registered {
            self.max_services
        } else {
            unregistered_share(self.max_services)
        }
    }

    /// The cap that applies to a new dependency: between two registered workloads, all of
    /// it.
    pub(crate) fn dependencies_for(&self, registered: bool) -> usize {
        if registered {
            self.max_dependencies
        } else {
            unregistered_share(self.max_dependencies)
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A timestamp outside the accepted window; names the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampError {
    pub field: &'static str,
    pub value_unix_ns: u64,
    pub now_unix_ns: u64,
    /// The bound that was crossed, in nanoseconds.
    pub bound_ns: u64,
    /// Ahead of the clock (else: older than the retention).
    pub future: bool,
}

impl TimestampError {
    pub fn limit(&self) -> Limit {
        if self.future {
            Limit::FutureTimestamp
        } else {
            Limit::OldTimestamp
        }
    }
}

impl std::fmt::Display for TimestampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.bound_ns as f64 / 1e9;
        if self.future {
            write!(
                f,
                "field `{}`: {} ({}) is more than {seconds} s ahead of the controller's clock ({})",
                self.field,
                self.value_unix_ns,
                rfc3339(self.value_unix_ns),
                rfc3339(self.now_unix_ns)
            )
        } else {
            write!(
                f,
                "field `{}`: {} ({}) is older than the retention of {seconds} s",
                self.field,
                self.value_unix_ns,
                rfc3339(self.value_unix_ns)
            )
        }
    }
}

impl std::error::Error for TimestampError {}

/// One bound of the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    Services,
    Dependencies,
    NamesPerAddress,
    EndpointsPerService,
    FutureTimestamp,
    OldTimestamp,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::Services,
        Limit::Dependencies,
        Limit::NamesPerAddress,
        Limit::EndpointsPerService,
        Limit::FutureTimestamp,
        Limit::OldTimestamp,
    ];

    /// The `limit` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::Dependencies => "dependencies",
            Self::NamesPerAddress => "names_per_address",
            Self::EndpointsPerService => "endpoints_per_service",
            Self::FutureTimestamp => "future_timestamp",
            Self::OldTimestamp => "old_timestamp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a full topology refused: the limit and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub limit: Limit,
    pub max: usize,
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.limit {
            Limit::Services => "services",
            Limit::Dependencies => "dependencies",
            Limit::NamesPerAddress => "names for one address",
            Limit::EndpointsPerService => "endpoints for one service",
            Limit::FutureTimestamp | Limit::OldTimestamp => "timestamps",
        };
        write!(
            f,
            "the topology holds its maximum of {} {what}; new ones are refused until idle ones are evicted",
            self.max
        )
    }
}

/// Refusals per limit since the start.
#[derive(Debug, Default)]
pub struct LimitHits([AtomicU64; 6]);

impl LimitHits {
    pub fn hit(&self, limit: Limit) {
        self.0[limit.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit.index()].load(Ordering::Relaxed)
    }

    /// Every limit with its count.
    pub fn all(&self) -> [(Limit, u64); 6] {
        Limit::ALL.map(|l| (l, self.get(l)))
    }
}

/// Takes one slot of `counter` if it is under `max`.
pub(crate) fn reserve(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// Gives back `n` slots (never below zero: a release pairs with a reservation or an
/// insert).
pub(crate) fn release(counter: &AtomicUsize, n: usize) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
        Some(c.saturating_sub(n))
    });
}

/// The names each address was given from what the wire said (SNI, Host, DNS answers, a
/// record's workload field), bounded per address and in addresses.
#[derive(Debug)]
pub(crate) struct NameBook {
    names: DashMap<IpAddr, Names, crate::FastHash>,
    max_per_address: usize,
    max_addresses: usize,
}

#[derive(Debug)]
struct Names {
    names: Vec<Box<str>>,
    touched_unix_ns: u64,
}

impl NameBook {
    pub(crate) fn new(limits: &TopologyLimits) -> Self {
        Self {
            names: DashMap::default(),
            max_per_address: limits.max_names_per_address,
            // A named address names at least one service.
            max_addresses: limits.max_services,
        }
    }

    /// Whether `address` may go by `name`: a name it had already, or a new one while it
    /// has fewer than the maximum.
    pub(crate) fn admit(&self, address: IpAddr, name: &str, now_unix_ns: u64) -> bool {
        if let Some(mut entry) = self.names.get_mut(&address) {
            entry.touched_unix_ns = now_unix_ns;
            if entry.names.iter().any(|n| &**n == name) {
                return true;
            }
            if entry.names.len() < self.max_per_address {
                entry.names.push(name.into());
                return true;
            }
            return false;
        }
        if self.max_per_address == 0 || self.names.len() >= self.max_addresses {
            return false;
        }
        self.names
            .entry(address)
            .or_insert_with(|| Names {
                names: Vec::new(),
                touched_unix_ns: now_unix_ns,
            })
            .names
            .push(name.into());
        true
    }

    /// Forgets addresses not used since `cutoff_unix_ns`.
    pub(crate) fn sweep(&self, cutoff_unix_ns: u64) -> usize {
        let before = self.names.len();
        self.names
            .retain(|_, n| n.touched_unix_ns >= cutoff_unix_ns);
        before.saturating_sub(self.names.len())
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn timestamps_outside_the_window_name_their_field() {
        let limits = TopologyLimits {
            max_future: Some(Duration::from_secs(300)),
            max_age: Some(Duration::from_secs(3_600)),
            ..TopologyLimits::default()
        };
        let now = 1_000_000 * S;
        assert!(
            limits
                .check_timestamp("t", now + 299 * S, now, true)
                .is_ok()
        );
        assert!(
            limits.check_timestamp("t", 0, now, true).is_ok(),
            "0 is unset"
        );
        let e = limits
            .check_timestamp("last_seen_unix_ns", u64::MAX, now, true)
            .unwrap_err();
        assert_eq!(e.limit(), Limit::FutureTimestamp);
        assert!(e.to_string().contains("`last_seen_unix_ns`"), "{e}");
        let e = limits
            .check_timestamp("timestamp_unix_ns", now - 3_601 * S, now, true)
            .unwrap_err();
        assert_eq!(e.limit(), Limit::OldTimestamp);
        assert!(
            limits
                .check_timestamp("first_seen_unix_ns", 1, now, false)
                .is_ok(),
            "a first-seen time may be old"
        );
        assert!(
            TopologyLimits::default()
                .check_timestamp("t", u64::MAX, now, true)
                .is_ok(),
            "the library accepts any time"
        );
    }

    #[test]
    fn an_address_takes_a_bounded_number_of_names() {
        let book = NameBook::new(&TopologyLimits {
            max_names_per_address: 2,
            max_services: 2,
            ..TopologyLimits::default()
        });
        let a: IpAddr = "198.18.0.1".parse().unwrap();
        assert!(book.admit(a, "x", 1));
        assert!(book.admit(a, "y", 1));
        assert!(book.admit(a, "x", 1), "a name it had");
        assert!(!book.admit(a, "z", 1));
        let b: IpAddr = "198.18.0.2".parse().unwrap();
        let c: IpAddr = "198.18.0.3".parse().unwrap();
        assert!(book.admit(b, "x", 5));
        assert!(!book.admit(c, "x", 5), "no room for a third address");
        assert_eq!(book.sweep(2), 1, "a was idle");
        assert!(book.admit(c, "x", 6));
    }

    #[test]
    fn reservations_stop_at_the_cap() {
        let n = AtomicUsize::new(0);
        assert!(reserve(&n, 2) && reserve(&n, 2));
        assert!(!reserve(&n, 2));
        release(&n, 1);
        assert!(reserve(&n, 2));
        assert_eq!(unregistered_share(100), 90);
    }
}

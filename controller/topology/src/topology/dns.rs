//! Names learned from DNS answers seen on the wire: address -> name, until the TTL runs
//! out, with a bounded number of entries.

use std::net::IpAddr;

use dashmap::DashMap;

/// Entries kept at most; beyond it, expired entries are swept and new names dropped
/// (and counted) until there is room.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// A TTL shorter than this is stretched to it, so a name stays long enough to label the
/// connection that follows the lookup.
pub const MIN_TTL_NS: u64 = 60_000_000_000;

#[derive(Debug)]
pub struct DnsNames {
    names: DashMap<IpAddr, (String, u64)>,
    capacity: usize,
    dropped: std::sync::atomic::AtomicU64,
}

impl Default for DnsNames {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl DnsNames {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            names: DashMap::new(),
            capacity,
            dropped: Default::default(),
        }
    }

    /// Learns that `name` resolves to `ip` for `ttl_seconds` from `now_unix_ns`.
    pub fn learn(&self, ip: IpAddr, name: &str, ttl_seconds: u32, now_unix_ns: u64) {
        let ttl_ns = (u64::from(ttl_seconds) * 1_000_000_000).max(MIN_TTL_NS);
        let expires = now_unix_ns.saturating_add(ttl_ns);
        if !self.names.contains_key(&ip) && self.names.len() >= self.capacity {
            self.names.retain(|_, (_, until)| *until > now_unix_ns);
            if self.names.len() >= self.capacity {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
        self.names.insert(ip, (name.to_owned(), expires));
    }

    /// The name of `ip`, if an answer for it is still valid at `now_unix_ns`.
    pub fn lookup(&self, ip: &IpAddr, now_unix_ns: u64) -> Option<String> {
        self.names
            .get(ip)
            .filter(|entry| entry.1 > now_unix_ns)
            .map(|entry| entry.0.clone())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Forgets the answers expired at `now_unix_ns`.
    pub fn sweep(&self, now_unix_ns: u64) {
        self.names.retain(|_, (_, until)| *until > now_unix_ns);
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Answers not kept because the map was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn names_expire_after_their_ttl() {
        let names = DnsNames::default();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        names.learn(ip, "db.lab", 300, 1_000 * S);
        assert_eq!(names.lookup(&ip, 1_299 * S).as_deref(), Some("db.lab"));
        assert_eq!(names.lookup(&ip, 1_301 * S), None);
    }

    #[test]
    fn short_ttls_are_stretched_to_the_minimum() {
        let names = DnsNames::default();
        let ip: IpAddr = "10.0.0.9".parse().expect("ip");
        names.learn(ip, "db.lab", 0, 0);
        assert!(names.lookup(&ip, MIN_TTL_NS - 1).is_some());
    }

    #[test]
    fn a_full_map_sweeps_expired_entries_then_drops() {
        let names = DnsNames::with_capacity(1);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        names.learn(a, "a", 100, 0);
        names.learn(b, "b", 100, 0);
        assert_eq!(names.lookup(&b, 1), None);
        assert_eq!(names.dropped(), 1);
        names.learn(b, "b", 100, 200 * S);
        assert_eq!(names.lookup(&b, 200 * S).as_deref(), Some("b"));
        assert_eq!(names.len(), 1);
    }
}

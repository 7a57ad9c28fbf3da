//! Requests of one dependency grouped by (method, path pattern, status), bounded.

/// At most this many distinct groups per dependency; the rest fold into `other`.
pub const MAX_GROUPS: usize = 64;

/// Method, path pattern and status (0 when none) of a group.
pub type GroupKey = (String, String, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GroupStats {
    pub count: u64,
    pub errors: u64,
    pub latency_sum_ns: u64,
}

impl GroupStats {
    fn add(&mut self, other: &Self) {
        self.count = self.count.saturating_add(other.count);
        self.errors = self.errors.saturating_add(other.errors);
        self.latency_sum_ns = self.latency_sum_ns.saturating_add(other.latency_sum_ns);
    }

    /// Mean latency in milliseconds (0 without requests).
    pub fn avg_latency_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.latency_sum_ns as f64 / self.count as f64 / 1_000_000.0
        }
    }
}

/// Groups sorted by key in a vector sized to what it holds (a `BTreeMap` took a whole
/// node, about 900 bytes, for one group, and a dependency has one per time bucket too).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RequestGroups {
    groups: Vec<(GroupKey, GroupStats)>,
    /// Requests of groups beyond [`MAX_GROUPS`].
    other: GroupStats,
}

fn cmp_key(held: &GroupKey, method: &str, path: &str, status: u32) -> std::cmp::Ordering {
    (held.0.as_str(), held.1.as_str(), held.2).cmp(&(method, path, status))
}

impl RequestGroups {
    pub fn add(&mut self, key: GroupKey, stats: GroupStats) {
        self.add_ref(&key.0, &key.1, key.2, stats);
    }

    /// [`Self::add`] of a borrowed key: the strings are copied only for a new group.
    pub fn add_ref(&mut self, method: &str, path: &str, status: u32, stats: GroupStats) {
        if stats.count == 0 && stats.errors == 0 {
            return;
        }
        match self
            .groups
            .binary_search_by(|(held, _)| cmp_key(held, method, path, status))
        {
            Ok(at) => self.groups[at].1.add(&stats),
            Err(at) if self.groups.len() < MAX_GROUPS => {
                self.groups.reserve_exact(1);
                self.groups
                    .insert(at, ((method.to_owned(), path.to_owned(), status), stats));
            }
            Err(_) => self.other.add(&stats),
        }
    }

    pub fn merge(&mut self, other: &Self) {
        for ((method, path, status), stats) in &other.groups {
            self.add_ref(method, path, *status, *stats);
        }
        self.other.add(&other.other);
    }

    /// Sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&GroupKey, &GroupStats)> {
        self.groups.iter().map(|(key, stats)| (key, stats))
    }

    pub fn other(&self) -> GroupStats {
        self.other
    }

    pub fn errors(&self) -> u64 {
        self.groups
            .iter()
            .map(|(_, g)| g.errors)
            .fold(self.other.errors, u64::saturating_add)
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.other.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(errors: u64) -> GroupStats {
        GroupStats {
            count: 1,
            errors,
            latency_sum_ns: 1_000_000,
        }
    }

    #[test]
    fn groups_beyond_the_bound_fold_into_other() {
        let mut groups = RequestGroups::default();
        for i in 0..(MAX_GROUPS as u32 + 10) {
            groups.add(("GET".into(), format!("/p{i}"), 200), one(0));
        }
        groups.add(("GET".into(), "/p0".into(), 200), one(1));
        assert_eq!(groups.len(), MAX_GROUPS);
        assert_eq!(groups.other().count, 10);
        let p0 = groups
            .iter()
            .find(|(k, _)| k.1 == "/p0")
            .map(|(_, s)| *s)
            .expect("first group kept");
        assert_eq!((p0.count, p0.errors), (2, 1));
        assert_eq!(groups.errors(), 1);
        assert!((p0.avg_latency_ms() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn merge_adds_matching_groups() {
        let mut a = RequestGroups::default();
        a.add(("POST".into(), "/verify".into(), 200), one(0));
        let mut b = RequestGroups::default();
        b.add(("POST".into(), "/verify".into(), 200), one(0));
        b.add(("GET".into(), "/x".into(), 500), one(1));
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert_eq!(a.errors(), 1);
        let keys: Vec<&GroupKey> = a.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                &("GET".to_owned(), "/x".to_owned(), 500),
                &("POST".to_owned(), "/verify".to_owned(), 200)
            ],
            "sorted by key, as the map they replace"
        );
        let verify = a
            .iter()
            .find(|(k, _)| k.1 == "/verify")
            .map(|(_, s)| s.count);
        assert_eq!(verify, Some(2));
    }
}

//! One topology from several: controller replicas each hold the flow records their own
//! agents sent, and a query merges their topologies. Dependencies merge by their
//! statistics (counters add, histograms add bucket by bucket, time buckets of the same
//! start merge), which is associative and commutative: the merged answer is the same in
//! whatever order the replicas are folded in, so the same whichever replica is asked.

use super::Topology;
use super::limits::reserve;

impl Topology {
    /// Folds `other` into this topology. A service both know keeps this one's record (its
    /// first-seen time and classification evidence are the same facts seen twice). What
    /// would go over this topology's limits is left out and counted in the answer.
    pub fn merge_from(&self, other: &Topology) -> usize {
        let mut left_out = 0;
        for entry in &other.services {
            if self.services.contains_key(entry.key()) {
                continue;
            }
            if reserve(&self.service_count, self.limits.max_services) {
                self.services
                    .insert(entry.key().clone(), entry.value().clone());
            } else {
                left_out += 1;
            }
        }
        for entry in &other.dependencies {
            if let Some(mut mine) = self.dependencies.get_mut(entry.key()) {
                mine.merge(entry.value());
                continue;
            }
            if reserve(&self.dependency_count, self.limits.max_dependencies) {
                self.dependencies
                    .insert(entry.key().clone(), entry.value().clone());
            } else {
                left_out += 1;
            }
        }
        left_out
    }
}

#[cfg(test)]
mod tests {
    use crate::model::Direction;
    use crate::topology::Topology;
    use crate::topology::tests::{Directory, observation};

    fn topology(records: &[(&str, (&str, u16), u64)]) -> Topology {
        let t = Topology::new();
        let dir = Directory::lab();
        for (client, server, requests) in records {
            let mut o = observation(client, Direction::Outbound, ("10.0.0.1", 40_000), *server);
            o.requests = *requests;
            t.ingest(&o, &dir);
        }
        t
    }

    fn requests(t: &Topology) -> Vec<(String, String, u64)> {
        let mut out: Vec<_> = t
            .dependencies
            .iter()
            .map(|d| {
                (
                    d.key().client.clone(),
                    d.key().server.clone(),
                    d.value().total().requests,
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn replicas_merge_the_same_in_any_order() {
        let a = || {
            topology(&[
                ("web", ("10.0.0.2", 5432), 3),
                ("web", ("10.0.0.3", 6379), 1),
            ])
        };
        let b = || {
            topology(&[
                ("web", ("10.0.0.2", 5432), 4),
                ("api", ("10.0.0.2", 5432), 2),
            ])
        };
        let ab = Topology::new();
        ab.merge_from(&a());
        ab.merge_from(&b());
        let ba = Topology::new();
        ba.merge_from(&b());
        ba.merge_from(&a());
        assert_eq!(requests(&ab), requests(&ba));
        let merged = requests(&ab);
        assert_eq!(merged.len(), 3, "{merged:?}");
        let web_db: u64 = merged
            .iter()
            .filter(|(s, _, _)| s == "web")
            .map(|(_, _, n)| n)
            .sum();
        assert_eq!(web_db, 3 + 1 + 4, "counts add: {merged:?}");
        assert_eq!(ab.dependency_count(), 3);
    }
}

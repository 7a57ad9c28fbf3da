//! Checkpoints of the live topology: every dependency (all-time total, time buckets,
//! latency histograms, request groups, protocol evidence) and every service, as store
//! entries, written incrementally (what changed since the last checkpoint) and read back
//! at start, so a controller restart keeps the statistics up to its last checkpoint.
//!
//! Entries: `topology-checkpoint/dep/<client> <server> <transport> <port>` (the fields
//! separated by U+001F) and `topology-checkpoint/svc/<name>`, values JSON. Names learned
//! from the wire for addresses (SNI, Host, DNS answers) are not kept: they are learned
//! again from the next flows.

use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{BucketedStats, DependencyKey, ServiceState, Topology};
use crate::model::Transport;
use crate::topology::limits::reserve;
use crate::topology::stats::DependencyStats;

/// Prefix of every checkpoint entry in the store.
pub const PREFIX: &str = "topology-checkpoint/";
const DEP: &str = "topology-checkpoint/dep/";
const SVC: &str = "topology-checkpoint/svc/";
const SEP: char = '\u{1f}';

#[derive(Serialize, Deserialize)]
struct DependencyEntry {
    total: Option<DependencyStats>,
    touched_unix_ns: u64,
    buckets: VecDeque<(u64, DependencyStats)>,
}

#[derive(Serialize)]
struct DependencyEntryRef<'a> {
    total: Option<&'a DependencyStats>,
    touched_unix_ns: u64,
    buckets: &'a VecDeque<(u64, DependencyStats)>,
}

fn dependency_key(key: &DependencyKey) -> String {
    format!(
        "{DEP}{}{SEP}{}{SEP}{}{SEP}{}",
        key.client,
        key.server,
        key.transport.as_str(),
        key.port
    )
}

fn parse_dependency_key(key: &str) -> Result<DependencyKey, String> {
    let rest = key
        .strip_prefix(DEP)
        .ok_or_else(|| format!("{key}: not a dependency entry"))?;
    let parts: Vec<&str> = rest.split(SEP).collect();
    let [client, server, transport, port] = parts[..] else {
        return Err(format!("{key}: not client, server, transport, port"));
    };
    let transport = match transport {
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        other => return Err(format!("{key}: transport {other:?}")),
    };
    let port = port.parse().map_err(|_| format!("{key}: port {port:?}"))?;
    Ok(DependencyKey {
        client: client.to_owned(),
        server: server.to_owned(),
        transport,
        port,
    })
}

/// What a checkpoint writes: entries to put, and entries to delete (of dependencies and
/// services evicted since the last one).
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    /// Every entry the topology holds now (the next checkpoint's `known`).
    pub keys: HashSet<String>,
}

impl Topology {
    /// The entries of everything touched at or after `since_unix_ns` (on the topology's
    /// clock), and deletes for the entries in `known` (the last checkpoint's keys) whose
    /// dependency or service is gone.
    pub fn checkpoint(&self, since_unix_ns: u64, known: &HashSet<String>) -> Checkpoint {
        let mut out = Checkpoint::default();
        for entry in &self.dependencies {
            let key = dependency_key(entry.key());
            let stats = entry.value();
            if stats.touched_unix_ns >= since_unix_ns || !known.contains(&key) {
                let (total, touched_unix_ns, buckets) = stats.parts();
                // Serialising plain numbers and strings cannot fail.
                if let Ok(value) = serde_json::to_vec(&DependencyEntryRef {
                    total,
                    touched_unix_ns,
                    buckets,
                }) {
                    out.puts.push((key.clone(), value));
                }
            }
            out.keys.insert(key);
        }
        for entry in &self.services {
            let key = format!("{SVC}{}", entry.key());
            let state = entry.value();
            if (state.touched_unix_ns >= since_unix_ns || !known.contains(&key))
                && let Ok(value) = serde_json::to_vec(state)
            {
                out.puts.push((key.clone(), value));
            }
            out.keys.insert(key);
        }
        out.deletes = known
            .iter()
            .filter(|k| !out.keys.contains(*k))
            .cloned()
            .collect();
        out
    }

    /// Restores one checkpoint entry (what [`Self::checkpoint`] wrote) into an empty or
    /// partly filled topology; an entry already present is kept as it is. Within the
    /// topology's limits: a full topology refuses the entry.
    pub fn restore(&self, key: &str, value: &[u8]) -> Result<(), String> {
        if let Some(name) = key.strip_prefix(SVC) {
            let state: ServiceState =
                serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?;
            if self.services.contains_key(name) {
                return Ok(());
            }
            if !reserve(&self.service_count, self.limits.max_services) {
                return Err(format!("{key}: the topology is full (--max-services)"));
            }
            self.services.insert(name.to_owned(), state);
            return Ok(());
        }
        let dependency = parse_dependency_key(key)?;
        let entry: DependencyEntry =
            serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?;
        if self.dependencies.contains_key(&dependency) {
            return Ok(());
        }
        if !reserve(&self.dependency_count, self.limits.max_dependencies) {
            return Err(format!("{key}: the topology is full (--max-dependencies)"));
        }
        self.dependencies.insert(
            dependency,
            BucketedStats::from_parts(entry.total, entry.touched_unix_ns, entry.buckets),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, LatencyBucket};
    use crate::topology::tests::{Directory, observation};

    fn web_to(server: (&str, u16), requests: u64) -> crate::model::FlowObservation {
        let mut o = observation("web", Direction::Outbound, ("10.0.0.1", 40_000), server);
        o.requests = requests;
        o.latency_sum_ns = requests * 2_000_000;
        o.latency = vec![LatencyBucket {
            upper_bound_ns: 4_000_000,
            count: requests,
        }];
        o.bytes_out = 100 * requests;
        o
    }

    #[test]
    fn a_checkpoint_restores_the_same_topology_and_then_only_what_changed() {
        let directory = Directory::lab();
        let topology = Topology::default();
        topology.ingest(&web_to(("10.0.0.2", 5432), 7), &directory);
        topology.ingest(&web_to(("10.0.0.9", 6379), 3), &directory);
        let first = topology.checkpoint(0, &HashSet::new());
        assert!(first.deletes.is_empty());
        assert_eq!(first.puts.len(), first.keys.len(), "everything is new");
        assert_eq!(topology.dependency_count(), 2);

        let restored = Topology::default();
        for (k, v) in &first.puts {
            restored.restore(k, v).expect("restore");
        }
        // Everything but the process's own counters (records ingested since it started).
        let json = |t: &Topology| {
            let mut v = serde_json::to_value(t.snapshot(&directory, 0, 0)).unwrap();
            v.as_object_mut().unwrap().remove("stats");
            v
        };
        assert_eq!(
            json(&restored),
            json(&topology),
            "the restored topology is the same"
        );
        assert_eq!(restored.dependency_count(), 2);
        assert_eq!(restored.service_count(), topology.service_count());

        // Nothing touched since: nothing written; a dependency touched: only it.
        let later = crate::time::now_unix_ns() + 1;
        let none = topology.checkpoint(later, &first.keys);
        assert!(
            none.puts.is_empty() && none.deletes.is_empty(),
            "{:?}",
            none.puts
        );
        topology.ingest(&web_to(("10.0.0.2", 5432), 1), &directory);
        let some = topology.checkpoint(later, &first.keys);
        let written: Vec<&str> = some.puts.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            written
                .iter()
                .any(|k| k.starts_with(DEP) && k.contains("db")),
            "{written:?}"
        );
        assert!(
            !written
                .iter()
                .any(|k| k.starts_with(DEP) && k.contains("6379")),
            "{written:?}"
        );
        // An evicted dependency's entry is deleted.
        let gone = topology.evict_idle(
            crate::time::now_unix_ns() + 10_000_000_000_000,
            std::time::Duration::from_secs(1),
            &directory,
        );
        assert_eq!(gone.dependencies, 2);
        let after = topology.checkpoint(later, &first.keys);
        for key in first.keys.iter().filter(|k| k.starts_with(DEP)) {
            assert!(
                after.deletes.contains(key),
                "{key} not deleted: {:?}",
                after.deletes
            );
        }
        assert!(!after.puts.iter().any(|(k, _)| k.starts_with(DEP)));

        // Bad entries are errors that name them, never panics.
        for (key, value) in [
            (
                "topology-checkpoint/dep/a\u{1f}b\u{1f}sctp\u{1f}1",
                &b"{}"[..],
            ),
            ("topology-checkpoint/dep/a\u{1f}b", b"{}"),
            (
                "topology-checkpoint/dep/a\u{1f}b\u{1f}tcp\u{1f}99999",
                b"{}",
            ),
            (
                "topology-checkpoint/dep/a\u{1f}b\u{1f}tcp\u{1f}80",
                b"[1,2]",
            ),
            ("topology-checkpoint/svc/x", b"not json"),
        ] {
            let e = Topology::default().restore(key, value).expect_err(key);
            assert!(e.contains(key), "{e}");
        }
    }
}

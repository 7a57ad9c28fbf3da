//! Checkpoints of the live topology: every dependency (all-time total, time buckets,
//! latency histograms, request groups, protocol evidence) and every service, as store
//! entries, written incrementally (what changed since the last checkpoint) and read back
//! at start, so a controller restart keeps the statistics up to its last checkpoint.
//!
//! Entries (values JSON):
//!
//! - `topology-checkpoint/dep/<client> <server> <transport> <port>` (the fields separated
//!   by U+001F): a dependency's head, its all-time total (counters, latency histograms,
//!   request groups) and when it was last touched;
//! - the same key, U+001F and the bucket's start (20 digits, Unix ns): one time bucket,
//!   written when it changed since the last checkpoint and deleted once it expired;
//! - `topology-checkpoint/svc/<name>`: a service.
//!
//! So a busy dependency costs a checkpoint its head and the one or two buckets it
//! recorded into, not its whole day of buckets. The first format (before buckets had
//! entries of their own: the head held every bucket) is still read, and the first
//! checkpoint after it rewrites such a dependency in this format. Names learned from the
//! wire for addresses (SNI, Host, DNS answers) are not kept: they are learned again from
//! the next flows.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

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

/// A dependency's head as read back: `buckets` only in the first format.
#[derive(Deserialize)]
struct DependencyEntry {
    total: Option<DependencyStats>,
    touched_unix_ns: u64,
    #[serde(default)]
    buckets: Option<VecDeque<(u64, DependencyStats)>>,
}

#[derive(Serialize)]
struct HeadRef<'a> {
    total: Option<&'a DependencyStats>,
    touched_unix_ns: u64,
}

/// An entry's value, or why not (naming its key).
fn parse<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, String> {
    serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))
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

fn bucket_key(head: &str, start: u64) -> String {
    format!("{head}{SEP}{start:020}")
}

/// A dependency entry's key: the dependency, and the bucket's start for a bucket entry.
fn parse_dependency_key(key: &str) -> Result<(DependencyKey, Option<u64>), String> {
    let rest = key
        .strip_prefix(DEP)
        .ok_or_else(|| format!("{key}: not a dependency entry"))?;
    let parts: Vec<&str> = rest.split(SEP).collect();
    let (client, server, transport, port, bucket) = match parts[..] {
        [client, server, transport, port] => (client, server, transport, port, None),
        [client, server, transport, port, start] => (
            client,
            server,
            transport,
            port,
            Some(
                start
                    .parse::<u64>()
                    .map_err(|_| format!("{key}: bucket start {start:?}"))?,
            ),
        ),
        _ => {
            return Err(format!(
                "{key}: not client, server, transport, port[, bucket]"
            ));
        }
    };
    let transport = match transport {
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        other => return Err(format!("{key}: transport {other:?}")),
    };
    let port = port.parse().map_err(|_| format!("{key}: port {port:?}"))?;
    let dependency = DependencyKey {
        client: client.to_owned(),
        server: server.to_owned(),
        transport,
        port,
    };
    Ok((dependency, bucket))
}

/// What a checkpoint writes: entries to put, and entries to delete (expired buckets,
/// dependencies and services evicted since the last one, entries not read back).
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    /// What the store holds once these writes are done: give it to
    /// [`CheckpointState::commit`] when they are.
    pub changes: Changes,
}

/// How a checkpoint changes what the store holds (see [`CheckpointState::commit`]).
#[derive(Debug, Default)]
pub struct Changes {
    /// Per dependency written: its buckets added and those deleted.
    dependencies: Vec<(DependencyKey, Vec<u64>, Vec<u64>)>,
    dependencies_gone: Vec<DependencyKey>,
    services: Vec<String>,
    services_gone: Vec<String>,
    strays_deleted: bool,
}

/// What the store holds of the topology: the dependencies with the starts of their stored
/// buckets, the services, and entries to delete. Filled by [`Topology::restore_checkpoint`],
/// kept up to date by [`CheckpointState::commit`]; no key strings are kept or rebuilt per
/// checkpoint.
#[derive(Debug, Default)]
pub struct CheckpointState {
    dependencies: HashMap<DependencyKey, StoredDependency>,
    services: HashSet<String>,
    /// Entries that could not be read back: the next checkpoint deletes them.
    strays: Vec<String>,
}

#[derive(Debug, Default)]
struct StoredDependency {
    buckets: BTreeSet<u64>,
    /// Rewritten whole by the next checkpoint: stored in the first format, or not what
    /// the topology holds (it held the dependency before the restore).
    rewrite: bool,
}

impl CheckpointState {
    /// Records that `changes` (of a checkpoint) are in the store.
    pub fn commit(&mut self, changes: Changes) {
        for (key, added, deleted) in changes.dependencies {
            let stored = self.dependencies.entry(key).or_default();
            stored.rewrite = false;
            stored.buckets.extend(added);
            for start in deleted {
                stored.buckets.remove(&start);
            }
        }
        for key in changes.dependencies_gone {
            self.dependencies.remove(&key);
        }
        self.services.extend(changes.services);
        for name in changes.services_gone {
            self.services.remove(&name);
        }
        if changes.strays_deleted {
            self.strays.clear();
        }
    }

    /// Entries the store holds: heads, buckets, services.
    pub fn entries(&self) -> usize {
        self.dependencies
            .values()
            .map(|d| 1 + d.buckets.len())
            .sum::<usize>()
            + self.services.len()
    }
}

/// What [`Topology::restore_checkpoint`] read back.
#[derive(Debug, Default)]
pub struct RestoredCheckpoint {
    /// Entries restored.
    pub entries: usize,
    /// Entries refused, with why (the next checkpoint deletes them).
    pub refused: Vec<String>,
    /// Dependencies read in the first format (rewritten by the next checkpoint).
    pub first_format: usize,
    pub state: CheckpointState,
}

impl RestoredCheckpoint {
    /// Counts an entry restored, or refused (and deleted by the next checkpoint).
    fn count(&mut self, key: &str, restored: Result<(), String>) {
        match restored {
            Ok(()) => self.entries += 1,
            Err(e) => {
                self.refused.push(e);
                self.state.strays.push(key.to_owned());
            }
        }
    }
}

impl Topology {
    /// The writes of a checkpoint: the head of every dependency touched at or after
    /// `since_unix_ns` (on the topology's clock) with its buckets touched since then,
    /// everything `state` says the store lacks, and deletes for expired buckets and for
    /// what `state` holds that the topology no longer does.
    pub fn checkpoint(&self, since_unix_ns: u64, state: &CheckpointState) -> Checkpoint {
        let mut out = Checkpoint::default();
        for entry in &self.dependencies {
            let key = entry.key();
            let stats = entry.value();
            let stored = state.dependencies.get(key);
            let whole = stored.is_none_or(|s| s.rewrite);
            if !whole && stats.touched_unix_ns < since_unix_ns {
                continue;
            }
            let head = dependency_key(key);
            let (total, touched_unix_ns, _) = stats.parts();
            // Serialising plain numbers and strings cannot fail.
            if let Ok(value) = serde_json::to_vec(&HeadRef {
                total,
                touched_unix_ns,
            }) {
                out.puts.push((head.clone(), value));
            }
            let mut added = Vec::new();
            for (start, bucket, touched) in stats.buckets_touched() {
                let known = stored.is_some_and(|s| s.buckets.contains(&start));
                if (whole || touched >= since_unix_ns || !known)
                    && let Ok(value) = serde_json::to_vec(bucket)
                {
                    out.puts.push((bucket_key(&head, start), value));
                    added.push(start);
                }
            }
            // Buckets only expire from the front: those stored before the oldest kept.
            let oldest = stats.oldest_bucket().unwrap_or(u64::MAX);
            let expired: Vec<u64> = stored
                .map(|s| s.buckets.range(..oldest).copied().collect())
                .unwrap_or_default();
            out.deletes
                .extend(expired.iter().map(|start| bucket_key(&head, *start)));
            out.changes.dependencies.push((key.clone(), added, expired));
        }
        for (key, stored) in &state.dependencies {
            if !self.dependencies.contains_key(key) {
                let head = dependency_key(key);
                out.deletes
                    .extend(stored.buckets.iter().map(|start| bucket_key(&head, *start)));
                out.deletes.push(head);
                out.changes.dependencies_gone.push(key.clone());
            }
        }
        for entry in &self.services {
            let name = entry.key();
            let service = entry.value();
            let known = state.services.contains(name);
            if (service.touched_unix_ns >= since_unix_ns || !known)
                && let Ok(value) = serde_json::to_vec(service)
            {
                out.puts.push((format!("{SVC}{name}"), value));
                if !known {
                    out.changes.services.push(name.clone());
                }
            }
        }
        for name in &state.services {
            if !self.services.contains_key(name) {
                out.deletes.push(format!("{SVC}{name}"));
                out.changes.services_gone.push(name.clone());
            }
        }
        out.deletes.extend(state.strays.iter().cloned());
        out.changes.strays_deleted = !state.strays.is_empty();
        out
    }

    /// Restores a checkpoint read from the store (the entries under [`PREFIX`], in any
    /// order; keys of other kinds there are skipped, neither restored nor deleted) into an empty or partly filled topology: a dependency or service already
    /// present is kept as it is. Within the topology's limits: a full topology refuses
    /// entries. What was read is the state the next [`Self::checkpoint`] starts from.
    pub fn restore_checkpoint(&self, entries: &[(String, Vec<u8>)]) -> RestoredCheckpoint {
        let mut out = RestoredCheckpoint::default();
        let mut buckets = Vec::new();
        for (key, value) in entries {
            if !key.starts_with(DEP) && !key.starts_with(SVC) {
                // Another kind of entry under the prefix (not the topology's): left alone.
                continue;
            }
            let restored = if key.starts_with(SVC) {
                self.restore_service(key, value, &mut out.state)
            } else {
                match parse_dependency_key(key) {
                    Ok((dependency, Some(start))) => {
                        // After every head: a bucket needs its dependency.
                        buckets.push((key, dependency, start, value));
                        continue;
                    }
                    Ok((dependency, None)) => self.restore_head(key, dependency, value, &mut out),
                    Err(e) => Err(e),
                }
            };
            out.count(key, restored);
        }
        for (key, dependency, start, value) in buckets {
            let restored = self.restore_bucket(key, &dependency, start, value, &mut out.state);
            out.count(key, restored);
        }
        out
    }

    fn restore_service(
        &self,
        key: &str,
        value: &[u8],
        state: &mut CheckpointState,
    ) -> Result<(), String> {
        let name = &key[SVC.len()..];
        let service: ServiceState = parse(key, value)?;
        state.services.insert(name.to_owned());
        if self.services.contains_key(name) {
            return Ok(());
        }
        if !reserve(&self.service_count, self.limits.max_services) {
            state.services.remove(name);
            return Err(format!("{key}: the topology is full (--max-services)"));
        }
        self.services.insert(name.to_owned(), service);
        Ok(())
    }

    fn restore_head(
        &self,
        key: &str,
        dependency: DependencyKey,
        value: &[u8],
        out: &mut RestoredCheckpoint,
    ) -> Result<(), String> {
        let entry: DependencyEntry = parse(key, value)?;
        if self.dependencies.contains_key(&dependency) {
            out.state
                .dependencies
                .entry(dependency)
                .or_default()
                .rewrite = true;
            return Ok(());
        }
        if !reserve(&self.dependency_count, self.limits.max_dependencies) {
            return Err(format!("{key}: the topology is full (--max-dependencies)"));
        }
        let first_format = entry.buckets.is_some();
        out.first_format += usize::from(first_format);
        self.dependencies.insert(
            dependency.clone(),
            BucketedStats::from_parts(
                entry.total,
                entry.touched_unix_ns,
                entry.buckets.unwrap_or_default(),
            ),
        );
        out.state.dependencies.insert(
            dependency,
            StoredDependency {
                buckets: BTreeSet::new(),
                rewrite: first_format,
            },
        );
        Ok(())
    }

    fn restore_bucket(
        &self,
        key: &str,
        dependency: &DependencyKey,
        start: u64,
        value: &[u8],
        state: &mut CheckpointState,
    ) -> Result<(), String> {
        let stats: DependencyStats = parse(key, value)?;
        let Some(stored) = state.dependencies.get_mut(dependency) else {
            return Err(format!("{key}: a bucket of no dependency read back"));
        };
        // Into a dependency restored from this checkpoint only (one the topology held
        // before is rewritten whole by the next checkpoint).
        if !stored.rewrite
            && let Some(mut entry) = self.dependencies.get_mut(dependency)
        {
            entry.restore_bucket(start, stats);
        }
        stored.buckets.insert(start);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Direction, LatencyBucket};
    use crate::topology::BucketConfig;
    use crate::topology::tests::{Directory, observation};

    const MINUTE: u64 = 60_000_000_000;

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

    /// `requests` requests from web to db seen in minute `minute`.
    fn web_to_db_at(minute: u64, requests: u64) -> crate::model::FlowObservation {
        let mut o = web_to(("10.0.0.2", 5432), requests);
        o.first_seen_unix_ns = minute * MINUTE;
        o.last_seen_unix_ns = minute * MINUTE + 1;
        o
    }

    /// Everything but the process's own counters (records ingested since it started).
    fn json(t: &Topology, directory: &Directory) -> serde_json::Value {
        let mut v = serde_json::to_value(t.snapshot(directory, 0, 0)).unwrap();
        v.as_object_mut().unwrap().remove("stats");
        v
    }

    /// A checkpoint whose writes are done: the state afterwards.
    fn committed(topology: &Topology, since: u64, state: &mut CheckpointState) -> Checkpoint {
        let mut c = topology.checkpoint(since, state);
        state.commit(std::mem::take(&mut c.changes));
        c
    }

    fn bytes(c: &Checkpoint) -> usize {
        c.puts.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + c.deletes.iter().map(String::len).sum::<usize>()
    }

    /// A store of entries (what the controller's store would hold after `checkpoints`).
    fn apply(store: &mut std::collections::BTreeMap<String, Vec<u8>>, c: &Checkpoint) {
        for (k, v) in &c.puts {
            store.insert(k.clone(), v.clone());
        }
        for k in &c.deletes {
            store.remove(k);
        }
    }

    fn entries(store: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        store.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn a_checkpoint_restores_the_same_topology_and_then_only_what_changed() {
        let directory = Directory::lab();
        let topology = Topology::default();
        topology.ingest(&web_to(("10.0.0.2", 5432), 7), &directory);
        topology.ingest(&web_to(("10.0.0.9", 6379), 3), &directory);
        let mut state = CheckpointState::default();
        let first = committed(&topology, 0, &mut state);
        assert!(first.deletes.is_empty());
        assert_eq!(first.puts.len(), state.entries(), "everything is new");
        assert_eq!(topology.dependency_count(), 2);

        let restored = Topology::default();
        let read = restored.restore_checkpoint(&first.puts);
        assert!(read.refused.is_empty(), "{:?}", read.refused);
        assert_eq!(read.entries, first.puts.len());
        assert_eq!(read.first_format, 0);
        assert_eq!(read.state.entries(), state.entries());
        assert_eq!(
            json(&restored, &directory),
            json(&topology, &directory),
            "the restored topology is the same"
        );
        assert_eq!(restored.dependency_count(), 2);
        assert_eq!(restored.service_count(), topology.service_count());

        // Nothing touched since: nothing written; a dependency touched: only it.
        let later = crate::time::now_unix_ns() + 1;
        let none = topology.checkpoint(later, &state);
        assert!(
            none.puts.is_empty() && none.deletes.is_empty(),
            "{:?}",
            none.puts
        );
        topology.ingest(&web_to(("10.0.0.2", 5432), 1), &directory);
        let some = committed(&topology, later, &mut state);
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
        // An evicted dependency's entries (head and buckets) are deleted.
        let before_eviction = state.entries();
        let gone = topology.evict_idle(
            crate::time::now_unix_ns() + 10_000_000_000_000,
            std::time::Duration::from_secs(1),
            &directory,
        );
        assert_eq!(gone.dependencies, 2);
        let after = committed(&topology, later, &mut state);
        for key in first
            .puts
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(DEP))
        {
            assert!(
                after.deletes.contains(key),
                "{key} not deleted: {:?}",
                after.deletes
            );
        }
        assert!(!after.puts.iter().any(|(k, _)| k.starts_with(DEP)));
        assert!(state.entries() < before_eviction);

        // Bad entries are refused with their key, never a panic, and deleted next time.
        let bad = [
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
            (
                "topology-checkpoint/dep/a\u{1f}b\u{1f}tcp\u{1f}80\u{1f}x",
                b"{}",
            ),
            // A bucket whose dependency has no head.
            (
                "topology-checkpoint/dep/a\u{1f}b\u{1f}tcp\u{1f}81\u{1f}00000000000000000060",
                b"{}",
            ),
            ("topology-checkpoint/svc/x", b"not json"),
        ];
        let other = Topology::default().restore_checkpoint(&[(
            "topology-checkpoint/agent-seq/hv1".to_owned(),
            b"7".to_vec(),
        )]);
        assert_eq!((other.entries, other.refused.len()), (0, 0));
        assert!(
            other.state.strays.is_empty(),
            "another kind of entry is left alone"
        );
        for (key, value) in bad {
            let fresh = Topology::default();
            let read = fresh.restore_checkpoint(&[(key.to_owned(), value.to_vec())]);
            assert_eq!(read.entries, 0, "{key}");
            assert!(read.refused[0].contains(key), "{:?}", read.refused);
            let next = fresh.checkpoint(0, &read.state);
            assert_eq!(next.deletes, vec![key.to_owned()]);
        }
    }

    #[test]
    fn a_busy_dependency_writes_its_head_and_the_bucket_it_recorded_into_not_its_day() {
        let directory = Directory::lab();
        let topology = Topology::with_buckets(BucketConfig::default());
        // A day of minutes, each with traffic.
        for minute in 0..1_440 {
            topology.ingest(&web_to_db_at(1_000 + minute, 1 + minute % 5), &directory);
        }
        let mut state = CheckpointState::default();
        let first = committed(&topology, 0, &mut state);
        assert_eq!(
            first
                .puts
                .iter()
                .filter(|(k, _)| k.starts_with(DEP))
                .count(),
            1 + 1_440,
            "a head and an entry per bucket"
        );
        // One interval later: a few more records into the current minute.
        let since = crate::time::now_unix_ns();
        for _ in 0..10 {
            topology.ingest(&web_to_db_at(1_000 + 1_439, 3), &directory);
        }
        let next = committed(&topology, since, &mut state);
        let deps: Vec<&str> = next
            .puts
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with(DEP))
            .collect();
        assert_eq!(deps.len(), 2, "the head and the current bucket: {deps:?}");
        assert!(deps[1].ends_with(&format!("{:020}", (1_000 + 1_439) * MINUTE)));
        assert!(next.deletes.is_empty(), "{:?}", next.deletes);
        // What the first format wrote for the same interval: the whole dependency.
        let whole: usize = topology
            .dependencies
            .iter()
            .map(|e| {
                let (total, touched_unix_ns, buckets) = e.value().parts();
                let v = serde_json::json!({
                    "total": total, "touched_unix_ns": touched_unix_ns, "buckets": buckets,
                });
                dependency_key(e.key()).len() + serde_json::to_vec(&v).unwrap().len()
            })
            .sum();
        let dep_bytes: usize = next
            .puts
            .iter()
            .filter(|(k, _)| k.starts_with(DEP))
            .map(|(k, v)| k.len() + v.len())
            .sum();
        println!(
            "checkpoint of one busy dependency (1,440 one-minute buckets), one interval: {whole} bytes written whole (first format), {dep_bytes} bytes as head + bucket ({} in all with its services)",
            bytes(&next)
        );
        assert!(
            dep_bytes * 50 < whole,
            "{dep_bytes} bytes per interval, the whole dependency is {whole}"
        );
    }

    #[test]
    fn expired_buckets_are_deleted_and_a_restore_reads_head_and_buckets() {
        let directory = Directory::lab();
        let config = BucketConfig {
            width: std::time::Duration::from_secs(60),
            retention: std::time::Duration::from_secs(120),
        };
        let topology = Topology::with_buckets(config);
        let mut store = std::collections::BTreeMap::new();
        let mut state = CheckpointState::default();
        for minute in [10, 11, 12] {
            topology.ingest(&web_to_db_at(minute, 2), &directory);
        }
        apply(&mut store, &committed(&topology, 0, &mut state));
        let since = crate::time::now_unix_ns();
        topology.ingest(&web_to_db_at(14, 1), &directory);
        let c = committed(&topology, since, &mut state);
        apply(&mut store, &c);
        let bucket = |m: u64| format!("{:020}", m * MINUTE);
        let mut deleted: Vec<&str> = c.deletes.iter().map(String::as_str).collect();
        deleted.sort_unstable();
        assert_eq!(deleted.len(), 2, "{deleted:?}");
        assert!(deleted[0].ends_with(&bucket(10)) && deleted[1].ends_with(&bucket(11)));
        let buckets: Vec<&String> = store
            .keys()
            .filter(|k| k.matches(SEP).count() == 4)
            .collect();
        assert_eq!(buckets.len(), 2, "minutes 12 and 14: {buckets:?}");

        // Read back (in any order): the same topology, windows included.
        let mut shuffled = entries(&store);
        shuffled.reverse();
        let restored = Topology::with_buckets(config);
        let read = restored.restore_checkpoint(&shuffled);
        assert!(read.refused.is_empty(), "{:?}", read.refused);
        assert_eq!(read.entries, store.len());
        assert_eq!(json(&restored, &directory), json(&topology, &directory));
        let window = |t: &Topology| {
            t.dependencies
                .iter()
                .map(|e| {
                    let w = crate::topology::Window {
                        since: Some(12 * MINUTE),
                        until: Some(12 * MINUTE + 1),
                    };
                    e.value().in_window(&config, &w).map(|s| s.requests)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(window(&restored), vec![Some(2)]);
        assert_eq!(window(&restored), window(&topology));
        // Nothing changed since the restore: its next checkpoint writes nothing.
        let after = restored.checkpoint(crate::time::now_unix_ns(), &read.state);
        assert!(after.puts.is_empty() && after.deletes.is_empty());
    }

    #[test]
    fn the_first_format_is_read_and_rewritten_with_an_entry_per_bucket() {
        let directory = Directory::lab();
        let topology = Topology::default();
        for minute in [10, 11, 12] {
            topology.ingest(&web_to_db_at(minute, 2), &directory);
        }
        // The first format: a dependency's buckets inside its entry.
        let mut old: Vec<(String, Vec<u8>)> = topology
            .dependencies
            .iter()
            .map(|e| {
                let (total, touched_unix_ns, buckets) = e.value().parts();
                let v = serde_json::json!({
                    "total": total, "touched_unix_ns": touched_unix_ns, "buckets": buckets,
                });
                (dependency_key(e.key()), serde_json::to_vec(&v).unwrap())
            })
            .collect();
        old.extend(topology.services.iter().map(|e| {
            (
                format!("{SVC}{}", e.key()),
                serde_json::to_vec(e.value()).unwrap(),
            )
        }));
        let restored = Topology::default();
        let read = restored.restore_checkpoint(&old);
        assert!(read.refused.is_empty(), "{:?}", read.refused);
        assert_eq!(read.first_format, 1);
        assert_eq!(json(&restored, &directory), json(&topology, &directory));
        // Its next checkpoint, with nothing touched, rewrites it: head and three buckets.
        let next = restored.checkpoint(crate::time::now_unix_ns(), &read.state);
        let deps: Vec<&(String, Vec<u8>)> = next
            .puts
            .iter()
            .filter(|(k, _)| k.starts_with(DEP))
            .collect();
        assert_eq!(
            deps.len(),
            4,
            "{:?}",
            deps.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        let head: serde_json::Value = serde_json::from_slice(&deps[0].1).unwrap();
        assert!(head.get("buckets").is_none(), "{head}");
    }
}

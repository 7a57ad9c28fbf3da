//! Topology history: snapshots kept in the store over time, diffs between two times,
//! events when a dependency appears, and the allow-list check of observed dependencies.

pub mod allow;
pub mod diff;
pub mod events;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_store::{Store, StoreError};

use crate::time::rfc3339;
use crate::topology::{Appeared, TopologySnapshot};

pub use allow::{AllowList, AllowRule, Violation};
pub use diff::{DiffThresholds, TopologyDiff, diff};
pub use events::{EventBus, TopologyEvent};

const SNAPSHOTS: &str = "topology/snapshots/";
const INDEX: &str = "topology/snapshot-index/";
/// Snapshots taken on request (`POST /topology/snapshots`) are kept apart, with their own
/// bound, so they cannot push the scheduled ones out.
const MANUAL_SNAPSHOTS: &str = "topology/manual-snapshots/";
const MANUAL_INDEX: &str = "topology/manual-snapshot-index/";
const ALLOW_LIST: &str = "policy/allowed-dependencies";

/// Snapshots kept at most (a week of one-minute snapshots); older ones are deleted.
pub const DEFAULT_MAX_SNAPSHOTS: usize = 7 * 24 * 60;
/// Snapshots taken on request kept at most.
pub const DEFAULT_MAX_MANUAL_SNAPSHOTS: usize = 60;
/// The shortest time between two snapshots taken on request.
pub const DEFAULT_MANUAL_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// How many snapshots are kept, and how often one may be taken on request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Scheduled snapshots kept (the oldest go first).
    pub max_snapshots: usize,
    /// Snapshots taken on request kept, apart from the scheduled ones.
    pub max_manual_snapshots: usize,
    /// The shortest time between two snapshots taken on request by the same client.
    pub manual_min_interval: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            max_snapshots: DEFAULT_MAX_SNAPSHOTS,
            max_manual_snapshots: DEFAULT_MAX_MANUAL_SNAPSHOTS,
            manual_min_interval: DEFAULT_MANUAL_MIN_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub taken_at: String,
    pub taken_at_unix_ns: u64,
    pub services: usize,
    pub dependencies: usize,
    /// Taken on request rather than on schedule.
    #[serde(default)]
    pub manual: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored snapshot {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// A snapshot on request came sooner than the minimum interval after the same
    /// client's last one.
    #[error(
        "this client took a snapshot on request less than {min_interval:?} ago; try again in {retry_after:?}"
    )]
    TooSoon {
        min_interval: Duration,
        retry_after: Duration,
    },
}

#[derive(Debug)]
pub struct History {
    store: Arc<dyn Store>,
    pub events: EventBus,
    /// (source, target, port) of every dependency seen so far: from the newest stored
    /// snapshot at start, then from ingest ([`Self::appeared`]) and snapshots
    /// ([`Self::observe`]).
    known: Mutex<HashSet<Edge>>,
    /// [`Self::observe`] has looked once (its first look only learns).
    primed: std::sync::atomic::AtomicBool,
    allowed: RwLock<Option<AllowList>>,
    unauthorized: AtomicU64,
    limits: HistoryLimits,
    /// When each client (a token id) last took a snapshot on request (Unix ns); only
    /// those within the minimum interval are kept.
    last_manual: Mutex<HashMap<String, u64>>,
}

/// (source, target, port): a dependency's identity for "seen before".
type Edge = (String, String, u16);

fn key(prefix: &str, unix_ns: u64) -> String {
    format!("{prefix}{unix_ns:020}")
}

impl History {
    /// History over `store`, with the allow-list stored there (if any) loaded.
    pub fn new(store: Arc<dyn Store>) -> Result<Self, HistoryError> {
        Self::with_limits(store, HistoryLimits::default())
    }

    /// History over `store` keeping snapshots within `limits`.
    pub fn with_limits(store: Arc<dyn Store>, limits: HistoryLimits) -> Result<Self, HistoryError> {
        let allowed = match store.get(ALLOW_LIST)? {
            Some(bytes) => Some(
                AllowList::parse(&String::from_utf8_lossy(&bytes), ALLOW_LIST).map_err(
                    |message| HistoryError::Corrupt {
                        key: ALLOW_LIST.into(),
                        message,
                    },
                )?,
            ),
            None => None,
        };
        let history = Self {
            store,
            events: EventBus::default(),
            known: Mutex::new(HashSet::new()),
            primed: std::sync::atomic::AtomicBool::new(false),
            allowed: RwLock::new(allowed),
            unauthorized: AtomicU64::new(0),
            limits,
            last_manual: Mutex::new(HashMap::new()),
        };
        // What the last run knew is not new: no event for it when agents report again.
        if let Some(last) = history.snapshot_at(u64::MAX)? {
            let mut known = history.known.lock().unwrap_or_else(PoisonError::into_inner);
            known.extend(
                last.dependencies
                    .iter()
                    .map(|d| (d.source.clone(), d.target.clone(), d.port)),
            );
            drop(known);
            history.primed.store(true, Ordering::Relaxed);
        }
        Ok(history)
    }

    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Stores `snapshot` as a scheduled snapshot taken at `at_unix_ns` (durably), deleting
    /// the oldest scheduled ones beyond the bound.
    pub fn take_snapshot(
        &self,
        snapshot: &TopologySnapshot,
        at_unix_ns: u64,
    ) -> Result<SnapshotInfo, HistoryError> {
        self.store_snapshot(snapshot, at_unix_ns, false)
    }

    /// Stores a snapshot taken on request by `client` (who asks: a token id): refused
    /// ([`HistoryError::TooSoon`], and `snapshot` is not called) within the minimum
    /// interval after that client's last one; kept apart from the scheduled ones, the
    /// oldest deleted beyond their own bound.
    pub fn take_manual_snapshot(
        &self,
        client: &str,
        snapshot: impl FnOnce() -> TopologySnapshot,
        at_unix_ns: u64,
    ) -> Result<SnapshotInfo, HistoryError> {
        {
            let mut last = self
                .last_manual
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let interval =
                u64::try_from(self.limits.manual_min_interval.as_nanos()).unwrap_or(u64::MAX);
            // Clients whose interval has passed need no entry (the map stays as small as
            // the clients of the last interval).
            last.retain(|_, previous| previous.saturating_add(interval) > at_unix_ns);
            if let Some(previous) = last.get(client) {
                let next = previous.saturating_add(interval);
                return Err(HistoryError::TooSoon {
                    min_interval: self.limits.manual_min_interval,
                    retry_after: Duration::from_nanos(next.saturating_sub(at_unix_ns)),
                });
            }
            if interval > 0 {
                last.insert(client.to_owned(), at_unix_ns);
            }
        }
        self.store_snapshot(&snapshot(), at_unix_ns, true)
    }

    fn store_snapshot(
        &self,
        snapshot: &TopologySnapshot,
        at_unix_ns: u64,
        manual: bool,
    ) -> Result<SnapshotInfo, HistoryError> {
        let (bodies, index, max) = if manual {
            (
                MANUAL_SNAPSHOTS,
                MANUAL_INDEX,
                self.limits.max_manual_snapshots,
            )
        } else {
            (SNAPSHOTS, INDEX, self.limits.max_snapshots)
        };
        // Whole microseconds, so the RFC 3339 `taken_at` finds this very snapshot again.
        let at_unix_ns = at_unix_ns - at_unix_ns % 1_000;
        let info = SnapshotInfo {
            taken_at: rfc3339(at_unix_ns),
            taken_at_unix_ns: at_unix_ns,
            services: snapshot.services.len(),
            dependencies: snapshot.dependencies.len(),
            manual,
        };
        let body = serde_json::to_vec(snapshot).map_err(|e| StoreError(e.to_string()))?;
        let index_value = serde_json::to_vec(&info).map_err(|e| StoreError(e.to_string()))?;
        self.store.put(&key(bodies, at_unix_ns), &body)?;
        self.store.put(&key(index, at_unix_ns), &index_value)?;
        let all = self.store.scan_prefix(index)?;
        if all.len() > max {
            for (index_key, _) in &all[..all.len() - max] {
                let suffix = &index_key[index.len()..];
                self.store.delete(&format!("{bodies}{suffix}"))?;
                self.store.delete(index_key)?;
            }
        }
        Ok(info)
    }

    /// Stored snapshots, scheduled and on request, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>, HistoryError> {
        let mut all = Vec::new();
        for (index, manual) in [(INDEX, false), (MANUAL_INDEX, true)] {
            for (k, v) in self.store.scan_prefix(index)? {
                let mut info: SnapshotInfo =
                    serde_json::from_slice(&v).map_err(|e| HistoryError::Corrupt {
                        key: k,
                        message: e.to_string(),
                    })?;
                info.manual = manual;
                all.push(info);
            }
        }
        all.sort_by_key(|s| (s.taken_at_unix_ns, s.manual));
        Ok(all)
    }

    /// The newest snapshot taken at or before `unix_ns`.
    pub fn snapshot_at(&self, unix_ns: u64) -> Result<Option<TopologySnapshot>, HistoryError> {
        let Some(info) = self
            .snapshots()?
            .into_iter()
            .rev()
            .find(|s| s.taken_at_unix_ns <= unix_ns)
        else {
            return Ok(None);
        };
        let bodies = if info.manual {
            MANUAL_SNAPSHOTS
        } else {
            SNAPSHOTS
        };
        let k = key(bodies, info.taken_at_unix_ns);
        let Some(bytes) = self.store.get(&k)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| HistoryError::Corrupt {
                key: k,
                message: e.to_string(),
            })
    }

    /// A dependency the topology created at ingest ([`crate::topology::Topology::announce_to`]):
    /// publishes `weft.topology.dependency.appeared`, and
    /// `weft.topology.dependency.unauthorized` when the allow-list refuses it, unless it
    /// was seen before (same source, target and port). Returns whether it was new.
    pub fn appeared(&self, a: &Appeared) -> bool {
        let edge = (a.source.clone(), a.target.clone(), a.port);
        if !self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(edge)
        {
            return false;
        }
        let data = serde_json::json!({
            "source": a.source, "target": a.target, "protocol": a.protocol,
            "transport": a.transport.as_str(), "port": a.port,
            "first_seen": rfc3339(a.at_unix_ns), "found_by": "ingest",
        });
        self.publish_new(
            &a.source,
            &a.target,
            a.protocol,
            rfc3339(a.at_unix_ns),
            data,
        );
        true
    }

    fn publish_new(
        &self,
        source: &str,
        target: &str,
        protocol: &str,
        time: String,
        data: serde_json::Value,
    ) {
        self.events.publish(
            "weft.topology.dependency.appeared",
            time.clone(),
            data.clone(),
        );
        let refused = self
            .allow_list()
            .is_some_and(|list| !list.allows(source, target, protocol));
        if refused {
            self.unauthorized.fetch_add(1, Ordering::Relaxed);
            self.events
                .publish("weft.topology.dependency.unauthorized", time, data);
        }
    }

    /// Counts the dependencies of `snapshot` the allow-list refuses, and publishes the
    /// events of [`Self::appeared`] for any dependency not seen before that ingest did
    /// not announce (its announcement was dropped, or it came without one). The first
    /// call only learns what exists, unless a stored snapshot did at start.
    pub fn observe(&self, snapshot: &TopologySnapshot) {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let learn_only = !self.primed.swap(true, Ordering::Relaxed);
        let mut new = Vec::new();
        for d in &snapshot.dependencies {
            let edge = (d.source.clone(), d.target.clone(), d.port);
            if known.insert(edge) && !learn_only {
                new.push(d);
            }
        }
        drop(known);
        for d in new {
            let data = serde_json::json!({
                "source": d.source, "target": d.target, "protocol": d.protocol,
                "transport": d.transport, "port": d.port,
                "first_seen": d.first_seen, "found_by": "snapshot",
            });
            self.publish_new(
                &d.source,
                &d.target,
                &d.protocol,
                snapshot.generated_at.clone(),
                data,
            );
        }
        // The exact count (after the events, which count as they go).
        let violations = self.violations(snapshot);
        self.unauthorized
            .store(violations.len() as u64, Ordering::Relaxed);
    }

    /// Replaces the allow-list and stores its text durably.
    pub fn set_allow_list(&self, list: AllowList, text: &str) -> Result<(), HistoryError> {
        self.store.put(ALLOW_LIST, text.as_bytes())?;
        *self.allowed.write().unwrap_or_else(PoisonError::into_inner) = Some(list);
        Ok(())
    }

    pub fn allow_list(&self) -> Option<AllowList> {
        self.allowed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Observed dependencies the allow-list does not allow (none without an allow-list).
    pub fn violations(&self, snapshot: &TopologySnapshot) -> Vec<Violation> {
        self.allow_list()
            .map(|list| list.violations(snapshot))
            .unwrap_or_default()
    }

    /// Unauthorised dependencies at the last [`Self::observe`].
    pub fn unauthorized_dependencies(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;

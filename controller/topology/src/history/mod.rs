//! Topology history: snapshots kept in the store over time, diffs between two times,
//! events when a dependency appears, and the allow-list check of observed dependencies.

pub mod allow;
pub mod diff;
pub mod events;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_store::{Store, StoreError};

use crate::time::rfc3339;
use crate::topology::TopologySnapshot;

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
    /// (source, target, protocol) of every dependency seen so far.
    known: Mutex<Option<BTreeSet<(String, String, String)>>>,
    allowed: RwLock<Option<AllowList>>,
    unauthorized: AtomicU64,
    limits: HistoryLimits,
    /// When each client (a token id) last took a snapshot on request (Unix ns); only
    /// those within the minimum interval are kept.
    last_manual: Mutex<HashMap<String, u64>>,
}

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
        Ok(Self {
            store,
            events: EventBus::default(),
            known: Mutex::new(None),
            allowed: RwLock::new(allowed),
            unauthorized: AtomicU64::new(0),
            limits,
            last_manual: Mutex::new(HashMap::new()),
        })
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

    /// Compares `snapshot` with the dependencies seen before: publishes an event for each
    /// new one (and for each new one the allow-list refuses), and updates the count of
    /// unauthorised dependencies. The first call only learns what exists.
    pub fn observe(&self, snapshot: &TopologySnapshot) {
        let violations = self.violations(snapshot);
        self.unauthorized
            .store(violations.len() as u64, Ordering::Relaxed);
        let current: BTreeSet<(String, String, String)> = snapshot
            .dependencies
            .iter()
            .map(|d| (d.source.clone(), d.target.clone(), d.protocol.clone()))
            .collect();
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(seen) = known.as_mut() else {
            *known = Some(current);
            return;
        };
        for edge in current {
            if seen.contains(&edge) {
                continue;
            }
            let data = serde_json::json!({
                "source": edge.0, "target": edge.1, "protocol": edge.2,
            });
            self.events.publish(
                "weft.topology.dependency.appeared",
                snapshot.generated_at.clone(),
                data.clone(),
            );
            let unauthorized = violations
                .iter()
                .any(|v| v.source == edge.0 && v.target == edge.1 && v.protocol == edge.2);
            if unauthorized {
                self.events.publish(
                    "weft.topology.dependency.unauthorized",
                    snapshot.generated_at.clone(),
                    data,
                );
            }
            seen.insert(edge);
        }
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

//! Events that fire by themselves, and the one event log that serves them.
//!
//! - New dependencies are found at ingest: the topology announces each dependency it
//!   creates ([`weft_topology::topology::Topology::announce_to`]) into a bounded channel,
//!   and [`follow_ingest`] turns each into `weft.topology.dependency.appeared` (and
//!   `weft.topology.dependency.unauthorized` when the allow-list refuses it). A full
//!   channel drops announcements instead of slowing ingest; the periodic look at the
//!   snapshot ([`weft_topology::history::History::observe`]) publishes what was dropped.
//! - The anomaly watch ([`anomaly_watch`]) judges every time bucket as soon as it is
//!   complete (and once more a bucket later, for records that came late) and publishes
//!   each anomaly once as `weft.topology.anomaly`.
//! - [`log_topology_events`] and [`log_network_events`] append topology and network events
//!   to the shard manager's stored log, so `GET /events` serves shard, address, topology
//!   and network events with one CloudEvents envelope, one sequence and one way to
//!   resume (`from=N`, `Last-Event-ID`).
//!
//! Every task here holds the state weakly and ends when it is gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc};
use weft_shards::ShardManager;
use weft_shards::events::Foreign;
use weft_topology::analytics::anomaly::{self, AnomalyConfig, AnomalyWatch};
use weft_topology::history::{History, TopologyEvent};
use weft_topology::time::{now_unix_ns, parse_timestamp};
use weft_topology::topology::{Appeared, Topology};

/// `source` of topology events in the log.
pub const TOPOLOGY_SOURCE: &str = "/weft/controller/topology";

/// New dependencies announced at ingest and not yet published, at most.
pub const APPEARED_CHANNEL: usize = 4_096;

/// The pause of the announcement reader after each drain.
pub const APPEARED_PAUSE: Duration = Duration::from_millis(5);

/// Events appended to the log in one write, at most.
const LOG_BATCH: usize = 256;

/// How long after a bucket ends the anomaly watch judges it: records of its last
/// moments are still on their way from the agents.
pub const SETTLE: Duration = Duration::from_millis(300);

/// Connects the topology's announcements of new dependencies to the history's events.
/// Needs a tokio runtime; returns `None` (and announces nothing) without one, or when
/// the topology already announces elsewhere.
pub fn follow_ingest(
    topology: &Topology,
    history: &Arc<History>,
) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, mut rx) = mpsc::channel::<Appeared>(APPEARED_CHANNEL);
    if !topology.announce_to(tx) {
        return None;
    }
    let history = Arc::downgrade(history);
    Some(runtime.spawn(async move {
        let mut queued = Vec::with_capacity(APPEARED_CHANNEL);
        // Ends when the topology (the sender) is dropped.
        while rx.recv_many(&mut queued, APPEARED_CHANNEL).await > 0 {
            let Some(history) = history.upgrade() else {
                return;
            };
            for appeared in queued.drain(..) {
                history.appeared(&appeared);
            }
            drop(history);
            // A pause after each drain: a burst of new dependencies queues up instead of
            // waking this task once per dependency (which costs ingest a fifth of its
            // rate when every record is a new dependency).
            tokio::time::sleep(APPEARED_PAUSE).await;
        }
    }))
}

/// The log's subject of a topology event: `dependencies/<source>/<target>` when it is
/// about one dependency, else `topology`.
fn subject(event: &TopologyEvent) -> String {
    match (event.data["source"].as_str(), event.data["target"].as_str()) {
        (Some(source), Some(target)) => format!("dependencies/{source}/{target}"),
        _ => "topology".to_owned(),
    }
}

/// A topology event as an entry of the log.
pub fn foreign(event: &TopologyEvent) -> Foreign {
    Foreign {
        event_type: event.event_type.to_owned(),
        source: TOPOLOGY_SOURCE.to_owned(),
        subject: subject(event),
        at_unix_ns: parse_timestamp(&event.time).unwrap_or_else(|_| now_unix_ns()),
        data: event.data.clone(),
    }
}

/// Takes what `first` and the items queued right behind it make, up to [`LOG_BATCH`].
fn batch_of<T>(first: T, more: impl FnMut() -> Option<T>) -> Vec<T> {
    let mut batch = vec![first];
    batch.extend(std::iter::from_fn(more).take(LOG_BATCH - 1));
    batch
}

async fn append(shards: &ShardManager, events: Vec<Foreign>) {
    let count = events.len();
    if let Err(error) = shards.record_events(events).await {
        tracing::warn!(%error, count, "appending events to the event log failed");
    }
}

/// Topology events appended to the log per second at most, on average, and in one burst:
/// a flood of new dependencies (a fresh controller learning a large estate) must not push
/// the shard events out of the log's retention. `GET /events/topology` still has them.
pub const TOPOLOGY_LOG_RATE: f64 = 200.0;
pub const TOPOLOGY_LOG_BURST: f64 = 2_000.0;

/// A token bucket over [`TOPOLOGY_LOG_RATE`] and [`TOPOLOGY_LOG_BURST`].
#[derive(Debug)]
struct Budget {
    tokens: f64,
    at: std::time::Instant,
}

impl Budget {
    fn new(now: std::time::Instant) -> Self {
        Self {
            tokens: TOPOLOGY_LOG_BURST,
            at: now,
        }
    }

    /// How many of `wanted` events may go into the log now.
    fn take(&mut self, wanted: usize, now: std::time::Instant) -> usize {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * TOPOLOGY_LOG_RATE;
        self.tokens = (self.tokens + refill).min(TOPOLOGY_LOG_BURST);
        self.at = now;
        let granted = (self.tokens.floor() as usize).min(wanted);
        self.tokens -= granted as f64;
        granted
    }
}

/// Appends topology events to the log, in order, batched, within [`TOPOLOGY_LOG_RATE`].
/// Subscribes before it returns. Events beyond the rate, or lost because this task fell
/// behind the topology's channel (1,024 events), are not in the log; how many is logged
/// at most every 10 s.
pub fn log_topology_events(history: &History, shards: ShardManager) -> tokio::task::JoinHandle<()> {
    let mut rx = history.events.subscribe();
    tokio::spawn(async move {
        let mut budget = Budget::new(std::time::Instant::now());
        let mut left_out = 0u64;
        let mut last_warning: Option<std::time::Instant> = None;
        loop {
            let first = match rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    left_out += n;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let mut batch = batch_of(first, || rx.try_recv().ok());
            let now = std::time::Instant::now();
            let granted = budget.take(batch.len(), now);
            left_out += (batch.len() - granted) as u64;
            batch.truncate(granted);
            if left_out > 0
                && last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                tracing::warn!(
                    left_out,
                    "topology events left out of the event log (more than {TOPOLOGY_LOG_RATE}/s, or it fell behind); GET /events/topology has the recent ones"
                );
                left_out = 0;
                last_warning = Some(now);
            }
            append(&shards, batch.iter().map(foreign).collect()).await;
        }
    })
}

/// Appends every network event (lifecycle and drift) to the log, batched.
pub fn log_network_events(state: &crate::AppState) -> tokio::task::JoinHandle<()> {
    let mut events = Box::pin(crate::api::network_events::subscribe(state, None));
    let shards = state.shards.clone();
    tokio::spawn(async move {
        while let Some(first) = events.next().await {
            let mut batch = vec![first];
            while batch.len() < LOG_BATCH {
                match futures::FutureExt::now_or_never(events.next()) {
                    Some(Some(e)) => batch.push(e),
                    _ => break,
                }
            }
            let entries = batch
                .into_iter()
                .map(|e| Foreign {
                    event_type: e.event_type.to_owned(),
                    source: crate::api::network_events::SOURCE.to_owned(),
                    subject: format!("networks/{}", e.subject),
                    at_unix_ns: e.time_unix_ns,
                    data: e.data,
                })
                .collect();
            append(&shards, entries).await;
        }
    })
}

/// The start of the bucket after the one holding `now_unix_ns`.
fn next_bucket_start(now_unix_ns: u64, width_ns: u64) -> u64 {
    (now_unix_ns / width_ns + 1) * width_ns
}

/// Judges each time bucket [`SETTLE`] after it ends, and again one bucket later (for
/// records that came late), with [`anomaly::detect`] (baseline up to
/// `config.max_buckets` buckets), and publishes each anomaly once as
/// `weft.topology.anomaly`, until the topology or the history is gone.
pub async fn anomaly_watch(
    topology: Weak<Topology>,
    history: Weak<History>,
    config: AnomalyConfig,
) {
    let watch = AnomalyWatch::default();
    loop {
        let Some(width) = topology.upgrade().map(|t| t.bucket_config().width) else {
            return;
        };
        let width_ns = u64::try_from(width.as_nanos()).unwrap_or(u64::MAX).max(1);
        let now = now_unix_ns();
        let due = next_bucket_start(now, width_ns) + u64::try_from(SETTLE.as_nanos()).unwrap_or(0);
        tokio::time::sleep(Duration::from_nanos(due.saturating_sub(now))).await;
        let (Some(topology), Some(history)) = (topology.upgrade(), history.upgrade()) else {
            return;
        };
        let now = now_unix_ns();
        let span = width_ns.saturating_mul(config.max_buckets as u64);
        // The bucket that just ended, and the one before again: records that reached the
        // controller after its first look (an agent drains every second or two) count.
        for until in [now.saturating_sub(width_ns), now] {
            let report = anomaly::detect(&topology, until.saturating_sub(span), until, &config);
            let published = watch.publish(&report, &history.events);
            if published > 0 {
                tracing::info!(
                    published,
                    bucket = report.current_bucket.as_deref().unwrap_or("-"),
                    "topology anomalies"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_takes_topology_events_within_its_rate() {
        let t0 = std::time::Instant::now();
        let mut b = Budget::new(t0);
        assert_eq!(b.take(5_000, t0), TOPOLOGY_LOG_BURST as usize);
        assert_eq!(b.take(10, t0), 0);
        assert_eq!(
            b.take(1_000, t0 + Duration::from_secs(1)),
            TOPOLOGY_LOG_RATE as usize
        );
        assert_eq!(b.take(3, t0 + Duration::from_secs(100)), 3);
        assert_eq!(
            b.take(5_000, t0 + Duration::from_secs(100)),
            TOPOLOGY_LOG_BURST as usize - 3
        );
    }

    #[test]
    fn buckets_are_judged_after_they_end() {
        assert_eq!(next_bucket_start(0, 10), 10);
        assert_eq!(next_bucket_start(9, 10), 10);
        assert_eq!(next_bucket_start(10, 10), 20);
    }

    #[test]
    fn topology_events_keep_their_type_time_and_data_in_the_log() {
        let event = TopologyEvent {
            specversion: "1.0",
            id: "7".into(),
            source: "weft-controller/topology",
            event_type: "weft.topology.anomaly",
            time: "2026-11-23T16:03:00.000000Z".into(),
            data: serde_json::json!({"source": "web", "target": "db", "metric": "error_rate"}),
        };
        let f = foreign(&event);
        assert_eq!(f.event_type, "weft.topology.anomaly");
        assert_eq!(f.source, TOPOLOGY_SOURCE);
        assert_eq!(f.subject, "dependencies/web/db");
        assert_eq!(f.at_unix_ns, 1_795_449_780_000_000_000);
        assert_eq!(f.data["metric"], "error_rate");
        let other = TopologyEvent {
            data: serde_json::json!({}),
            ..event
        };
        assert_eq!(foreign(&other).subject, "topology");
        let batch = batch_of(1, {
            let mut n = 1;
            move || {
                n += 1;
                Some(n)
            }
        });
        assert_eq!(batch.len(), LOG_BATCH);
    }
}

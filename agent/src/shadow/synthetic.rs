//! Synthetic load: what a sink replayed into the shadow, recorded per connection with the
//! times production's client sent it, replayed again at a multiple of that rate.
//!
//! The recording holds the bytes sent to the shadow (after read-only filtering: a write
//! skipped then is not in it), as requests with their offsets from the connection's
//! first, and each connection's start. A run of `multiplier` m for `duration` seconds
//! opens the recorded connections again into the shadow's copy of the node, each at its
//! recorded start divided by m (the recording repeated while the run lasts), and sends each
//! request at its offset divided by m; the answers are read and dropped (the comparison
//! with production is the sampled replay's job). Bounded: the recording in connections and
//! bytes (oldest dropped first), a run in connections open at once (a connection that
//! would exceed it is skipped and counted, never queued).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info};

/// Connections kept in a sink's recording.
pub const MAX_RECORDED_CONNECTIONS: usize = 1024;
/// Bytes kept in a sink's recording (all connections).
pub const MAX_RECORDED_BYTES: u64 = 64 * 1024 * 1024;
/// A connection larger than this is not recorded.
pub const MAX_CONNECTION_BYTES: u64 = 4 * 1024 * 1024;
/// Connections of a run open at once.
pub const MAX_OPEN: usize = 256;
/// How long a replayed connection waits for the rest of its answers after its last write.
const DRAIN: Duration = Duration::from_secs(5);
/// Longest run.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Largest multiplier.
pub const MAX_MULTIPLIER: f64 = 1000.0;

/// One recorded connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedConnection {
    /// Where it went (the shadow's copy has production's addresses).
    pub server: SocketAddr,
    /// Production's capture time of its first request (ns since the epoch).
    pub opened_unix_ns: u64,
    /// Requests: offset from the first (ns) and the bytes sent.
    pub requests: Vec<(u64, Vec<u8>)>,
}

impl RecordedConnection {
    fn bytes(&self) -> u64 {
        self.requests.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// Builds one connection's recording as the sink replays it.
#[derive(Debug, Default)]
pub struct ConnectionRecorder {
    server: Option<SocketAddr>,
    first_ns: u64,
    requests: Vec<(u64, Vec<u8>)>,
    bytes: u64,
    too_big: bool,
}

impl ConnectionRecorder {
    pub fn new(server: SocketAddr) -> Self {
        Self {
            server: Some(server),
            ..Default::default()
        }
    }

    /// `bytes` were sent to the shadow for production's capture time `at_unix_ns`.
    pub fn sent(&mut self, at_unix_ns: u64, bytes: &[u8]) {
        if self.too_big || bytes.is_empty() {
            return;
        }
        self.bytes += bytes.len() as u64;
        if self.bytes > MAX_CONNECTION_BYTES {
            self.too_big = true;
            self.requests = Vec::new();
            return;
        }
        if self.requests.is_empty() {
            self.first_ns = at_unix_ns;
        }
        self.requests
            .push((at_unix_ns.saturating_sub(self.first_ns), bytes.to_vec()));
    }

    /// The finished recording (`None`: nothing sent, or too big to keep).
    pub fn finish(self) -> Option<RecordedConnection> {
        if self.too_big || self.requests.is_empty() {
            return None;
        }
        Some(RecordedConnection {
            server: self.server?,
            opened_unix_ns: self.first_ns,
            requests: self.requests,
        })
    }
}

/// A sink's recording: the latest connections, bounded.
#[derive(Debug, Default)]
pub struct Recording {
    inner: Mutex<(VecDeque<Arc<RecordedConnection>>, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recording {
    pub fn push(&self, c: RecordedConnection) {
        let size = c.bytes();
        let mut g = lock(&self.inner);
        let (conns, bytes) = &mut *g;
        conns.push_back(Arc::new(c));
        *bytes += size;
        while conns.len() > MAX_RECORDED_CONNECTIONS || *bytes > MAX_RECORDED_BYTES {
            let Some(old) = conns.pop_front() else { break };
            *bytes -= old.bytes();
        }
    }

    /// The recorded connections, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<RecordedConnection>> {
        lock(&self.inner).0.iter().cloned().collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.inner).0.len()
    }
}

/// What runs made (the sink's report: `synthetic_*`).
#[derive(Debug, Default)]
pub struct SyntheticCounters {
    pub runs_started: AtomicU64,
    pub runs_finished: AtomicU64,
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub skipped: AtomicU64,
}

impl SyntheticCounters {
    pub fn measurements(&self) -> Vec<(String, f64)> {
        [
            ("synthetic_runs_started", &self.runs_started),
            ("synthetic_runs_finished", &self.runs_finished),
            ("synthetic_connections", &self.connections),
            ("synthetic_requests", &self.requests),
            ("synthetic_connections_failed", &self.failed),
            ("synthetic_connections_skipped", &self.skipped),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_owned(), c.load(Relaxed) as f64))
        .collect()
    }
}

/// A run asked for.
/// `Eq`: a checked load's multiplier is finite (never NaN).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub multiplier: f64,
    pub duration: Duration,
    pub generation: u64,
}

impl Eq for Load {}

impl Load {
    /// From the wire; `None`: no load asked (multiplier 0).
    pub fn from_wire(l: &weft_proto::v1::SyntheticLoad) -> Result<Option<Self>, String> {
        if l.multiplier == 0.0 {
            return Ok(None);
        }
        if !l.multiplier.is_finite() || l.multiplier < 0.0 || l.multiplier > MAX_MULTIPLIER {
            return Err(format!(
                "synthetic multiplier {}: use more than 0 and at most {MAX_MULTIPLIER}",
                l.multiplier
            ));
        }
        let duration = Duration::from_secs(u64::from(l.duration_seconds));
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(format!(
                "synthetic duration {} s: use 1..={} s",
                l.duration_seconds,
                MAX_DURATION.as_secs()
            ));
        }
        Ok(Some(Self {
            multiplier: l.multiplier,
            duration,
            generation: l.generation,
        }))
    }
}

/// When each recorded connection starts in a run, from the run's start: the recording's
/// own starts divided by `multiplier`, repeated (a cycle is the recording's span plus its
/// mean gap) until `duration`. Sorted; bounded by `limit` entries.
pub fn schedule(
    recording: &[Arc<RecordedConnection>],
    multiplier: f64,
    duration: Duration,
    limit: usize,
) -> Vec<(Duration, usize)> {
    let mut order: Vec<usize> = (0..recording.len()).collect();
    order.sort_by_key(|&i| recording[i].opened_unix_ns);
    let Some(&first) = order.first() else {
        return Vec::new();
    };
    let t0 = recording[first].opened_unix_ns;
    let span = recording[*order.last().unwrap_or(&first)].opened_unix_ns - t0;
    let gap = if order.len() > 1 {
        span / (order.len() as u64 - 1)
    } else {
        1_000_000_000
    };
    let cycle = (span + gap.max(1)) as f64 / multiplier;
    let end = duration.as_secs_f64() * 1e9;
    let mut out = Vec::new();
    let mut k = 0u64;
    'cycles: loop {
        for &i in &order {
            let at = k as f64 * cycle + (recording[i].opened_unix_ns - t0) as f64 / multiplier;
            if at >= end || out.len() >= limit {
                break 'cycles;
            }
            out.push((Duration::from_nanos(at as u64), i));
        }
        k += 1;
    }
    out
}

/// Runs `load` over `recording` into the shadow (namespace `netns`). Returns when the
/// run's connections are all done.
pub async fn run(
    load: Load,
    recording: Vec<Arc<RecordedConnection>>,
    netns: PathBuf,
    counters: Arc<SyntheticCounters>,
) {
    counters.runs_started.fetch_add(1, Relaxed);
    // At most one connection start per 100 us on average over the run: bounded work.
    let limit = (load.duration.as_secs() as usize)
        .saturating_mul(10_000)
        .max(1);
    let plan = schedule(&recording, load.multiplier, load.duration, limit);
    info!(
        connections = plan.len(),
        recorded = recording.len(),
        multiplier = load.multiplier,
        seconds = load.duration.as_secs(),
        generation = load.generation,
        "synthetic load starts"
    );
    let start = tokio::time::Instant::now();
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_OPEN));
    let mut tasks = tokio::task::JoinSet::new();
    for (at, i) in plan {
        tokio::time::sleep_until(start + at).await;
        let Ok(permit) = open.clone().try_acquire_owned() else {
            counters.skipped.fetch_add(1, Relaxed);
            continue;
        };
        let (c, ns, counters) = (recording[i].clone(), netns.clone(), counters.clone());
        let m = load.multiplier;
        tasks.spawn(async move {
            let _permit = permit;
            match one(&c, ns, m, &counters).await {
                Ok(()) => {}
                Err(e) => {
                    debug!(error = %e, "synthetic connection failed");
                    counters.failed.fetch_add(1, Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    counters.runs_finished.fetch_add(1, Relaxed);
    info!(generation = load.generation, "synthetic load done");
}

/// One recorded connection replayed at `multiplier` times its pace.
async fn one(
    c: &RecordedConnection,
    netns: PathBuf,
    multiplier: f64,
    counters: &SyntheticCounters,
) -> Result<(), String> {
    let stream = super::sink::connect(netns, c.server).await?;
    counters.connections.fetch_add(1, Relaxed);
    let (mut rd, mut wr) = stream.into_split();
    // Answers are read (so the shadow is never blocked on a full window) and dropped.
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    let start = tokio::time::Instant::now();
    for (offset, bytes) in &c.requests {
        let at = Duration::from_nanos((*offset as f64 / multiplier) as u64);
        tokio::time::sleep_until(start + at).await;
        wr.write_all(bytes)
            .await
            .map_err(|e| format!("writing to {}: {e}", c.server))?;
        counters.requests.fetch_add(1, Relaxed);
    }
    let _ = wr.shutdown().await;
    let _ = tokio::time::timeout(DRAIN, reader).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(opened: u64, requests: &[(u64, &[u8])]) -> Arc<RecordedConnection> {
        Arc::new(RecordedConnection {
            server: "198.18.0.1:80".parse().unwrap(),
            opened_unix_ns: opened,
            requests: requests.iter().map(|(o, b)| (*o, b.to_vec())).collect(),
        })
    }

    #[test]
    fn a_recorder_keeps_offsets_from_the_first_request_and_drops_what_is_too_big() {
        let mut r = ConnectionRecorder::new("198.18.0.1:80".parse().unwrap());
        r.sent(1_000, b"GET /a");
        r.sent(1_500, b"");
        r.sent(3_000, b"GET /b");
        let c = r.finish().expect("recorded");
        assert_eq!(c.opened_unix_ns, 1_000);
        assert_eq!(
            c.requests,
            vec![(0, b"GET /a".to_vec()), (2_000, b"GET /b".to_vec())]
        );
        let mut big = ConnectionRecorder::new("198.18.0.1:80".parse().unwrap());
        big.sent(0, &vec![0u8; MAX_CONNECTION_BYTES as usize]);
        big.sent(1, b"x");
        assert!(big.finish().is_none());
        assert!(
            ConnectionRecorder::new("198.18.0.1:80".parse().unwrap())
                .finish()
                .is_none()
        );
    }

    #[test]
    fn the_recording_is_bounded_oldest_out_first() {
        let rec = Recording::default();
        for i in 0..(MAX_RECORDED_CONNECTIONS as u64 + 10) {
            rec.push((*conn(i, &[(0, b"x")])).clone());
        }
        let s = rec.snapshot();
        assert_eq!(s.len(), MAX_RECORDED_CONNECTIONS);
        assert_eq!(s[0].opened_unix_ns, 10);
        let big = vec![0u8; (MAX_CONNECTION_BYTES - 1) as usize];
        for i in 0..40 {
            rec.push(RecordedConnection {
                server: "198.18.0.1:80".parse().unwrap(),
                opened_unix_ns: 10_000 + i,
                requests: vec![(0, big.clone())],
            });
        }
        let total: u64 = rec.snapshot().iter().map(|c| c.bytes()).sum();
        assert!(total <= MAX_RECORDED_BYTES, "{total}");
        assert_eq!(rec.snapshot().last().unwrap().opened_unix_ns, 10_039);
    }

    #[test]
    fn a_run_starts_the_recorded_connections_at_the_multiplied_rate_and_repeats_them() {
        // Recorded: one connection a second for 4 s (5 connections).
        let rec: Vec<_> = (0..5u64)
            .map(|i| conn(1_000_000_000 * (10 + i), &[(0, b"x")]))
            .collect();
        // Three times as fast for 10 s: a connection every 1/3 s, the recording repeated.
        let plan = schedule(&rec, 3.0, Duration::from_secs(10), 10_000);
        assert_eq!(plan.len(), 30, "{plan:?}");
        for (n, (at, i)) in plan.iter().enumerate() {
            let want = n as f64 / 3.0;
            assert!((at.as_secs_f64() - want).abs() < 1e-6, "{n}: {at:?}");
            assert_eq!(*i, n % 5);
        }
        // Once at the recorded rate: 10 s of it.
        assert_eq!(
            schedule(&rec, 1.0, Duration::from_secs(10), 10_000).len(),
            10
        );
        // Bounded.
        assert_eq!(
            schedule(&rec, 1000.0, Duration::from_secs(10), 100).len(),
            100
        );
        assert!(schedule(&[], 2.0, Duration::from_secs(10), 100).is_empty());
    }

    #[test]
    fn loads_are_checked() {
        let l = |multiplier, duration_seconds| weft_proto::v1::SyntheticLoad {
            multiplier,
            duration_seconds,
            generation: 1,
        };
        assert_eq!(Load::from_wire(&l(0.0, 10)), Ok(None));
        assert!(Load::from_wire(&l(2.0, 10)).unwrap().is_some());
        assert!(Load::from_wire(&l(-1.0, 10)).is_err());
        assert!(Load::from_wire(&l(f64::NAN, 10)).is_err());
        assert!(Load::from_wire(&l(2.0, 0)).is_err());
        assert!(Load::from_wire(&l(2.0, 7200)).is_err());
    }

    #[tokio::test]
    async fn a_run_replays_the_recorded_requests_into_a_real_server_at_pace() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let g = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let g = g.clone();
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let _ = s.read_to_end(&mut all).await;
                    lock(&g).push(all);
                });
            }
        });
        let rec: Vec<_> = (0..4u64)
            .map(|i| {
                Arc::new(RecordedConnection {
                    server,
                    opened_unix_ns: 200_000_000 * i,
                    requests: vec![
                        (0, format!("A{i}").into_bytes()),
                        (100_000_000, b"B".to_vec()),
                    ],
                })
            })
            .collect();
        let counters = Arc::new(SyntheticCounters::default());
        let netns = PathBuf::from("/proc/self/ns/net");
        let t = std::time::Instant::now();
        run(
            Load {
                multiplier: 2.0,
                duration: Duration::from_secs(1),
                generation: 1,
            },
            rec,
            netns,
            counters.clone(),
        )
        .await;
        // 4 recorded over 0.6 s, cycle 0.8 s at 1x, 0.4 s at 2x: 0, .1, .2, .3 then
        // .4, .5, .6, .7, .8 ... 0.9 within the second: 10 connections.
        assert_eq!(counters.connections.load(Relaxed), 10);
        assert_eq!(counters.requests.load(Relaxed), 20);
        assert_eq!(counters.failed.load(Relaxed), 0);
        assert_eq!(counters.runs_finished.load(Relaxed), 1);
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut got = lock(&got).clone();
        got.sort();
        assert_eq!(got.len(), 10);
        assert_eq!(got.iter().filter(|g| g.as_slice() == b"A0B").count(), 3);
        assert_eq!(got.iter().filter(|g| g.as_slice() == b"A3B").count(), 2);
    }
}

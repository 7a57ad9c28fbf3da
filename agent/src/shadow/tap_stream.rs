//! Streaming a tap's frames to its sinks: one task per sink holds a TCP connection (a
//! `ShadowHello`, then length-delimited `ShadowFrame`s), reconnecting with backoff.
//!
//! The assembler hands frames over with `try_send` on a bounded queue per sink: a slow or
//! dead sink fills its queue, and the connection whose frame did not fit is dropped from
//! sampling for that sink (counted once in `connections_lost`; the sink is told with a
//! `gap` frame as soon as the queue has room). Capture and production never wait for a
//! sink. After a reconnect, frames of connections whose `open` went over the previous
//! TCP connection are dropped (the sink cannot place them) and those connections counted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use weft_proto::v1::{ShadowFrame, ShadowHello};

/// Frames queued per sink.
pub const SINK_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Unacknowledged data on a sink connection for this long fails it (`TCP_USER_TIMEOUT`).
const USER_TIMEOUT: Duration = Duration::from_secs(5);
/// Ids of lost connections remembered for de-duplicated counting.
const LOST_IDS: usize = 65_536;

/// A tap's streaming counters (shared by its sink tasks and the assembler).
#[derive(Debug, Default)]
pub struct StreamStats {
    /// Payload bytes written to sinks (each sink's copy counts).
    pub bytes_streamed: AtomicU64,
    /// Connections dropped from sampling: a gap, a full queue, a sink reconnect, refused.
    pub connections_lost: AtomicU64,
    pub sinks_connected: AtomicU64,
    /// Connections given to the sinks (opened).
    pub connections_streamed: AtomicU64,
    /// Frames a sink did not take: its queue was full, or no sink was connected.
    pub frames_refused: AtomicU64,
    /// Sink connections made.
    pub sink_connects: AtomicU64,
    lost_ids: Mutex<HashSet<u64>>,
}

impl StreamStats {
    /// What the sinks did, for the tap's breaker.
    pub fn totals(&self) -> super::tap_breaker::SinkTotals {
        super::tap_breaker::SinkTotals {
            streamed: self.bytes_streamed.load(Relaxed),
            refused: self.frames_refused.load(Relaxed),
            connects: self.sink_connects.load(Relaxed),
        }
    }

    /// Counts connection `id` as lost, once.
    pub fn lost(&self, id: u64) {
        let mut ids = self.lost_ids.lock().unwrap_or_else(|p| p.into_inner());
        if ids.len() >= LOST_IDS {
            ids.clear();
        }
        if ids.insert(id) {
            self.connections_lost.fetch_add(1, Relaxed);
        }
    }

    /// Counts a loss without a connection id (refused before it had one).
    pub fn lost_anonymous(&self) {
        self.connections_lost.fetch_add(1, Relaxed);
    }
}

/// The assembler's end of one sink.
pub struct SinkTx {
    tx: mpsc::Sender<Arc<ShadowFrame>>,
    /// Connections dropped for this sink; their later frames are not queued.
    dropped: HashSet<u64>,
    /// Dropped connections the sink has not been told about yet.
    owed_gaps: Vec<u64>,
}

impl SinkTx {
    /// Queues `frame` (of connection `frame.connection`) unless the connection was dropped
    /// for this sink. Never waits.
    pub fn offer(&mut self, frame: &Arc<ShadowFrame>, stats: &StreamStats) {
        let id = frame.connection;
        self.pay_gaps();
        if self.dropped.contains(&id) {
            if frame.close {
                self.dropped.remove(&id);
                self.owed_gaps.retain(|&x| x != id);
            }
            return;
        }
        if self.tx.try_send(frame.clone()).is_err() {
            stats.frames_refused.fetch_add(1, Relaxed);
            stats.lost(id);
            if !frame.close {
                self.dropped.insert(id);
                self.owed_gaps.push(id);
            }
        }
    }

    fn pay_gaps(&mut self) {
        while let Some(&id) = self.owed_gaps.last() {
            let gap = Arc::new(ShadowFrame {
                connection: id,
                gap: true,
                close: true,
                ..Default::default()
            });
            if self.tx.try_send(gap).is_err() {
                return;
            }
            self.owed_gaps.pop();
        }
    }
}

/// Starts the task of one sink; it ends when every `SinkTx` for it is dropped.
pub fn start_sink(
    runtime: &tokio::runtime::Handle,
    addr: SocketAddr,
    hello: ShadowHello,
    stats: Arc<StreamStats>,
) -> (SinkTx, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(SINK_QUEUE);
    let task = runtime.spawn(run_sink(addr, hello, rx, stats));
    (
        SinkTx {
            tx,
            dropped: HashSet::new(),
            owed_gaps: Vec::new(),
        },
        task,
    )
}

async fn run_sink(
    addr: SocketAddr,
    hello: ShadowHello,
    mut rx: mpsc::Receiver<Arc<ShadowFrame>>,
    stats: Arc<StreamStats>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let conn =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await;
        let stream = match conn {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(sink = %addr, error = %e, "shadow sink: connect failed");
                if wait_or_closed(&mut rx, backoff, &stats).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                if wait_or_closed(&mut rx, backoff, &stats).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // A sink whose host vanished (a link down) acknowledges nothing: the connection
        // fails after this long instead of TCP's ~15 minutes of retransmissions, and the
        // tap's breaker sees frames refused.
        if let Err(e) = set_user_timeout(&stream, USER_TIMEOUT) {
            tracing::debug!(sink = %addr, error = %e, "shadow sink: TCP_USER_TIMEOUT");
        }
        stats.sinks_connected.fetch_add(1, Relaxed);
        stats.sink_connects.fetch_add(1, Relaxed);
        tracing::info!(sink = %addr, "shadow sink connected");
        let ended = serve(stream, &hello, &mut rx, &stats).await;
        stats.sinks_connected.fetch_sub(1, Relaxed);
        match ended {
            Served::Closed => return,
            Served::Failed(e) => {
                tracing::warn!(sink = %addr, error = %e, "shadow sink connection lost; reconnecting");
                backoff = BACKOFF_MIN;
                if wait_or_closed(&mut rx, backoff, &stats).await {
                    return;
                }
            }
        }
    }
}

fn set_user_timeout(stream: &tokio::net::TcpStream, d: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let ms = libc::c_uint::try_from(d.as_millis()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: a valid socket descriptor and a c_uint option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Waits `d` while dropping what is queued (no sink to take it); true when the tap went.
async fn wait_or_closed(
    rx: &mut mpsc::Receiver<Arc<ShadowFrame>>,
    d: Duration,
    stats: &StreamStats,
) -> bool {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return false,
            Ok(None) => return true,
            Ok(Some(f)) => {
                stats.frames_refused.fetch_add(1, Relaxed);
                stats.lost(f.connection);
            }
        }
    }
}

enum Served {
    /// The tap stopped this sink.
    Closed,
    Failed(std::io::Error),
}

async fn serve(
    stream: tokio::net::TcpStream,
    hello: &ShadowHello,
    rx: &mut mpsc::Receiver<Arc<ShadowFrame>>,
    stats: &StreamStats,
) -> Served {
    let mut w = tokio::io::BufWriter::with_capacity(256 * 1024, stream);
    let mut buf = Vec::with_capacity(64 * 1024);
    if let Err(e) = hello.encode_length_delimited(&mut buf) {
        return Served::Failed(std::io::Error::other(e));
    }
    if let Err(e) = w.write_all(&buf).await.and(w.flush().await) {
        return Served::Failed(e);
    }
    // Connections opened on this TCP connection: frames of others cannot be placed.
    let mut open: HashSet<u64> = HashSet::new();
    loop {
        let Some(frame) = rx.recv().await else {
            let _ = w.flush().await;
            return Served::Closed;
        };
        let mut batch = vec![frame];
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        for f in batch {
            if f.open {
                open.insert(f.connection);
            } else if !open.contains(&f.connection) {
                if !f.close {
                    stats.lost(f.connection);
                }
                continue;
            }
            if f.close {
                open.remove(&f.connection);
            }
            buf.clear();
            if let Err(e) = f.encode_length_delimited(&mut buf) {
                return Served::Failed(std::io::Error::other(e));
            }
            if let Err(e) = w.write_all(&buf).await {
                return Served::Failed(e);
            }
            stats.bytes_streamed.fetch_add(f.data.len() as u64, Relaxed);
        }
        if let Err(e) = w.flush().await {
            return Served::Failed(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_sink_never_blocks_and_its_connections_are_counted() {
        // Nothing listens on this port of loopback.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let stats = Arc::new(StreamStats::default());
        let (mut tx, task) = start_sink(
            &tokio::runtime::Handle::current(),
            addr,
            ShadowHello::default(),
            stats.clone(),
        );
        let start = std::time::Instant::now();
        for id in 0..(SINK_QUEUE as u64 * 3) {
            let f = Arc::new(ShadowFrame {
                connection: id % 50,
                open: id < 50,
                data: vec![0; 100],
                ..Default::default()
            });
            tx.offer(&f, &stats);
        }
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(stats.connections_lost.load(Relaxed), 50);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stats.sinks_connected.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn frames_arrive_after_a_hello_length_delimited() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(StreamStats::default());
        let hello = ShadowHello {
            shadow: "s1".into(),
            host_id: "h".into(),
        };
        let (mut tx, _task) = start_sink(
            &tokio::runtime::Handle::current(),
            addr,
            hello.clone(),
            stats.clone(),
        );
        let (mut sock, _) = l.accept().await.unwrap();
        let frames = [
            ShadowFrame {
                connection: 1,
                open: true,
                client: "a".into(),
                ..Default::default()
            },
            ShadowFrame {
                connection: 1,
                direction: 1,
                data: b"hi".to_vec(),
                ..Default::default()
            },
            ShadowFrame {
                connection: 2,
                direction: 1,
                data: b"orphan".to_vec(),
                ..Default::default()
            },
            ShadowFrame {
                connection: 1,
                close: true,
                ..Default::default()
            },
        ];
        for f in &frames {
            tx.offer(&Arc::new(f.clone()), &stats);
        }
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), async {
            use tokio::io::AsyncReadExt as _;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let mut slice = &buf[..];
                let h = ShadowHello::decode_length_delimited(&mut slice);
                let mut fr = Vec::new();
                while let Ok(f) = ShadowFrame::decode_length_delimited(&mut slice) {
                    fr.push(f);
                }
                if let Ok(h) = h
                    && fr.len() == 3
                {
                    assert_eq!(h, hello);
                    got = fr;
                    break;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            got,
            vec![frames[0].clone(), frames[1].clone(), frames[3].clone()]
        );
        assert_eq!(stats.bytes_streamed.load(Relaxed), 2);
        assert_eq!(stats.connections_lost.load(Relaxed), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_sink_costs_connections_not_time() {
        // Accepts, then never reads: its socket buffers fill, then the queue.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(StreamStats::default());
        let (mut tx, _task) = start_sink(
            &tokio::runtime::Handle::current(),
            addr,
            ShadowHello::default(),
            stats.clone(),
        );
        let (_stalled, _) = l.accept().await.unwrap();
        let start = std::time::Instant::now();
        let data = vec![7u8; 16 * 1024];
        for id in 0..4000u64 {
            let conn = id / 10;
            let f = Arc::new(ShadowFrame {
                connection: conn,
                open: id % 10 == 0,
                direction: 1,
                data: data.clone(),
                ..Default::default()
            });
            tx.offer(&f, &stats);
            if id % 500 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // 4000 offers never waited for the sink (the sleeps above are 160 ms of it).
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        let lost = stats.connections_lost.load(Relaxed);
        assert!(lost > 0 && lost <= 400, "{lost}");
        assert_eq!(stats.sinks_connected.load(Relaxed), 1);
    }
}

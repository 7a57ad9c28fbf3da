//! An HTTP/1.1 load generator for the lab: one new TCP connection per request
//! (`Connection: close`), paced at a fixed rate by several threads inside a namespace,
//! every request's outcome and latency kept. Bounded in time and in requests.
//!
//! A new connection per request is what a switch of routing (a weave activated, a share
//! changed) acts on: connections are placed at their SYN, so a generator that kept its
//! connections open would never see the switch.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Status 200 and the whole body (until the server closed).
    Ok { body: Vec<u8> },
    /// Anything else: refused, reset, timed out, another status. The error's words.
    Failed(String),
}

/// One request: when it started (since the run's start), how long it took, its outcome.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Duration,
    pub took: Duration,
    pub outcome: Outcome,
}

/// A run's plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The namespace file the clients run in (`/run/netns/<name>`).
    pub netns: std::path::PathBuf,
    pub target: SocketAddr,
    pub path: String,
    /// Requests per second over all threads.
    pub rate: u32,
    pub threads: usize,
    /// The run ends at `duration` or `max_requests`, or when stopped.
    pub duration: Duration,
    pub max_requests: usize,
    /// Per request (connect, send, read all).
    pub timeout: Duration,
}

/// A running load; [`Running::finish`] stops it and returns every sample, by start time.
pub struct Running {
    /// What [`Sample::started`] counts from.
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<Vec<Sample>>>>,
}

impl Running {
    pub fn finish(self) -> Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.threads {
            all.extend(
                t.join()
                    .map_err(|_| anyhow::anyhow!("load thread panicked"))??,
            );
        }
        all.sort_by_key(|s| s.started);
        Ok(all)
    }
}

/// Starts `plan` in the background.
pub fn start(plan: &Plan) -> Result<Running> {
    if plan.rate == 0 || plan.threads == 0 {
        bail!("load: rate and threads must be above 0");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let per_thread = plan.max_requests.div_ceil(plan.threads);
    // Each thread sends every `threads / rate` seconds, offset so the threads interleave.
    let interval = Duration::from_secs_f64(plan.threads as f64 / f64::from(plan.rate));
    let mut threads = Vec::new();
    for i in 0..plan.threads {
        let ns = std::fs::File::open(&plan.netns)
            .with_context(|| format!("open {}", plan.netns.display()))?;
        let (stop, plan) = (stop.clone(), plan.clone());
        let offset = interval.mul_f64(i as f64 / plan.threads as f64);
        threads.push(std::thread::spawn(move || -> Result<Vec<Sample>> {
            // SAFETY: setns on a namespace fd we own, for this thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            let mut out = Vec::with_capacity(per_thread.min(1 << 20));
            let mut next = t0 + offset;
            while out.len() < per_thread
                && t0.elapsed() < plan.duration
                && !stop.load(Ordering::Relaxed)
            {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                // Paced by schedule, not by completion: a slow answer does not lower the
                // rate (no coordinated omission), up to one interval of catch-up.
                next = next.max(Instant::now() - interval) + interval;
                let started = t0.elapsed();
                let begin = Instant::now();
                let outcome = request(plan.target, &plan.path, plan.timeout);
                out.push(Sample {
                    started,
                    took: begin.elapsed(),
                    outcome,
                });
            }
            Ok(out)
        }));
    }
    Ok(Running { t0, stop, threads })
}

/// One `GET path` on a new connection.
pub fn request(target: SocketAddr, path: &str, timeout: Duration) -> Outcome {
    match request_inner(target, path, timeout) {
        Ok(body) => Outcome::Ok { body },
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

fn request_inner(target: SocketAddr, path: &str, timeout: Duration) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&target, timeout).context("connect")?;
    s.set_nodelay(true)?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).context("send")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("timed out after {} bytes", buf.len());
        }
        s.set_read_timeout(Some(left))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e).context(format!("read after {} bytes", buf.len())),
        }
        if buf.len() > 1 << 20 {
            bail!("answer over 1 MiB");
        }
    }
    let (status, body) = split_response(&buf)?;
    if status != 200 {
        bail!("status {status}");
    }
    Ok(body.to_vec())
}

/// The status code and body of a whole HTTP/1.x answer (read until close).
pub fn split_response(buf: &[u8]) -> Result<(u16, &[u8])> {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = std::str::from_utf8(&buf[..end]).context("headers not UTF-8")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {:?}", head.lines().next()))?;
    Ok((status, &buf[end + 4..]))
}

/// The `q`-quantile (0..=1) of the samples' latencies; zero without samples.
pub fn quantile(samples: &[&Sample], q: f64) -> Duration {
    let mut t: Vec<Duration> = samples.iter().map(|s| s.took).collect();
    if t.is_empty() {
        return Duration::ZERO;
    }
    t.sort();
    let i = ((t.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    t[i]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_an_answer_and_refuses_a_headless_one() {
        let (code, body) = split_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nhello").unwrap();
        assert_eq!((code, body), (200, &b"hello"[..]));
        let (code, _) = split_response(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        assert_eq!(code, 404);
        assert!(split_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(split_response(b"HTTP/1.1 x\r\n\r\n").is_err());
    }

    fn sample(ms: u64) -> Sample {
        Sample {
            started: Duration::ZERO,
            took: Duration::from_millis(ms),
            outcome: Outcome::Ok { body: Vec::new() },
        }
    }

    #[test]
    fn quantiles_of_latencies() {
        let s: Vec<Sample> = (1..=100).map(sample).collect();
        let r: Vec<&Sample> = s.iter().collect();
        assert_eq!(quantile(&r, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&r, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&r, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn a_local_server_answers_and_a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b).unwrap();
            c.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nweave-a")
                .unwrap();
        });
        let got = request(addr, "/", Duration::from_secs(5));
        server.join().unwrap();
        assert_eq!(
            got,
            Outcome::Ok {
                body: b"weave-a".to_vec()
            }
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap();
        drop(closed);
        assert!(matches!(
            request(port, "/", Duration::from_secs(2)),
            Outcome::Failed(_)
        ));
    }
}

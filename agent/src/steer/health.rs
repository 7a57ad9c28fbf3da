//! The failover health check of a steer's origin: a TCP connect from inside the origin's
//! own network namespace to its address and port, every interval, with the interval as
//! its timeout. With a probe payload, the origin must also answer at least one byte: a
//! frozen (SIGSTOPped) server's kernel still completes TCP handshakes from its listen
//! backlog, so a bare connect does not see it.
//!
//! After `failures` failed checks in a row the check reports "down" (the caller sets the
//! origin's failover flag: one map update); after as many successes in a row, "up". The
//! report carries the time from the start of the first failed check of the streak (or the
//! first success) to the report.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Bounds of a check's settings.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const MAX_STREAK: u32 = 100;

/// What is checked and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// The origin's address and the checked port.
    pub addr: SocketAddr,
    pub interval: Duration,
    /// Failures (and successes) in a row that switch.
    pub streak: u32,
    /// Sent after connecting; when not empty, an answer of at least one byte is needed.
    pub probe: Vec<u8>,
}

impl HealthSpec {
    /// `interval_ms` 0 = 100 ms, `failures` 0 = 3 (the proto's defaults), both bounded.
    pub fn new(addr: SocketAddr, interval_ms: u32, failures: u32, probe: Vec<u8>) -> Self {
        let interval = if interval_ms == 0 {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(u64::from(interval_ms))
        };
        Self {
            addr,
            interval: interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
            streak: if failures == 0 {
                3
            } else {
                failures.min(MAX_STREAK)
            },
            probe,
        }
    }
}

/// A switch of the check: `down` (the origin fails) or up again, and how long after the
/// start of the first check of the streak the switch was reported.
#[derive(Debug, Clone, Copy)]
pub struct Switch {
    pub down: bool,
    pub after: Duration,
}

/// One check.
fn check(spec: &HealthSpec) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&spec.addr, spec.interval) else {
        return false;
    };
    if spec.probe.is_empty() {
        return true;
    }
    let _ = s.set_write_timeout(Some(spec.interval));
    let _ = s.set_read_timeout(Some(spec.interval));
    if s.write_all(&spec.probe).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(n) if n > 0)
}

/// A running check; dropping it stops it.
pub struct HealthCheck {
    pub spec: HealthSpec,
    stop: Arc<AtomicBool>,
}

impl Drop for HealthCheck {
    fn drop(&mut self) {
        // The thread sees this within one interval (its longest wait) and ends; it is not
        // joined so that a drop never blocks the runtime.
        self.stop.store(true, Relaxed);
    }
}

impl HealthCheck {
    /// Starts checking from inside the namespace `netns` (the origin's), from the state
    /// `down` (a failover a previous agent switched on: it is switched off again after
    /// `failures` successes). `on_switch` runs on the check's thread at every switch.
    pub fn start(
        netns: File,
        spec: HealthSpec,
        down: bool,
        mut on_switch: impl FnMut(Switch) + Send + 'static,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = spec.clone();
        let stopped = stop.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("weft-steer-health".into())
            .spawn(move || {
                // SAFETY: setns on a valid, open namespace fd; it changes this thread only,
                // which stays in the origin's namespace until it ends.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let _ = tx.send(Err(std::io::Error::last_os_error()));
                    return;
                }
                let _ = tx.send(Ok(()));
                drop(netns);
                run(&s, down, &stopped, &mut on_switch);
            })?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the health check thread ended"))??;
        Ok(Self { spec, stop })
    }
}

fn run(spec: &HealthSpec, mut down: bool, stop: &AtomicBool, on_switch: &mut impl FnMut(Switch)) {
    let mut streak = 0u32;
    let mut streak_start: Option<Instant> = None;
    while !stop.load(Relaxed) {
        let started = Instant::now();
        let ok = check(spec);
        // A result that agrees with the current state ends any streak against it.
        if ok != down {
            streak = 0;
            streak_start = None;
        } else {
            streak += 1;
            let first = *streak_start.get_or_insert(started);
            if streak >= spec.streak {
                down = !down;
                streak = 0;
                streak_start = None;
                on_switch(Switch {
                    down,
                    after: first.elapsed(),
                });
            }
        }
        let next = started + spec.interval;
        // Sleeps in short steps so that a stop is seen soon.
        while !stop.load(Relaxed) {
            let now = Instant::now();
            if now >= next {
                break;
            }
            std::thread::sleep((next - now).min(Duration::from_millis(20)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let s = HealthSpec::new(a, 0, 0, vec![]);
        assert_eq!(s.interval, Duration::from_millis(100));
        assert_eq!(s.streak, 3);
        let s = HealthSpec::new(a, 1, 1000, vec![]);
        assert_eq!(s.interval, MIN_INTERVAL);
        assert_eq!(s.streak, MAX_STREAK);
    }

    #[test]
    fn a_refused_port_switches_down_after_the_streak() {
        // A port nobody listens on (bound, then closed) refuses at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let spec = HealthSpec::new(addr, 20, 3, vec![]);
        let (tx, rx) = std::sync::mpsc::channel();
        let me = File::open("/proc/thread-self/ns/net").unwrap();
        let hc = HealthCheck::start(me, spec, false, move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        let s = rx.recv_timeout(Duration::from_secs(5)).expect("a switch");
        assert!(s.down);
        // Three checks 20 ms apart: the third starts about 40 ms after the first.
        assert!(s.after >= Duration::from_millis(35), "{:?}", s.after);
        assert!(s.after < Duration::from_secs(1), "{:?}", s.after);
        drop(hc);
    }

    #[test]
    fn a_check_started_down_switches_up_when_the_origin_answers() {
        // A failover a previous agent switched on, the origin healthy again.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = HealthSpec::new(l.local_addr().unwrap(), 20, 3, vec![]);
        let (tx, rx) = std::sync::mpsc::channel();
        let me = File::open("/proc/thread-self/ns/net").unwrap();
        let hc = HealthCheck::start(me, spec, true, move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        let s = rx.recv_timeout(Duration::from_secs(5)).expect("a switch");
        assert!(!s.down, "switched up");
        drop(hc);
        drop(l);
    }
}

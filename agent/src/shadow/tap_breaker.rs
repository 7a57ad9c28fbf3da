//! A tap's breaker: copying stops while its sinks take nothing.
//!
//! A shadow that is stopped, unreachable or far behind cannot use copies; copying them
//! anyway costs production's host the kernel copy, the reassembly and the queueing. So
//! once a second (with the tap's refresh) the breaker looks at what the sinks did since
//! the last look:
//! - frames refused (a sink's queue full, or no sink connected to take them) and no byte
//!   written to any sink: the sinks take nothing. The tap is **paused** (the kernel policy
//!   becomes `tap_active::PAUSED`: no new connection is sampled and sampled ones stop
//!   being copied) for a backoff, 1 s at first, doubled each time it trips again right
//!   after a pause, up to 30 s;
//! - after the backoff, or as soon as a sink (re)connects, copying resumes; bytes
//!   written, a sink connecting, or a look with nothing refused reset the backoff (a tap
//!   made before its sink listens is not held back for long once the sink is there).
//!
//! A slow sink that still takes some bytes is not a dead one: the frames it refuses cost
//! their connections (gaps), not the tap. A sink connection whose peer vanished (a link
//! down) is noticed by `TCP_USER_TIMEOUT` on the tap's side ([`super::tap_stream`]).

use std::time::{Duration, Instant};

pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What the sinks did: totals since the tap's sinks started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkTotals {
    /// Payload bytes written to sinks.
    pub streamed: u64,
    /// Frames refused (queue full, or dropped while no sink was connected).
    pub refused: u64,
    /// Sink connections made (a sink that comes back ends a pause at once).
    pub connects: u64,
}

#[derive(Debug)]
pub struct SinkBreaker {
    last: SinkTotals,
    paused_until: Option<Instant>,
    /// Copying resumed after a pause and no look since was clean.
    probing: bool,
    backoff: Duration,
    /// Times the tap was paused.
    pub pauses: u64,
}

impl SinkBreaker {
    /// `totals`: the sinks' totals now (a breaker made for new sinks starts from zero).
    pub fn new(totals: SinkTotals) -> Self {
        SinkBreaker {
            last: totals,
            paused_until: None,
            probing: false,
            backoff: BACKOFF_MIN,
            pauses: 0,
        }
    }

    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Takes the sinks' totals at `now`; returns whether copying is paused.
    pub fn observe(&mut self, now: Instant, totals: SinkTotals) -> bool {
        let streamed = totals.streamed.saturating_sub(self.last.streamed);
        let refused = totals.refused.saturating_sub(self.last.refused);
        let connected = totals.connects > self.last.connects;
        self.last = totals;
        if let Some(until) = self.paused_until {
            if connected {
                // A sink (re)connected: it can take copies now, not after the backoff.
                self.paused_until = None;
                self.probing = false;
                self.backoff = BACKOFF_MIN;
                return false;
            }
            if now < until {
                return true;
            }
            // What was refused while paused came from before the pause.
            self.paused_until = None;
            self.probing = true;
            return false;
        }
        if streamed > 0 {
            self.probing = false;
            self.backoff = BACKOFF_MIN;
            return false;
        }
        if refused == 0 {
            // A look without trouble: a later trip starts from the shortest backoff.
            self.probing = false;
            return false;
        }
        self.backoff = if self.probing {
            (self.backoff * 2).min(BACKOFF_MAX)
        } else {
            BACKOFF_MIN
        };
        self.probing = false;
        self.paused_until = Some(now + self.backoff);
        self.pauses += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(streamed: u64, refused: u64) -> SinkTotals {
        SinkTotals {
            streamed,
            refused,
            connects: 1,
        }
    }

    #[test]
    fn a_sink_that_connects_ends_a_pause_at_once() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = SinkBreaker::new(SinkTotals::default());
        // No sink yet: frames dropped, paused, then longer and longer.
        let dead = |refused| SinkTotals {
            streamed: 0,
            refused,
            connects: 0,
        };
        assert!(b.observe(t0 + s, dead(10)));
        assert!(!b.observe(t0 + 2 * s, dead(10)));
        assert!(b.observe(t0 + 3 * s, dead(20)), "2 s");
        assert!(!b.observe(t0 + 5 * s, dead(20)));
        assert!(b.observe(t0 + 6 * s, dead(30)), "4 s");
        assert!(b.observe(t0 + 7 * s, dead(30)));
        // The sink is up: copying resumes at the next look, not at t0 + 10 s.
        assert!(!b.observe(
            t0 + 8 * s,
            SinkTotals {
                streamed: 0,
                refused: 35,
                connects: 1
            }
        ));
        assert_eq!(b.backoff, BACKOFF_MIN);
    }

    #[test]
    fn frames_refused_with_nothing_written_pause_copying_with_a_growing_backoff() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = SinkBreaker::new(t(0, 0));
        assert!(!b.observe(t0 + s, t(500, 0)), "a sink taking bytes");
        assert!(!b.observe(t0 + 2 * s, t(900, 40)), "slow but taking bytes");
        assert!(
            !b.observe(t0 + 3 * s, t(900, 40)),
            "idle: nothing to decide"
        );
        assert!(
            b.observe(t0 + 4 * s, t(900, 41)),
            "refused, nothing written"
        );
        assert_eq!(b.pauses, 1);
        assert!(
            b.observe(t0 + 4 * s + s / 2, t(900, 45)),
            "within the 1 s backoff"
        );
        assert!(!b.observe(t0 + 5 * s, t(900, 50)), "resumed after 1 s");
        // Still dead right after resuming: 2 s, then 4 s.
        assert!(b.observe(t0 + 6 * s, t(900, 51)));
        assert!(b.observe(t0 + 7 * s, t(900, 51)), "2 s this time");
        assert!(!b.observe(t0 + 8 * s, t(900, 51)));
        assert!(b.observe(t0 + 9 * s, t(900, 52)));
        assert!(b.observe(t0 + 12 * s, t(900, 52)), "4 s this time");
        assert!(!b.observe(t0 + 13 * s, t(900, 52)));
        assert_eq!(b.pauses, 3);
        // The sink is back: bytes written reset the backoff.
        assert!(!b.observe(t0 + 14 * s, t(1500, 52)));
        assert!(b.observe(t0 + 15 * s, t(1500, 53)));
        assert!(!b.observe(t0 + 16 * s, t(1500, 53)), "1 s again");
        // A clean look after resuming: the next trip is 1 s again.
        assert!(!b.observe(t0 + 17 * s, t(1500, 53)));
        assert!(b.observe(t0 + 18 * s, t(1500, 54)));
        assert!(!b.observe(t0 + 19 * s, t(1500, 54)), "1 s, not 2 s");
    }

    #[test]
    fn the_backoff_stops_growing_at_its_maximum() {
        let t0 = Instant::now();
        let mut b = SinkBreaker::new(t(0, 0));
        let mut now = t0;
        let mut refused = 0;
        for _ in 0..20 {
            refused += 1;
            now += Duration::from_millis(10);
            assert!(b.observe(now, t(0, refused)));
            now += BACKOFF_MAX;
            assert!(!b.observe(now, t(0, refused)));
        }
        assert_eq!(b.backoff, BACKOFF_MAX);
        assert_eq!(b.pauses, 20);
    }
}

//! Predictive scaling: what a shadow shows under its sampled load, turned into CPU and
//! memory limits for the node in both environments.
//!
//! The evidence is the shadow node's cgroup usage as its sink reports it (cumulative
//! counters: CPU periods and those throttled by the quota, CPU time, memory against its
//! limit, limit hits) and its latency against its reference. Counters are compared over a
//! window (the first and last sample at least [`ScalingConfig::window`] apart), so one
//! report never decides alone:
//!
//! - **CPU**: throttled in at least `throttled_ratio` of the periods of the window, or
//!   using at least `busy_ratio` of its quota while the shadow is significantly slower
//!   than its reference: the CPU limit times `step` (rounded up to 100 millis);
//! - **memory**: at least `memory_ratio` of the limit at the last sample, or the limit hit
//!   within the window: the memory limit times `step` (rounded up to a MiB).
//!
//! A node without a limit gets no recommendation for that resource (nothing to raise).
//! Pure: the manager keeps the samples and applies what it gets back.

use std::collections::BTreeMap;
use std::time::Duration;

/// One reading of a node's usage (cumulative counters as the kernel keeps them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UsageSample {
    pub at_unix_ns: u64,
    pub cpu_seconds: f64,
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub memory_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub memory_limit_hits: u64,
}

impl UsageSample {
    /// From the measurements a sink reports for its shadow target (`shadow_cpu_seconds`,
    /// ...); `None` when it reported none.
    pub fn from_measurements(
        m: &std::collections::HashMap<String, f64>,
        prefix: &str,
        at_unix_ns: u64,
    ) -> Option<Self> {
        let get = |k: &str| m.get(&format!("{prefix}_{k}")).copied();
        Some(Self {
            at_unix_ns,
            cpu_seconds: get("cpu_seconds")?,
            cpu_periods: get("cpu_periods").unwrap_or(0.0) as u64,
            cpu_throttled_periods: get("cpu_throttled_periods").unwrap_or(0.0) as u64,
            memory_bytes: get("memory_bytes").unwrap_or(0.0) as u64,
            memory_limit_bytes: get("memory_limit_bytes").unwrap_or(0.0) as u64,
            memory_limit_hits: get("memory_limit_hits").unwrap_or(0.0) as u64,
        })
    }
}

/// The node's limits now (from its TDL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// 0: none.
    pub cpu_millis: u32,
    /// 0: none.
    pub memory_bytes: u64,
}

/// The shadow's latency against its reference, from the analysis.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub shadow_p99_ms: f64,
    pub reference_p99_ms: f64,
    /// Significantly slower (the rank test).
    pub slower: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScalingConfig {
    /// Samples this far apart at least before anything is recommended.
    pub window: Duration,
    pub throttled_ratio: f64,
    pub busy_ratio: f64,
    pub memory_ratio: f64,
    /// The factor a limit is raised by.
    pub step: f64,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            throttled_ratio: 0.25,
            busy_ratio: 0.8,
            memory_ratio: 0.9,
            step: 1.5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub resource: Resource,
    pub current: u64,
    pub recommended: u64,
    pub reason: String,
    pub evidence: BTreeMap<String, f64>,
}

/// The samples of the window ending at the last one: (first, last), or `None` when they
/// do not span `window` yet.
fn span(samples: &[UsageSample], window: Duration) -> Option<(&UsageSample, &UsageSample)> {
    let last = samples.last()?;
    let need = window.as_nanos() as u64;
    // The latest sample at least `window` before the last.
    let first = samples
        .iter()
        .rev()
        .find(|s| last.at_unix_ns.saturating_sub(s.at_unix_ns) >= need)?;
    Some((first, last))
}

fn round_up(v: f64, unit: u64) -> u64 {
    let u = unit as f64;
    ((v / u).ceil() * u) as u64
}

/// What `samples` (oldest first) of a shadow node with `limits` call for.
pub fn recommend(
    samples: &[UsageSample],
    limits: Limits,
    latency: Option<Latency>,
    cfg: &ScalingConfig,
) -> Vec<Recommendation> {
    let Some((a, b)) = span(samples, cfg.window) else {
        return Vec::new();
    };
    let secs = (b.at_unix_ns - a.at_unix_ns) as f64 / 1e9;
    let mut out = Vec::new();
    if limits.cpu_millis > 0 {
        let periods = b.cpu_periods.saturating_sub(a.cpu_periods);
        let throttled = b
            .cpu_throttled_periods
            .saturating_sub(a.cpu_throttled_periods);
        let ratio = if periods == 0 {
            0.0
        } else {
            throttled as f64 / periods as f64
        };
        let cores = (b.cpu_seconds - a.cpu_seconds).max(0.0) / secs;
        let busy = cores / (f64::from(limits.cpu_millis) / 1000.0);
        let slow = latency.filter(|l| l.slower);
        let reason = if ratio >= cfg.throttled_ratio {
            Some(format!(
                "the shadow was throttled by its CPU limit in {:.0} % of periods over {secs:.0} s",
                ratio * 100.0
            ))
        } else if busy >= cfg.busy_ratio
            && let Some(l) = slow
        {
            Some(format!(
                "the shadow used {:.0} % of its CPU limit and answered slower than its reference (p99 {:.2} ms against {:.2} ms)",
                busy * 100.0,
                l.shadow_p99_ms,
                l.reference_p99_ms
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            let mut evidence = BTreeMap::from([
                ("shadow_cpu_throttled_ratio".to_owned(), ratio),
                ("shadow_cpu_cores".to_owned(), cores),
                ("shadow_cpu_limit_ratio".to_owned(), busy),
                ("window_seconds".to_owned(), secs),
            ]);
            if let Some(l) = latency {
                evidence.insert("shadow_p99_ms".into(), l.shadow_p99_ms);
                evidence.insert("reference_p99_ms".into(), l.reference_p99_ms);
            }
            out.push(Recommendation {
                resource: Resource::Cpu,
                current: u64::from(limits.cpu_millis),
                recommended: round_up(f64::from(limits.cpu_millis) * cfg.step, 100),
                reason,
                evidence,
            });
        }
    }
    if limits.memory_bytes > 0 {
        let used = b.memory_bytes as f64 / limits.memory_bytes as f64;
        let hits = b.memory_limit_hits.saturating_sub(a.memory_limit_hits);
        let reason = if hits > 0 {
            Some(format!(
                "the shadow hit its memory limit {hits} times over {secs:.0} s"
            ))
        } else if used >= cfg.memory_ratio {
            Some(format!(
                "the shadow uses {:.0} % of its memory limit",
                used * 100.0
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            out.push(Recommendation {
                resource: Resource::Memory,
                current: limits.memory_bytes,
                recommended: round_up(limits.memory_bytes as f64 * cfg.step, 1 << 20),
                reason,
                evidence: BTreeMap::from([
                    ("shadow_memory_bytes".to_owned(), b.memory_bytes as f64),
                    ("shadow_memory_limit_ratio".to_owned(), used),
                    ("shadow_memory_limit_hits".to_owned(), hits as f64),
                    ("window_seconds".to_owned(), secs),
                ]),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn sample(t: u64, cpu: f64, periods: u64, throttled: u64, mem: u64, hits: u64) -> UsageSample {
        UsageSample {
            at_unix_ns: t * S,
            cpu_seconds: cpu,
            cpu_periods: periods,
            cpu_throttled_periods: throttled,
            memory_bytes: mem,
            memory_limit_bytes: 0,
            memory_limit_hits: hits,
        }
    }

    const LIMITS: Limits = Limits {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
    };

    #[test]
    fn nothing_before_the_window_is_spanned() {
        let s = [
            sample(0, 0.0, 0, 0, 0, 0),
            sample(5, 2.5, 50, 50, 250 << 20, 3),
        ];
        assert!(recommend(&s, LIMITS, None, &ScalingConfig::default()).is_empty());
    }

    #[test]
    fn a_throttled_shadow_gets_one_and_a_half_times_its_cpu() {
        let s = [
            sample(0, 0.0, 0, 0, 10 << 20, 0),
            sample(6, 3.0, 60, 10, 10 << 20, 0),
            sample(12, 6.0, 120, 45, 10 << 20, 0),
        ];
        let r = recommend(&s, LIMITS, None, &ScalingConfig::default());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].resource, Resource::Cpu);
        assert_eq!((r[0].current, r[0].recommended), (500, 800));
        assert!((r[0].evidence["shadow_cpu_throttled_ratio"] - 0.375).abs() < 1e-9);
        assert!(r[0].reason.contains("38 %"), "{}", r[0].reason);
    }

    #[test]
    fn an_idle_shadow_gets_nothing() {
        let s = [
            sample(0, 0.0, 0, 0, 10 << 20, 0),
            sample(20, 1.0, 200, 2, 20 << 20, 0),
        ];
        assert!(recommend(&s, LIMITS, None, &ScalingConfig::default()).is_empty());
        // Busy but as fast as its reference: no change either.
        let busy = [
            sample(0, 0.0, 0, 0, 10 << 20, 0),
            sample(20, 9.0, 200, 20, 20 << 20, 0),
        ];
        let same = Latency {
            shadow_p99_ms: 2.0,
            reference_p99_ms: 2.0,
            slower: false,
        };
        assert!(recommend(&busy, LIMITS, Some(same), &ScalingConfig::default()).is_empty());
        // Busy and slower: more CPU.
        let slower = Latency {
            shadow_p99_ms: 5.0,
            reference_p99_ms: 2.0,
            slower: true,
        };
        let r = recommend(&busy, LIMITS, Some(slower), &ScalingConfig::default());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].reason.contains("slower"), "{}", r[0].reason);
        assert_eq!(r[0].evidence["shadow_p99_ms"], 5.0);
    }

    #[test]
    fn memory_near_or_at_its_limit_gets_more_memory() {
        let near = [
            sample(0, 0.0, 0, 0, 100 << 20, 0),
            sample(15, 0.1, 150, 0, 240 << 20, 0),
        ];
        let r = recommend(&near, LIMITS, None, &ScalingConfig::default());
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].resource, Resource::Memory);
        assert_eq!(r[0].recommended, 384 << 20);
        let hit = [
            sample(0, 0.0, 0, 0, 100 << 20, 4),
            sample(15, 0.1, 150, 0, 120 << 20, 6),
        ];
        let r = recommend(&hit, LIMITS, None, &ScalingConfig::default());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].reason.contains("2 times"), "{}", r[0].reason);
    }

    #[test]
    fn no_limit_no_recommendation() {
        let s = [
            sample(0, 0.0, 0, 0, 0, 0),
            sample(20, 19.0, 200, 190, 1 << 30, 9),
        ];
        assert!(recommend(&s, Limits::default(), None, &ScalingConfig::default()).is_empty());
    }

    #[test]
    fn samples_are_read_from_a_sinks_measurements() {
        let m = std::collections::HashMap::from([
            ("shadow_cpu_seconds".to_owned(), 1.5),
            ("shadow_cpu_periods".to_owned(), 30.0),
            ("shadow_memory_bytes".to_owned(), 4096.0),
        ]);
        let s = UsageSample::from_measurements(&m, "shadow", 7).unwrap();
        assert_eq!(
            (s.cpu_seconds, s.cpu_periods, s.memory_bytes),
            (1.5, 30, 4096)
        );
        assert!(UsageSample::from_measurements(&m, "baseline", 7).is_none());
    }
}

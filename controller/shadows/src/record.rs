//! A shadow as the controller keeps it (`shadows/<id>` in the store, JSON), and its
//! sampling policy, checked.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use weft_proto::v1 as wire;

use crate::ShadowError;

/// Millionths in a whole (100 %).
pub const PPM: u32 = 1_000_000;
/// Minutes in a day.
pub const DAY_MINUTES: u32 = 1440;
/// Longest failover probe (bytes).
pub const MAX_PROBE: usize = 1024;

/// Which connections are sampled (`ShadowPolicy`), with the wire's field names. Made by
/// [`ShadowPolicy::checked`]: a kept policy is valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPolicy {
    /// Share of eligible connections sampled, in millionths.
    #[serde(default)]
    pub share_ppm: u32,
    /// `connection`, `source` or `header` (empty: `connection`).
    #[serde(default)]
    pub key: String,
    /// With key `header`: the request header whose value is hashed (lowercase once
    /// checked). One value is always in or always out; the taps copy every eligible
    /// connection and the sinks replay only the requests whose value is in the share.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub header: String,
    /// Server ports sampled; empty: every TCP port.
    #[serde(default)]
    pub ports: Vec<u32>,
    /// Client prefixes sampled; empty: every source.
    #[serde(default)]
    pub sources: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
    /// Minutes of the UTC day; both 0: always.
    #[serde(default)]
    pub window_start_minute: u32,
    #[serde(default)]
    pub window_end_minute: u32,
    #[serde(default)]
    pub seed: u32,
    /// Divert (canary) share of new connections of `ports`, in millionths: those really
    /// go to the shadow's copy of the node (a `steer` resource), not copies. Hashes `key`
    /// with `seed`; `sources` and the window apply to sampling only.
    #[serde(default)]
    pub divert_ppm: u32,
    /// Failover: while production fails this health check, every new connection of
    /// `ports` goes to the shadow (divert at 100 %; established ones stay).
    #[serde(default)]
    pub failover: Option<FailoverCheck>,
    /// Apply scaling recommendations to the production network's definition (its mirrors,
    /// the shadow among them, follow): CPU and memory limits change in place.
    #[serde(default)]
    pub autoscale: bool,
}

/// `SteerHealth`: a TCP health check of the production node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverCheck {
    pub port: u32,
    #[serde(default)]
    pub interval_ms: u32,
    #[serde(default)]
    pub failures: u32,
    /// Sent after connecting (text, e.g. an HTTP request line); when not empty, the check
    /// passes only when production answers at least one byte within the interval.
    #[serde(default)]
    pub probe: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ShadowError {
    ShadowError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// `198.18.0.0/16` (the address may have host bits; the prefix fits the family), or a
/// bare address (a /32 or /128). Returns it in canonical form.
fn cidr(s: &str) -> Result<String, String> {
    let s = s.trim();
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not a prefix such as 198.18.0.0/16"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
    };
    Ok(format!("{ip}/{len}"))
}

impl ShadowPolicy {
    /// The policy checked and in canonical form (key spelled out, ports and sources
    /// sorted without repeats); the error names the field (`policy.ports[2]`).
    pub fn checked(mut self) -> Result<Self, ShadowError> {
        if self.share_ppm > PPM {
            return Err(invalid(
                "policy.share_ppm",
                format!(
                    "{} is more than {PPM} (100 %): the share is in millionths",
                    self.share_ppm
                ),
            ));
        }
        self.key = match self.key.trim() {
            "" | "connection" => "connection".into(),
            "source" => "source".into(),
            "header" => "header".into(),
            other => {
                return Err(invalid(
                    "policy.key",
                    format!("{other:?} is not connection, source or header"),
                ));
            }
        };
        if self.key == "header" {
            let rule = weft_reqroute::HeaderRule::new(self.header.trim(), None).map_err(|e| {
                invalid(
                    "policy.header",
                    format!("{e}: key \"header\" needs the name of the request header to hash"),
                )
            })?;
            self.header = rule.name.to_ascii_lowercase();
            if self.divert_ppm > 0 {
                return Err(invalid(
                    "policy.divert_ppm",
                    "divert places a new connection at its SYN, before any header: use key connection or source to divert",
                ));
            }
        } else if !self.header.is_empty() {
            return Err(invalid(
                "policy.header",
                format!(
                    "a header is hashed only with key \"header\" (key is {:?})",
                    self.key
                ),
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if !(1..=65535).contains(p) {
                return Err(invalid(
                    format!("policy.ports[{i}]"),
                    format!("{p} is not a port (1..=65535)"),
                ));
            }
        }
        self.ports.sort_unstable();
        self.ports.dedup();
        let mut sources = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            sources.push(cidr(s).map_err(|m| invalid(format!("policy.sources[{i}]"), m))?);
        }
        sources.sort();
        sources.dedup();
        self.sources = sources;
        for (field, m) in [
            ("policy.window_start_minute", self.window_start_minute),
            ("policy.window_end_minute", self.window_end_minute),
        ] {
            if m >= DAY_MINUTES {
                return Err(invalid(
                    field,
                    format!("{m} is not a minute of the day (0..{DAY_MINUTES})"),
                ));
            }
        }
        if self.divert_ppm > PPM {
            return Err(invalid(
                "policy.divert_ppm",
                format!(
                    "{} is more than {PPM} (100 %): the share is in millionths",
                    self.divert_ppm
                ),
            ));
        }
        if let Some(f) = &self.failover {
            if !(1..=65535).contains(&f.port) {
                return Err(invalid(
                    "policy.failover.port",
                    format!(
                        "{} is not a port (1..=65535): the port production is checked on",
                        f.port
                    ),
                ));
            }
            if f.interval_ms != 0 && !(10..=60_000).contains(&f.interval_ms) {
                return Err(invalid(
                    "policy.failover.interval_ms",
                    format!("{} ms: use 10..=60000 (0 = 100 ms)", f.interval_ms),
                ));
            }
            if f.failures > 100 {
                return Err(invalid(
                    "policy.failover.failures",
                    format!("{}: use 1..=100 failures in a row (0 = 3)", f.failures),
                ));
            }
            if f.probe.len() > MAX_PROBE {
                return Err(invalid(
                    "policy.failover.probe",
                    format!("{} bytes: at most {MAX_PROBE}", f.probe.len()),
                ));
            }
        }
        if self.window_start_minute == self.window_end_minute && self.window_start_minute != 0 {
            return Err(invalid(
                "policy.window_end_minute",
                "the window starts and ends at the same minute: it would be empty (both 0 = always)",
            ));
        }
        Ok(self)
    }

    pub fn from_wire(p: &wire::ShadowPolicy) -> Self {
        Self {
            share_ppm: p.share_ppm,
            key: p.key.clone(),
            header: p.header.clone(),
            ports: p.ports.clone(),
            sources: p.sources.clone(),
            read_only: p.read_only,
            window_start_minute: p.window_start_minute,
            window_end_minute: p.window_end_minute,
            seed: p.seed,
            divert_ppm: p.divert_ppm,
            failover: p.failover.as_ref().map(|f| FailoverCheck {
                port: f.port,
                interval_ms: f.interval_ms,
                failures: f.failures,
                probe: String::from_utf8_lossy(&f.probe).into_owned(),
            }),
            autoscale: p.autoscale,
        }
    }

    pub fn to_wire(&self) -> wire::ShadowPolicy {
        wire::ShadowPolicy {
            share_ppm: self.share_ppm,
            key: self.key.clone(),
            header: self.header.clone(),
            ports: self.ports.clone(),
            sources: self.sources.clone(),
            read_only: self.read_only,
            window_start_minute: self.window_start_minute,
            window_end_minute: self.window_end_minute,
            seed: self.seed,
            divert_ppm: self.divert_ppm,
            failover: self.failover.as_ref().map(|f| wire::SteerHealth {
                port: f.port,
                interval_ms: f.interval_ms,
                failures: f.failures,
                probe: f.probe.clone().into_bytes(),
            }),
            autoscale: self.autoscale,
        }
    }
}

/// Where one sampled node's sink is: the host of the shadow's copy of the node, and the
/// port the agent there listens on for the tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkPlacement {
    pub host: String,
    pub listen_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRecord {
    pub id: String,
    /// The production network.
    pub production: String,
    /// Production nodes sampled, sorted.
    pub nodes: Vec<String>,
    /// Hypervisors the shadow is placed on, as asked.
    pub hosts: Vec<String>,
    pub policy: ShadowPolicy,
    pub noise_baseline: bool,
    /// Sampled node -> its sink.
    pub sinks: BTreeMap<String, SinkPlacement>,
    pub created_unix_ns: u64,
    /// Grows at every change of the record.
    pub revision: u64,
    /// The synthetic load asked for last (the sinks replay what they recorded).
    #[serde(default)]
    pub synthetic: Option<SyntheticRun>,
}

/// Synthetic load: the requests the sinks recorded replayed into the shadow at
/// `multiplier` times their rate for `duration_seconds`; a new `generation` is a new run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticRun {
    /// The multiplier in thousandths (3.0 is 3000): a record is `Eq`.
    pub multiplier_milli: u32,
    pub duration_seconds: u32,
    pub generation: u64,
    pub asked_unix_ns: u64,
}

/// Largest synthetic multiplier, and longest run.
pub const MAX_SYNTHETIC_MULTIPLIER: f64 = 1000.0;
pub const MAX_SYNTHETIC_SECONDS: u32 = 3600;

impl SyntheticRun {
    pub fn multiplier(&self) -> f64 {
        f64::from(self.multiplier_milli) / 1000.0
    }

    pub fn to_wire(&self) -> wire::SyntheticLoad {
        wire::SyntheticLoad {
            multiplier: self.multiplier(),
            duration_seconds: self.duration_seconds,
            generation: self.generation,
        }
    }

    /// A run checked: `multiplier` in (0, 1000], at least 0.001; `duration_seconds` in
    /// 1..=3600. The error names the field.
    pub fn checked(
        multiplier: f64,
        duration_seconds: u32,
        generation: u64,
        asked_unix_ns: u64,
    ) -> Result<Self, ShadowError> {
        if !multiplier.is_finite() || !(0.001..=MAX_SYNTHETIC_MULTIPLIER).contains(&multiplier) {
            return Err(invalid(
                "multiplier",
                format!(
                    "{multiplier}: times the recorded rate, 0.001..={MAX_SYNTHETIC_MULTIPLIER} (0 stops a run)"
                ),
            ));
        }
        if !(1..=MAX_SYNTHETIC_SECONDS).contains(&duration_seconds) {
            return Err(invalid(
                "duration_seconds",
                format!("{duration_seconds}: use 1..={MAX_SYNTHETIC_SECONDS}"),
            ));
        }
        Ok(Self {
            multiplier_milli: (multiplier * 1000.0).round() as u32,
            duration_seconds,
            generation,
            asked_unix_ns,
        })
    }
}

impl ShadowRecord {
    /// The shadow's networks: `id`, and `<id>-baseline` with a noise baseline.
    pub fn networks(&self) -> Vec<String> {
        let mut n = vec![self.id.clone()];
        if self.noise_baseline {
            n.push(baseline(&self.id));
        }
        n
    }
}

/// The noise baseline's network id.
pub fn baseline(id: &str) -> String {
    format!("{id}-baseline")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: ShadowPolicy) -> String {
        match p.checked() {
            Err(ShadowError::Invalid { field, .. }) => field,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_policy_is_checked_field_by_field() {
        let ok = ShadowPolicy {
            share_ppm: 100_000,
            ports: vec![443, 80, 80],
            sources: vec!["198.18.3.7/16".into(), "10.0.0.1".into()],
            window_start_minute: 1380,
            window_end_minute: 60,
            ..Default::default()
        }
        .checked()
        .unwrap();
        assert_eq!(ok.key, "connection");
        assert_eq!(ok.ports, vec![80, 443]);
        assert_eq!(ok.sources, vec!["10.0.0.1/32", "198.18.3.7/16"]);
        assert_eq!(
            field(ShadowPolicy {
                share_ppm: PPM + 1,
                ..Default::default()
            }),
            "policy.share_ppm"
        );
        assert_eq!(
            field(ShadowPolicy {
                key: "cookie".into(),
                ..Default::default()
            }),
            "policy.key"
        );
        assert_eq!(
            field(ShadowPolicy {
                key: "header".into(),
                header: "a b".into(),
                ..Default::default()
            }),
            "policy.header"
        );
        let h = ShadowPolicy {
            key: " header ".into(),
            header: " X-Session ".into(),
            ..Default::default()
        }
        .checked()
        .unwrap();
        assert_eq!((h.key.as_str(), h.header.as_str()), ("header", "x-session"));
        assert_eq!(
            field(ShadowPolicy {
                ports: vec![80, 0],
                ..Default::default()
            }),
            "policy.ports[1]"
        );
        assert_eq!(
            field(ShadowPolicy {
                ports: vec![65536],
                ..Default::default()
            }),
            "policy.ports[0]"
        );
        assert_eq!(
            field(ShadowPolicy {
                sources: vec!["10.0.0.0/33".into()],
                ..Default::default()
            }),
            "policy.sources[0]"
        );
        assert_eq!(
            field(ShadowPolicy {
                sources: vec!["web".into()],
                ..Default::default()
            }),
            "policy.sources[0]"
        );
        assert_eq!(
            field(ShadowPolicy {
                window_start_minute: 1440,
                ..Default::default()
            }),
            "policy.window_start_minute"
        );
        assert_eq!(
            field(ShadowPolicy {
                divert_ppm: PPM + 1,
                ..Default::default()
            }),
            "policy.divert_ppm"
        );
        assert_eq!(
            field(ShadowPolicy {
                failover: Some(FailoverCheck::default()),
                ..Default::default()
            }),
            "policy.failover.port"
        );
        assert_eq!(
            field(ShadowPolicy {
                failover: Some(FailoverCheck {
                    port: 80,
                    interval_ms: 5,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "policy.failover.interval_ms"
        );
        assert_eq!(
            field(ShadowPolicy {
                failover: Some(FailoverCheck {
                    port: 80,
                    probe: "x".repeat(MAX_PROBE + 1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "policy.failover.probe"
        );
        let ok = ShadowPolicy {
            divert_ppm: PPM,
            failover: Some(FailoverCheck {
                port: 80,
                interval_ms: 50,
                failures: 2,
                probe: "GET / HTTP/1.0\r\n\r\n".into(),
            }),
            ..Default::default()
        }
        .checked()
        .expect("divert and failover are accepted");
        assert_eq!(
            ok.to_wire().failover.expect("kept").probe,
            b"GET / HTTP/1.0\r\n\r\n"
        );
        assert_eq!(
            field(ShadowPolicy {
                window_start_minute: 600,
                window_end_minute: 600,
                ..Default::default()
            }),
            "policy.window_end_minute"
        );
    }
}

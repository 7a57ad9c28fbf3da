//! A tap's spec as the agent uses it (checked from the wire's `ShadowTap`), the kernel
//! policy and source prefixes it becomes, its time window, and the kernel's decision
//! computed in user space ([`decide`]: same hash, same rules), so that tests and tools can
//! predict exactly which connections are sampled.

use std::net::SocketAddr;

use agent_common::net::{Cidr, Family};
use agent_common::shadow::{TapPolicy, TapSourceData, key_kind, sampled, threshold_of};
use weft_proto::v1::{ShadowPolicy, ShadowTap};

use super::tap_record::key_of;

/// A checked `ShadowTap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapSpec {
    pub shadow: String,
    pub network: String,
    pub node: String,
    pub policy: PolicySpec,
    pub sinks: Vec<SocketAddr>,
}

/// A checked `ShadowPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// Of eligible connections, in the kernel. Sampling by a header (policy key `header`)
    /// copies every eligible connection (1,000,000, or 0 for a share of 0): the sinks
    /// choose the requests.
    pub share_ppm: u32,
    /// `key_kind::CONNECTION` or `key_kind::SOURCE`.
    pub key: u8,
    /// Empty: every port.
    pub ports: Vec<u16>,
    /// Empty: every source.
    pub sources: Vec<Cidr>,
    pub read_only: bool,
    /// Minutes of the UTC day, start inclusive, end exclusive; `None`: always.
    pub window: Option<(u32, u32)>,
    pub seed: u32,
}

/// Prefixes per tap at most (the kernel trie is shared by all taps).
pub const MAX_SOURCES: usize = 256;
pub const MAX_SINKS: usize = 16;
const MINUTES_PER_DAY: u32 = 24 * 60;

impl TryFrom<&ShadowPolicy> for PolicySpec {
    type Error = String;

    fn try_from(p: &ShadowPolicy) -> Result<Self, String> {
        if p.share_ppm > 1_000_000 {
            return Err(format!(
                "share_ppm {} is more than 1000000 (100 %)",
                p.share_ppm
            ));
        }
        let (key, share_ppm) = match p.key.as_str() {
            "" | "connection" => (key_kind::CONNECTION, p.share_ppm),
            "source" => (key_kind::SOURCE, p.share_ppm),
            "header" if weft_reqroute::HeaderRule::new(&p.header, None).is_ok() => (
                key_kind::CONNECTION,
                if p.share_ppm > 0 { 1_000_000 } else { 0 },
            ),
            "header" => {
                return Err(format!(
                    "policy key \"header\" with header {:?}: not a header name",
                    p.header
                ));
            }
            k => {
                return Err(format!(
                    "policy key {k:?} is not \"connection\", \"source\" or \"header\""
                ));
            }
        };
        let ports = p
            .ports
            .iter()
            .map(|&x| {
                u16::try_from(x)
                    .ok()
                    .filter(|&x| x != 0)
                    .ok_or_else(|| format!("port {x} is not 1..=65535"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if p.sources.len() > MAX_SOURCES {
            return Err(format!(
                "{} source prefixes: at most {MAX_SOURCES}",
                p.sources.len()
            ));
        }
        let sources = p
            .sources
            .iter()
            .map(|s| {
                s.parse::<Cidr>()
                    .map_err(|e| format!("source prefix {s:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (a, b) = (p.window_start_minute, p.window_end_minute);
        let window = match (a, b) {
            (0, 0) => None,
            _ if a >= MINUTES_PER_DAY || b >= MINUTES_PER_DAY => {
                return Err(format!(
                    "time window {a}..{b}: minutes of the day are 0..{MINUTES_PER_DAY}"
                ));
            }
            _ if a == b => {
                return Err(format!(
                    "time window {a}..{b} is empty (both 0 means always)"
                ));
            }
            _ => Some((a, b)),
        };
        Ok(Self {
            share_ppm,
            key,
            ports,
            sources,
            read_only: p.read_only,
            window,
            seed: p.seed,
        })
    }
}

impl TapSpec {
    /// Checks a `ShadowTap` whose resource key is `key` (`<shadow>/<node>`).
    pub fn from_wire(key: &str, t: &ShadowTap) -> Result<Self, String> {
        let want = format!("{}/{}", t.shadow, t.node);
        if key != want {
            return Err(format!(
                "the resource key {key:?} is not <shadow>/<node> ({want:?})"
            ));
        }
        agent_common::netnames::check("network", &t.network)?;
        agent_common::netnames::check("node", &t.node)?;
        let policy = t
            .policy
            .as_ref()
            .ok_or_else(|| "the tap has no policy".to_owned())
            .and_then(PolicySpec::try_from)?;
        if t.sinks.len() > MAX_SINKS {
            return Err(format!("{} sinks: at most {MAX_SINKS}", t.sinks.len()));
        }
        let sinks = t
            .sinks
            .iter()
            .map(|s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| format!("sink {s:?} is not address:port"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            shadow: t.shadow.clone(),
            network: t.network.clone(),
            node: t.node.clone(),
            policy,
            sinks,
        })
    }
}

/// Whether the policy's window holds the instant `unix_secs`.
pub fn window_active(window: Option<(u32, u32)>, unix_secs: u64) -> bool {
    let Some((start, end)) = window else {
        return true;
    };
    let minute = ((unix_secs / 60) % u64::from(MINUTES_PER_DAY)) as u32;
    if start < end {
        (start..end).contains(&minute)
    } else {
        minute >= start || minute < end
    }
}

/// The kernel's policy value for a tap.
/// `active`: a `tap_active` value.
pub fn kernel_policy(p: &PolicySpec, slot: u32, generation: u32, active: u8) -> Box<TapPolicy> {
    let mut k = Box::new(TapPolicy::INACTIVE);
    k.threshold = threshold_of(p.share_ppm);
    k.seed = p.seed;
    k.generation = generation;
    k.slot = slot;
    k.active = active;
    k.key_kind = p.key;
    k.all_ports = u8::from(p.ports.is_empty());
    k.all_sources = u8::from(p.sources.is_empty());
    for &port in &p.ports {
        k.allow_port(port);
    }
    k
}

/// The LPM trie entries of a tap's source prefixes: (prefix length, data).
pub fn source_entries(p: &PolicySpec, ifindex: u32, generation: u32) -> Vec<(u32, TapSourceData)> {
    p.sources
        .iter()
        .map(|c| {
            let (addr, bits) = match c.family {
                // `::ffff:a.b.c.d`, as the kernel program looks IPv4 sources up.
                Family::Ipv4 => {
                    let v4 = (c.start as u32).to_be_bytes();
                    let mut a = [0u8; 16];
                    a[10] = 0xff;
                    a[11] = 0xff;
                    a[12..].copy_from_slice(&v4);
                    (a, 96 + u32::from(c.prefix_len))
                }
                Family::Ipv6 => (c.start.to_be_bytes(), u32::from(c.prefix_len)),
            };
            (
                64 + bits,
                TapSourceData {
                    ifindex: ifindex.to_be_bytes(),
                    generation: generation.to_be_bytes(),
                    addr,
                },
            )
        })
        .collect()
}

/// What the kernel decides for a new connection.
#[cfg_attr(not(test), allow(dead_code))] // the kernel's decision for tests and tools
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Decision {
    /// Outside the policy (inactive, port, source).
    Ineligible,
    NotSampled,
    Sampled,
}

/// The kernel's decision for the connection `client` -> `server` under `p` (active or
/// not, as the time window makes it).
#[cfg_attr(not(test), allow(dead_code))] // the kernel's decision for tests and tools
pub fn decide(p: &PolicySpec, active: bool, client: SocketAddr, server: SocketAddr) -> Decision {
    let port_ok = p.ports.is_empty() || p.ports.contains(&server.port());
    let source_ok = p.sources.is_empty() || p.sources.iter().any(|c| c.contains(client.ip()));
    if !active || !port_ok || !source_ok {
        return Decision::Ineligible;
    }
    let key = key_of(client, server);
    if sampled(p.seed, threshold_of(p.share_ppm), p.key, &key) {
        Decision::Sampled
    } else {
        Decision::NotSampled
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use agent_common::shadow::tap_active;

    use super::*;

    fn policy(share_ppm: u32, key: &str) -> PolicySpec {
        PolicySpec::try_from(&ShadowPolicy {
            share_ppm,
            key: key.into(),
            seed: 42,
            ..Default::default()
        })
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn decision_share_is_close_to_the_policy() {
        let p = policy(100_000, "connection");
        let server = addr("198.18.0.1:80");
        let n = (0..10_000u16)
            .filter(|i| {
                decide(
                    &p,
                    true,
                    SocketAddr::new(addr("198.18.0.2:0").ip(), 20_000 + i),
                    server,
                ) == Decision::Sampled
            })
            .count();
        // 10 % of 10,000, sd 30.
        assert!((880..1120).contains(&n), "{n}");
        assert_eq!(
            decide(&p, false, addr("198.18.0.2:1"), server),
            Decision::Ineligible
        );
        assert!((0..1000u16).all(|i| decide(
            &policy(0, ""),
            true,
            addr(&format!("198.18.0.2:{}", 1000 + i)),
            server
        ) == Decision::NotSampled));
        assert!((0..1000u16).all(|i| decide(
            &policy(1_000_000, ""),
            true,
            addr(&format!("198.18.0.2:{}", 1000 + i)),
            server
        ) == Decision::Sampled));
    }

    #[test]
    fn source_key_is_sticky_per_client() {
        let p = policy(300_000, "source");
        let server = addr("198.18.0.1:80");
        let mut seen = [0; 2];
        for host in 2..60u8 {
            let ip = IpAddr::from([198, 18, 1, host]);
            let first = decide(&p, true, SocketAddr::new(ip, 1), server);
            for port in 2..50 {
                assert_eq!(decide(&p, true, SocketAddr::new(ip, port), server), first);
            }
            seen[usize::from(first == Decision::Sampled)] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn ports_and_sources_limit_eligibility() {
        let mut p = PolicySpec::try_from(&ShadowPolicy {
            share_ppm: 1_000_000,
            ports: vec![80],
            sources: vec!["198.18.4.0/24".into(), "fd00::/64".into()],
            ..Default::default()
        })
        .unwrap();
        let s80 = addr("198.18.0.1:80");
        assert_eq!(
            decide(&p, true, addr("198.18.4.9:1"), s80),
            Decision::Sampled
        );
        assert_eq!(
            decide(&p, true, addr("198.18.5.9:1"), s80),
            Decision::Ineligible
        );
        assert_eq!(
            decide(&p, true, addr("198.18.4.9:1"), addr("198.18.0.1:81")),
            Decision::Ineligible
        );
        assert_eq!(
            decide(&p, true, addr("[fd00::9]:1"), addr("[fd00::1]:80")),
            Decision::Sampled
        );
        let k = kernel_policy(&p, 3, 7, tap_active::ON);
        assert!(k.port_allowed(80) && !k.port_allowed(81));
        assert_eq!((k.slot, k.generation, k.all_sources), (3, 7, 0));
        let e = source_entries(&p, 9, 7);
        assert_eq!(e[0].0, 64 + 96 + 24);
        assert_eq!(&e[0].1.addr[10..15], &[0xff, 0xff, 198, 18, 4]);
        assert_eq!(e[1].0, 64 + 64);
        p.sources.clear();
        assert_eq!(kernel_policy(&p, 0, 0, tap_active::ON).all_sources, 1);
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            ShadowPolicy {
                key: "cookie".into(),
                ..Default::default()
            },
            ShadowPolicy {
                share_ppm: 1_000_001,
                ..Default::default()
            },
            ShadowPolicy {
                key: "header".into(),
                ..Default::default()
            },
            ShadowPolicy {
                key: "header".into(),
                header: "x user".into(),
                ..Default::default()
            },
            ShadowPolicy {
                ports: vec![0],
                ..Default::default()
            },
            ShadowPolicy {
                ports: vec![70_000],
                ..Default::default()
            },
            ShadowPolicy {
                sources: vec!["198.18.0.1/24".into()],
                ..Default::default()
            },
            ShadowPolicy {
                window_start_minute: 5,
                window_end_minute: 5,
                ..Default::default()
            },
            ShadowPolicy {
                window_start_minute: 1440,
                window_end_minute: 5,
                ..Default::default()
            },
        ] {
            assert!(PolicySpec::try_from(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_header_key_copies_every_eligible_connection() {
        // The sinks choose requests by the header's value: the kernel copies all.
        let p = |share_ppm| {
            PolicySpec::try_from(&ShadowPolicy {
                share_ppm,
                key: "header".into(),
                header: "X-User".into(),
                ..Default::default()
            })
            .unwrap()
        };
        assert_eq!(
            (p(100_000).share_ppm, p(100_000).key),
            (1_000_000, key_kind::CONNECTION)
        );
        assert_eq!(p(0).share_ppm, 0);
        assert_eq!(
            kernel_policy(&p(1), 0, 0, tap_active::ON).threshold,
            threshold_of(1_000_000)
        );
    }

    #[test]
    fn windows_may_wrap_midnight() {
        let at = |h: u64, m: u64| (h * 60 + m) * 60 + 86_400 * 3;
        assert!(window_active(None, at(3, 0)));
        let day = Some((8 * 60, 17 * 60));
        assert!(window_active(day, at(8, 0)) && !window_active(day, at(17, 0)));
        let night = Some((22 * 60, 2 * 60));
        assert!(window_active(night, at(23, 59)) && window_active(night, at(1, 0)));
        assert!(!window_active(night, at(12, 0)));
    }
}

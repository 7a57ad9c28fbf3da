//! The desired inbound policy of one node, independent of the TDL: the agent builds it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The inbound policy of one node: `rules` in order, first match wins; whatever no rule
/// matches (and is not part of an established connection, loopback or IPv6 neighbour
/// discovery) is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub rules: Vec<InboundRule>,
}

/// One inbound rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundRule {
    /// Source prefixes; empty matches any source (IPv4 and IPv6).
    #[serde(default)]
    pub sources: Vec<Prefix>,
    pub protocol: Protocol,
    /// Destination port ranges; empty matches any port. Only for TCP and UDP.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 and ICMPv6 for IPv6.
    Icmp,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accept,
    Drop,
}

/// An inclusive range of ports; `start == end` is one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            start: port,
            end: port,
        }
    }
}

/// An IPv4 or IPv6 prefix. Serialised as its text form (`198.18.0.0/15`, `fd00::/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// What is wrong with a prefix, port range or rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl Prefix {
    /// A prefix; the host bits of `addr` must be zero.
    pub fn new(addr: IpAddr, len: u8) -> Result<Self, ParseError> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if len > max {
            return Err(ParseError(format!(
                "prefix length {len} > {max} for {addr}"
            )));
        }
        let p = Prefix { addr, len };
        if p.masked_bytes() != p.addr_bytes() {
            return Err(ParseError(format!(
                "{addr}/{len} has host bits set (the network is {})",
                Prefix::from_bytes_masked(&p.addr_bytes(), len)
            )));
        }
        Ok(p)
    }

    /// A host prefix (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    /// `0.0.0.0/0`: any IPv4 source.
    pub fn any_ipv4() -> Self {
        Prefix {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            len: 0,
        }
    }

    /// `::/0`: any IPv6 source.
    pub fn any_ipv6() -> Self {
        Prefix {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            len: 0,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn len(&self) -> u8 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The full length of an address of this family (32 or 128).
    pub fn max_len(&self) -> u8 {
        if self.is_ipv4() { 32 } else { 128 }
    }

    pub(crate) fn addr_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// The network mask as bytes of the address's length.
    pub(crate) fn mask_bytes(&self) -> Vec<u8> {
        mask(self.addr_bytes().len(), self.len)
    }

    fn masked_bytes(&self) -> Vec<u8> {
        self.addr_bytes()
            .iter()
            .zip(self.mask_bytes())
            .map(|(a, m)| a & m)
            .collect()
    }

    /// A prefix from address bytes (4 or 16) and a length, host bits cleared.
    pub(crate) fn from_bytes_masked(bytes: &[u8], len: u8) -> Prefix {
        let m = mask(bytes.len(), len);
        let b: Vec<u8> = bytes.iter().zip(m).map(|(a, m)| a & m).collect();
        let addr = if b.len() == 4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        Prefix { addr, len }
    }
}

/// `len` leading one bits over `bytes` bytes.
pub(crate) fn mask(bytes: usize, len: u8) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let bits = (len as usize).saturating_sub(i * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect()
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = ParseError;
    /// `addr/len`, or a bare address (a host prefix).
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|e| ParseError(format!("prefix {s:?}: address: {e}")))?;
        match l {
            None => Ok(Prefix::host(addr)),
            Some(l) => {
                let len: u8 = l
                    .parse()
                    .map_err(|e| ParseError(format!("prefix {s:?}: length: {e}")))?;
                Prefix::new(addr, len)
            }
        }
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl FromStr for PortRange {
    type Err = ParseError;
    /// `8080` or `1000-2000`.
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|e| ParseError(format!("port {x:?}: {e}")))
        };
        let r = match s.split_once('-') {
            Some((a, b)) => PortRange {
                start: p(a)?,
                end: p(b)?,
            },
            None => PortRange::single(p(s)?),
        };
        if r.start > r.end {
            return Err(ParseError(format!("port range {s:?}: start after end")));
        }
        Ok(r)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        })
    }
}

impl fmt::Display for InboundRule {
    /// `tcp 5432,6000-6010 from 198.18.0.5/32,fd00::5/128 accept`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.protocol)?;
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            write!(f, " {}", ports.join(","))?;
        }
        if !self.sources.is_empty() {
            let s: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
            write!(f, " from {}", s.join(","))?;
        }
        write!(f, " {}", self.verdict)
    }
}

impl InboundRule {
    /// Ports are only for TCP and UDP; a range must not be reversed.
    pub fn validate(&self) -> Result<(), ParseError> {
        if !self.ports.is_empty() && !matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
            return Err(ParseError(format!(
                "rule {self}: ports are only for tcp and udp"
            )));
        }
        if let Some(r) = self.ports.iter().find(|r| r.start > r.end) {
            return Err(ParseError(format!(
                "rule {self}: port range {r} is reversed"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        for s in [
            "198.18.0.0/15",
            "198.18.0.5/32",
            "fd00::/8",
            "fd00::5/128",
            "0.0.0.0/0",
        ] {
            let p: Prefix = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "198.18.0.5".parse::<Prefix>().unwrap().to_string(),
            "198.18.0.5/32"
        );
        assert!("198.18.0.5/15".parse::<Prefix>().is_err());
        assert!("198.18.0.0/33".parse::<Prefix>().is_err());
        assert_eq!(mask(4, 15), vec![255, 254, 0, 0]);
        assert_eq!(mask(2, 0), vec![0, 0]);
    }

    #[test]
    fn serde_round_trip() {
        let r = Ruleset {
            rules: vec![InboundRule {
                sources: vec!["198.18.0.0/30".parse().unwrap()],
                protocol: Protocol::Tcp,
                ports: vec![PortRange::single(8080), "9000-9010".parse().unwrap()],
                verdict: Verdict::Accept,
            }],
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"198.18.0.0/30\""), "{j}");
        assert_eq!(serde_json::from_str::<Ruleset>(&j).unwrap(), r);
        assert_eq!(
            r.rules[0].to_string(),
            "tcp 8080,9000-9010 from 198.18.0.0/30 accept"
        );
    }
}

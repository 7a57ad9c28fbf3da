//! IP prefixes and address families, shared by the agent and the controller (feature `std`).
//!
//! Two types, one arithmetic (addresses as 128-bit integers, IPv4 in the low 32 bits):
//! - [`Cidr`], a network prefix whose host bits are zero (`198.18.128.0/22`): shard pools,
//!   shards, reserved ranges. Parsing refuses host bits and suggests the network meant.
//! - [`IfAddr`], an address on an interface with the prefix length of its network
//!   (`198.18.128.5/22`, what `ip addr` shows): desired and observed workload addresses.
//!   Parsing refuses what cannot be a unicast interface address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A text that is not a [`Family`], [`Cidr`] or [`IfAddr`]. The message names the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    input: String,
    message: String,
}

impl ParseError {
    fn new(input: &str, message: String) -> Self {
        Self {
            input: input.to_owned(),
            message,
        }
    }

    /// The text that was refused.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseError {}

impl From<ParseError> for String {
    fn from(e: ParseError) -> Self {
        e.message
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// Address width in bits (32 or 128), also the longest prefix length.
    pub fn bits(self) -> u8 {
        match self {
            Self::Ipv4 => 32,
            Self::Ipv6 => 128,
        }
    }

    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::Ipv4,
            IpAddr::V6(_) => Self::Ipv6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
        }
    }

    /// The bits below a prefix of `prefix_len` (longer lengths count as the longest).
    pub fn host_mask(self, prefix_len: u8) -> u128 {
        let host_bits = u32::from(self.bits() - prefix_len.min(self.bits()));
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "v4" | "4" | "inet" => Ok(Self::Ipv4),
            "ipv6" | "v6" | "6" | "inet6" => Ok(Self::Ipv6),
            _ => Err(ParseError::new(
                s,
                format!("`{s}` is not an address family; use `ipv4` or `ipv6`"),
            )),
        }
    }
}

pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

pub fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        // Values of an IPv4 prefix never exceed u32::MAX.
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(value).unwrap_or(u32::MAX))),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// A network prefix whose host bits are zero, e.g. `198.18.128.0/22`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub family: Family,
    /// The network address as an integer (host bits zero).
    pub start: u128,
    pub prefix_len: u8,
}

impl Cidr {
    /// No checks: `start` is taken as the network address and `prefix_len` should not
    /// exceed the family's width (see [`FromStr`] for the checked way in).
    pub fn new(family: Family, start: u128, prefix_len: u8) -> Self {
        Self {
            family,
            start,
            prefix_len,
        }
    }

    /// The prefix of length `prefix_len` that holds `ip` (host bits cleared), or `None`
    /// if the length is too long for the family.
    pub fn containing(ip: IpAddr, prefix_len: u8) -> Option<Self> {
        let family = Family::of(ip);
        (prefix_len <= family.bits()).then(|| {
            Self::new(
                family,
                to_u128(ip) & !family.host_mask(prefix_len),
                prefix_len,
            )
        })
    }

    /// The last address of the prefix.
    pub fn last(&self) -> u128 {
        self.start | self.family.host_mask(self.prefix_len)
    }

    /// Number of addresses (saturating at u128::MAX for ::/0).
    pub fn size(&self) -> u128 {
        self.family.host_mask(self.prefix_len).saturating_add(1)
    }

    /// Whether `ip` lies in this prefix (same family, same network bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family && (self.start..=self.last()).contains(&to_u128(ip))
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.family == other.family && self.start <= other.last() && other.start <= self.last()
    }

    pub fn covers(&self, other: &Cidr) -> bool {
        self.family == other.family && self.start <= other.start && other.last() <= self.last()
    }

    pub fn nth(&self, offset: u128) -> IpAddr {
        from_u128(self.family, self.start + offset)
    }

    /// The network address.
    pub fn network(&self) -> IpAddr {
        from_u128(self.family, self.start)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let err = |message: String| ParseError::new(s, message);
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            err(format!(
                "`{s}` is not a prefix: write it as address/length, e.g. 198.18.128.0/17"
            ))
        })?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| err(format!("`{addr}` in `{s}` is not an IPv4 or IPv6 address")))?;
        let family = Family::of(ip);
        let cidr = len
            .parse()
            .ok()
            .and_then(|l| Self::containing(ip, l))
            .ok_or_else(|| {
                err(format!(
                    "`{len}` in `{s}` is not a prefix length of {} (0..={})",
                    family.as_str(),
                    family.bits()
                ))
            })?;
        if cidr.start != to_u128(ip) {
            return Err(err(format!(
                "`{s}` has host bits set; did you mean {cidr}?"
            )));
        }
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface address with its prefix length, e.g. `198.18.128.5/22`: the host bits are
/// the address's own. Ordered by address, then prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IfAddr {
    /// `None` if the prefix length is too long for the address's family.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        (prefix <= Family::of(addr).bits()).then_some(Self { addr, prefix })
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }

    /// The prefix this address is in (`198.18.130.7/22` -> `198.18.128.0/22`).
    pub fn subnet(&self) -> Cidr {
        let family = self.family();
        Cidr::new(
            family,
            to_u128(self.addr) & !family.host_mask(self.prefix),
            self.prefix,
        )
    }

    /// The network this address is in, as an address with host bits cleared.
    pub fn network(&self) -> IfAddr {
        IfAddr {
            addr: self.subnet().network(),
            prefix: self.prefix,
        }
    }

    /// Whether `ip` lies in this address's prefix (same family, same network bits).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.subnet().contains(*ip)
    }
}

impl FromStr for IfAddr {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Self, ParseError> {
        let err = |why: &str| {
            ParseError::new(
                text,
                format!(
                    "{text:?} is not an address with a prefix length (like 198.18.128.5/22): {why}"
                ),
            )
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| err("no '/prefix'"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("bad address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| err("bad prefix length"))?;
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() || broadcast {
            return Err(err("not a unicast interface address"));
        }
        IfAddr::new(addr, prefix).ok_or_else(|| err("prefix length too long for the family"))
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl From<IfAddr> for Cidr {
    fn from(a: IfAddr) -> Self {
        a.subnet()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn a(s: &str) -> IfAddr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_parse_and_measure() {
        let p = c("198.18.128.0/22");
        assert_eq!(p.size(), 1024);
        assert_eq!(p.nth(1).to_string(), "198.18.128.1");
        assert_eq!(
            from_u128(Family::Ipv4, p.last()).to_string(),
            "198.18.131.255"
        );
        let v6 = c("fd00:80::/118");
        assert_eq!(v6.size(), 1024);
        assert_eq!(v6.to_string(), "fd00:80::/118");
        let all = c("::/0");
        assert_eq!((all.last(), all.size()), (u128::MAX, u128::MAX));
        assert_eq!(c("0.0.0.0/0").size(), 1 << 32);
        assert!(p.overlaps(&c("198.18.130.0/24")));
        assert!(!p.overlaps(&c("198.18.132.0/24")));
        assert!(p.covers(&c("198.18.130.0/24")) && !c("198.18.130.0/24").covers(&p));
        assert!(!c("0.0.0.0/0").overlaps(&all), "families never overlap");
        assert!(p.contains(ip("198.18.131.255")) && !p.contains(ip("198.18.132.0")));
        assert!(!c("::/0").contains(ip("198.18.0.1")));
    }

    #[test]
    fn prefixes_refuse_bad_input_and_name_it() {
        let host_bits = "198.18.128.1/22".parse::<Cidr>().unwrap_err();
        assert!(
            host_bits.to_string().contains("198.18.128.0/22"),
            "{host_bits}"
        );
        assert_eq!(host_bits.input(), "198.18.128.1/22");
        assert!(c("fd00:80::/64").to_string() == "fd00:80::/64");
        assert!(
            "fd00:80::1/64"
                .parse::<Cidr>()
                .unwrap_err()
                .to_string()
                .contains("fd00:80::/64")
        );
        for (bad, named) in [
            ("198.18.128.0/33", "`33`"),
            ("fd00::/129", "`129`"),
            ("198.18.128.0", "`198.18.128.0`"),
            ("x/24", "`x`"),
            ("198.18.128.0/x", "`x`"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
        let e = String::from("ip4".parse::<Family>().unwrap_err());
        assert!(e.contains("`ip4`") && e.contains("ipv6"), "{e}");
        assert_eq!("INET6".parse::<Family>().unwrap(), Family::Ipv6);
        assert_eq!("4".parse::<Family>().unwrap().to_string(), "ipv4");
    }

    #[test]
    fn prefixes_and_families_serialize_as_strings() {
        let p = c("198.18.128.0/17");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"198.18.128.0/17\"");
        assert_eq!(
            serde_json::from_str::<Cidr>("\"198.18.128.0/17\"").unwrap(),
            p
        );
        assert!(serde_json::from_str::<Cidr>("\"198.18.128.1/17\"").is_err());
        assert_eq!(serde_json::to_string(&Family::Ipv6).unwrap(), "\"ipv6\"");
    }

    #[test]
    fn interface_addresses_parse_and_refuse_bad_input() {
        assert_eq!(a("198.18.128.5/22").to_string(), "198.18.128.5/22");
        assert_eq!(a("fd00:80::5/64").prefix, 64);
        for bad in [
            "198.18.1.1",
            "198.18.1.1/33",
            "fd00::1/129",
            "x/24",
            "198.18.1.1/x",
            "0.0.0.0/0",
            "224.0.0.1/4",
            "::1/128",
            "255.255.255.255/32",
        ] {
            let e = bad.parse::<IfAddr>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(a("198.18.128.0/22").contains(&ip("198.18.131.255")));
        assert!(!a("198.18.128.0/22").contains(&ip("198.18.132.0")));
        assert!(a("fd00:80::/64").contains(&ip("fd00:80::ffff")));
        assert!(!a("fd00:80::/64").contains(&ip("198.18.0.1")));
        assert!(a("198.18.0.1/0").contains(&ip("10.0.0.1")));
        assert_eq!(a("198.18.130.7/22").network(), a("198.18.128.0/22"));
        assert_eq!(a("fd00:80::5/64").network().to_string(), "fd00:80::/64");
        assert_eq!(a("198.18.130.7/22").subnet(), c("198.18.128.0/22"));
        assert_eq!(Cidr::from(a("fd00:80::5/64")), c("fd00:80::/64"));
        assert_eq!(IfAddr::new(ip("198.18.0.1"), 33), None);
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(v.into())),
            any::<u128>().prop_map(|v| IpAddr::V6(v.into())),
        ]
    }

    fn any_cidr() -> impl Strategy<Value = Cidr> {
        (any_ip(), 0u8..=128).prop_map(|(ip, len)| {
            Cidr::containing(ip, len % (Family::of(ip).bits() + 1))
                .expect("length within the family")
        })
    }

    proptest! {
        #[test]
        fn cidr_parses_what_it_displays(cidr in any_cidr()) {
            prop_assert_eq!(cidr.to_string().parse::<Cidr>(), Ok(cidr));
        }

        #[test]
        fn if_addr_parses_what_it_displays(ip in any_ip(), len in 0u8..=128) {
            let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
            prop_assume!(!(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast));
            let a = IfAddr::new(ip, len % (Family::of(ip).bits() + 1)).unwrap();
            prop_assert_eq!(a.to_string().parse::<IfAddr>(), Ok(a));
            prop_assert!(a.contains(&a.addr) && a.subnet().contains(a.addr));
        }
    }
}

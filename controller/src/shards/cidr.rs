//! Prefixes as 128-bit integers, so IPv4 and IPv6 share one arithmetic.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
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
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" | "v4" | "4" | "inet" => Ok(Self::Ipv4),
            "ipv6" | "v6" | "6" | "inet6" => Ok(Self::Ipv6),
            _ => Err(format!(
                "`{s}` is not an address family; use `ipv4` or `ipv6`"
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

/// A prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub family: Family,
    pub start: u128,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn new(family: Family, start: u128, prefix_len: u8) -> Self {
        Self {
            family,
            start,
            prefix_len,
        }
    }

    fn host_mask(family: Family, prefix_len: u8) -> u128 {
        let host_bits = u32::from(family.bits() - prefix_len.min(family.bits()));
        if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        }
    }

    /// The last address of the prefix.
    pub fn last(&self) -> u128 {
        self.start | Self::host_mask(self.family, self.prefix_len)
    }

    /// Number of addresses (saturating at u128::MAX for ::/0).
    pub fn size(&self) -> u128 {
        Self::host_mask(self.family, self.prefix_len).saturating_add(1)
    }

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s.split_once('/').ok_or_else(|| {
            format!("`{s}` is not a prefix: write it as address/length, e.g. 198.18.128.0/17")
        })?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 or IPv6 address"))?;
        let family = Family::of(ip);
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= family.bits())
            .ok_or_else(|| {
                format!(
                    "`{len}` is not a prefix length of {} (0..={})",
                    family.as_str(),
                    family.bits()
                )
            })?;
        let start = to_u128(ip);
        if start & Self::host_mask(family, prefix_len) != 0 {
            let network = start & !Self::host_mask(family, prefix_len);
            return Err(format!(
                "`{s}` has host bits set; did you mean {}/{prefix_len}?",
                from_u128(family, network)
            ));
        }
        Ok(Self {
            family,
            start,
            prefix_len,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_measures_prefixes() {
        let c: Cidr = "198.18.128.0/22".parse().unwrap();
        assert_eq!(c.size(), 1024);
        assert_eq!(c.nth(1).to_string(), "198.18.128.1");
        assert_eq!(
            from_u128(Family::Ipv4, c.last()).to_string(),
            "198.18.131.255"
        );
        let v6: Cidr = "fd00:80::/118".parse().unwrap();
        assert_eq!(v6.size(), 1024);
        assert_eq!(v6.to_string(), "fd00:80::/118");
        assert!(
            "198.18.128.1/22"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("198.18.128.0/22")
        );
        assert!("198.18.128.0/33".parse::<Cidr>().is_err());
        let all: Cidr = "::/0".parse().unwrap();
        assert_eq!(all.last(), u128::MAX);
        assert!(c.overlaps(&"198.18.130.0/24".parse().unwrap()));
        assert!(!c.overlaps(&"198.18.132.0/24".parse().unwrap()));
    }
}

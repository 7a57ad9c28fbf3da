//! The nf_tables expressions this crate writes, how they are encoded, decoded back from a
//! dump, and the rule shapes ([`RuleKind`]) they make up.
//!
//! Every kernel rule in chain `input` is one [`RuleKind`]: the fixed preamble
//! (established/related, loopback, neighbour discovery) or one *atom* of a user rule. An
//! [`InboundRule`] with several sources, ports, or ICMP for both families expands into
//! several atoms (the cross product), in order. Comparison is on decoded kinds: a dumped
//! rule is recognised only if re-encoding the kind it decodes to gives exactly the
//! expressions the kernel returned, so anything else (another expression, another
//! register, a counter someone added) is reported as a foreign rule.

use std::fmt;

use crate::model::{InboundRule, PortRange, Prefix, Protocol, Verdict};
use crate::nl::{self, Msg};

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

const NFT_META_MARK: u32 = 3;
const NFT_META_IIF: u32 = 4;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CT_STATE: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_RANGE_EQ: u32 = 0;

const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
/// `reject with tcp reset`.
const NFT_REJECT_TCP_RST: u32 = 1;

const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// `ct state` bits (`NF_CT_STATE_BIT`): established 0x2, related 0x4.
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// The loopback device is ifindex 1 in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// ICMPv6 router solicitation (133) to neighbour advertisement (136).
const ND_TYPES: (u8, u8) = (133, 136);

/// One nf_tables expression, as far as this crate needs to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Meta {
        key: u32,
        dreg: u32,
    },
    Ct {
        key: u32,
        dreg: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: u32,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        len: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Range {
        sreg: u32,
        op: u32,
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// `immediate` into the verdict register.
    Verdict(u32),
    /// `reject` of type `NFTA_REJECT_TYPE` (only [`NFT_REJECT_TCP_RST`] is written: no
    /// ICMP code).
    Reject(u32),
    /// Anything else: its name and the attributes we did not decode.
    Other(String),
}

impl Expr {
    fn encode(&self, m: &mut Msg) {
        m.begin(nl::NFTA_LIST_ELEM);
        let name = match self {
            Expr::Meta { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Range { .. } => "range",
            Expr::Verdict(_) => "immediate",
            Expr::Reject(_) => "reject",
            Expr::Other(n) => n.as_str(),
        };
        m.str(nl::NFTA_EXPR_NAME, name);
        m.begin(nl::NFTA_EXPR_DATA);
        match self {
            Expr::Meta { key, dreg } | Expr::Ct { key, dreg } => {
                m.be32(1, *dreg).be32(2, *key);
            }
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                m.be32(1, *dreg)
                    .be32(2, *base)
                    .be32(3, *offset)
                    .be32(4, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                m.be32(1, *sreg).be32(2, *op);
                m.begin(3).attr(NFTA_DATA_VALUE, data).end();
            }
            Expr::Bitwise {
                sreg,
                dreg,
                len,
                mask,
                xor,
            } => {
                m.be32(1, *sreg).be32(2, *dreg).be32(3, *len);
                m.begin(4).attr(NFTA_DATA_VALUE, mask).end();
                m.begin(5).attr(NFTA_DATA_VALUE, xor).end();
            }
            Expr::Range { sreg, op, from, to } => {
                m.be32(1, *sreg).be32(2, *op);
                m.begin(3).attr(NFTA_DATA_VALUE, from).end();
                m.begin(4).attr(NFTA_DATA_VALUE, to).end();
            }
            Expr::Verdict(code) => {
                m.be32(1, NFT_REG_VERDICT);
                m.begin(2).begin(NFTA_DATA_VERDICT);
                m.be32(NFTA_VERDICT_CODE, *code);
                m.end().end();
            }
            Expr::Reject(kind) => {
                m.be32(NFTA_REJECT_TYPE, *kind);
            }
            Expr::Other(_) => {}
        }
        m.end();
        m.end();
    }

    /// One `NFTA_LIST_ELEM` of a dumped rule.
    fn decode(elem: &[u8]) -> Result<Expr, String> {
        let a = nl::attrs(elem)?;
        let name = nl::find(&a, nl::NFTA_EXPR_NAME)
            .map(nl::string)
            .ok_or("expression without a name")?;
        let data = nl::attrs(nl::find(&a, nl::NFTA_EXPR_DATA).unwrap_or(&[]))?;
        let u = |t: u16| nl::find(&data, t).and_then(nl::be32);
        let value = |t: u16| -> Option<Vec<u8>> {
            let inner = nl::attrs(nl::find(&data, t)?).ok()?;
            nl::find(&inner, NFTA_DATA_VALUE).map(<[u8]>::to_vec)
        };
        let other = || Expr::Other(name.clone());
        let e = match name.as_str() {
            "meta" => match (u(1), u(2), u(3)) {
                (Some(dreg), Some(key), None) => Expr::Meta { key, dreg },
                _ => other(),
            },
            "ct" => match (u(1), u(2), u(3), u(4)) {
                (Some(dreg), Some(key), None, None) => Expr::Ct { key, dreg },
                _ => other(),
            },
            "payload" => match (u(1), u(2), u(3), u(4), u(5)) {
                (Some(dreg), Some(base), Some(offset), Some(len), None) => Expr::Payload {
                    base,
                    offset,
                    len,
                    dreg,
                },
                _ => other(),
            },
            "cmp" => match (u(1), u(2), value(3)) {
                (Some(sreg), Some(op), Some(data)) => Expr::Cmp { sreg, op, data },
                _ => other(),
            },
            // NFTA_BITWISE_OP 0 is mask-and-xor, the only one written here.
            "bitwise" => match (u(1), u(2), u(3), value(4), value(5), u(6).unwrap_or(0)) {
                (Some(sreg), Some(dreg), Some(len), Some(mask), Some(xor), 0) => Expr::Bitwise {
                    sreg,
                    dreg,
                    len,
                    mask,
                    xor,
                },
                _ => other(),
            },
            "range" => match (u(1), u(2), value(3), value(4)) {
                (Some(sreg), Some(op), Some(from), Some(to)) => Expr::Range { sreg, op, from, to },
                _ => other(),
            },
            "immediate" => {
                let code = nl::find(&data, 2)
                    .and_then(|d| nl::attrs(d).ok())
                    .and_then(|d| nl::find(&d, NFTA_DATA_VERDICT).and_then(|v| nl::attrs(v).ok()))
                    .and_then(|v| {
                        // A jump/goto carries a chain: not one of ours.
                        if nl::find(&v, 2).is_some() {
                            None
                        } else {
                            nl::find(&v, NFTA_VERDICT_CODE).and_then(nl::be32)
                        }
                    });
                match (u(1), code) {
                    (Some(NFT_REG_VERDICT), Some(code)) => Expr::Verdict(code),
                    _ => other(),
                }
            }
            // The kernel dumps an ICMP code only for the ICMP types.
            "reject" => match (u(NFTA_REJECT_TYPE), nl::find(&data, NFTA_REJECT_ICMP_CODE)) {
                (Some(kind), None) => Expr::Reject(kind),
                _ => other(),
            },
            _ => other(),
        };
        Ok(e)
    }
}

/// Encodes a rule's expressions as the `NFTA_RULE_EXPRESSIONS` attribute.
pub(crate) fn encode_exprs(m: &mut Msg, exprs: &[Expr]) {
    m.begin(nl::NFTA_RULE_EXPRESSIONS);
    for e in exprs {
        e.encode(m);
    }
    m.end();
}

/// Decodes an `NFTA_RULE_EXPRESSIONS` attribute.
pub(crate) fn decode_exprs(data: &[u8]) -> Result<Vec<Expr>, String> {
    nl::attrs(data)?
        .into_iter()
        .filter(|(t, _)| *t == nl::NFTA_LIST_ELEM)
        .map(|(_, e)| Expr::decode(e))
        .collect()
}

/// The IP family an atom is restricted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One kernel rule of a user rule: at most one source prefix, one L4 protocol and one
/// destination port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Atom {
    pub family: Option<Family>,
    /// `None`: any source of `family` (a /0 prefix is stored as `None`).
    pub source: Option<Prefix>,
    /// IP protocol number.
    pub l4: Option<u8>,
    pub dport: Option<PortRange>,
    pub verdict: Verdict,
}

/// What one kernel rule in chain `input` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// `ct state established,related accept`
    Established,
    /// `iif lo meta mark != ROUTED_MARK accept`: loopback, except the connections a
    /// local relay makes from a client's address ([`crate::ROUTED_MARK`]), which the
    /// user rules judge as the client's.
    Loopback,
    /// `iif lo accept`: the loopback rule of agents before [`crate::ROUTED_MARK`]. Never
    /// written; read back as a built-in rule to replace (not as a rule added by hand).
    LegacyLoopback,
    /// `icmpv6 type 133-136 accept` (router and neighbour solicitation/advertisement)
    NeighbourDiscovery,
    User(Atom),
    /// `meta mark ROUTED_MARK meta l4proto tcp reject with tcp reset`, after the user
    /// rules: a relay's connection the rules do not accept is refused at once (the relay
    /// answers its client then) instead of timing out. Everything else no rule accepts
    /// is still dropped by the chain's policy.
    RoutedReject,
}

impl Atom {
    /// The one-source, one-port-range rule that expands to exactly this atom (`None`: a
    /// protocol the rule model has no name for). `expand(&a.to_rule()?) == [a]`.
    pub fn to_rule(&self) -> Option<InboundRule> {
        let sources = match (self.source, self.family) {
            (Some(p), _) => vec![p],
            (None, Some(Family::Ipv4)) => vec![Prefix::any_ipv4()],
            (None, Some(Family::Ipv6)) => vec![Prefix::any_ipv6()],
            (None, None) => Vec::new(),
        };
        let protocol = match (self.l4, self.family) {
            (None, _) => Protocol::Any,
            (Some(IPPROTO_TCP), _) => Protocol::Tcp,
            (Some(IPPROTO_UDP), _) => Protocol::Udp,
            (Some(IPPROTO_ICMP), Some(Family::Ipv4)) => Protocol::Icmp,
            (Some(IPPROTO_ICMPV6), Some(Family::Ipv6)) => Protocol::Icmp,
            _ => return None,
        };
        let ports = match protocol {
            Protocol::Tcp | Protocol::Udp => self.dport.into_iter().collect(),
            _ if self.dport.is_some() => return None,
            _ => Vec::new(),
        };
        let rule = InboundRule {
            sources,
            protocol,
            ports,
            verdict: self.verdict,
        };
        rule.validate().is_ok().then_some(rule)
    }
}

/// Whether two rulesets make the same kernel rules (in the same order).
pub fn same_rules(a: &crate::model::Ruleset, b: &crate::model::Ruleset) -> bool {
    let atoms =
        |r: &crate::model::Ruleset| -> Vec<Atom> { r.rules.iter().flat_map(expand).collect() };
    atoms(a) == atoms(b)
}

impl fmt::Display for Atom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.l4 {
            None => "any".to_owned(),
            Some(IPPROTO_TCP) => "tcp".to_owned(),
            Some(IPPROTO_UDP) => "udp".to_owned(),
            Some(IPPROTO_ICMP) => "icmp".to_owned(),
            Some(IPPROTO_ICMPV6) => "icmpv6".to_owned(),
            Some(p) => format!("proto {p}"),
        };
        write!(f, "{proto}")?;
        if let Some(p) = self.dport {
            write!(f, " {p}")?;
        }
        match (self.source, self.family) {
            (Some(s), _) => write!(f, " from {s}")?,
            (None, Some(Family::Ipv4)) if self.l4 != Some(IPPROTO_ICMP) => {
                write!(f, " from 0.0.0.0/0")?
            }
            (None, Some(Family::Ipv6)) if self.l4 != Some(IPPROTO_ICMPV6) => {
                write!(f, " from ::/0")?
            }
            _ => {}
        }
        write!(f, " {}", self.verdict)
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleKind::Established => f.write_str("ct state established,related accept"),
            RuleKind::Loopback => write!(f, "iif lo meta mark != {:#x} accept", crate::ROUTED_MARK),
            RuleKind::LegacyLoopback => f.write_str("iif lo accept"),
            RuleKind::NeighbourDiscovery => f.write_str("icmpv6 neighbour discovery accept"),
            RuleKind::User(a) => a.fmt(f),
            RuleKind::RoutedReject => write!(
                f,
                "meta mark {:#x} tcp reject with tcp reset",
                crate::ROUTED_MARK
            ),
        }
    }
}

/// The atoms of one user rule, in order.
pub(crate) fn expand(rule: &InboundRule) -> Vec<Atom> {
    let sources: Vec<Option<Prefix>> = if rule.sources.is_empty() {
        vec![None]
    } else {
        rule.sources.iter().copied().map(Some).collect()
    };
    let ports: Vec<Option<PortRange>> = if rule.ports.is_empty() {
        vec![None]
    } else {
        rule.ports.iter().copied().map(Some).collect()
    };
    let mut out = Vec::new();
    for src in sources {
        let fam = src.map(|p| {
            if p.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            }
        });
        let source = src.filter(|p| !p.is_empty());
        let mut push = |family: Option<Family>, l4: Option<u8>, dport: Option<PortRange>| {
            out.push(Atom {
                family,
                source,
                l4,
                dport,
                verdict: rule.verdict,
            })
        };
        match rule.protocol {
            Protocol::Tcp | Protocol::Udp => {
                let l4 = if rule.protocol == Protocol::Tcp {
                    IPPROTO_TCP
                } else {
                    IPPROTO_UDP
                };
                for p in &ports {
                    push(fam, Some(l4), *p);
                }
            }
            Protocol::Icmp => match fam {
                Some(Family::Ipv4) => push(fam, Some(IPPROTO_ICMP), None),
                Some(Family::Ipv6) => push(fam, Some(IPPROTO_ICMPV6), None),
                None => {
                    push(Some(Family::Ipv4), Some(IPPROTO_ICMP), None);
                    push(Some(Family::Ipv6), Some(IPPROTO_ICMPV6), None);
                }
            },
            Protocol::Any => push(fam, None, None),
        }
    }
    out
}

/// `meta KEY OP VALUE`: the meta key loaded into register 1 and compared.
fn meta_cmp(key: u32, op: u32, value: Vec<u8>) -> [Expr; 2] {
    [
        Expr::Meta {
            key,
            dreg: NFT_REG_1,
        },
        Expr::Cmp {
            sreg: NFT_REG_1,
            op,
            data: value,
        },
    ]
}

fn meta_eq(key: u32, value: Vec<u8>) -> [Expr; 2] {
    meta_cmp(key, NFT_CMP_EQ, value)
}

fn verdict_code(v: Verdict) -> u32 {
    match v {
        Verdict::Accept => nl::NF_ACCEPT,
        Verdict::Drop => nl::NF_DROP,
    }
}

/// The expressions of one rule kind.
pub(crate) fn encode_kind(kind: &RuleKind) -> Vec<Expr> {
    let mut e = Vec::new();
    match kind {
        RuleKind::Established => {
            e.push(Expr::Ct {
                key: NFT_CT_STATE,
                dreg: NFT_REG_1,
            });
            e.push(Expr::Bitwise {
                sreg: NFT_REG_1,
                dreg: NFT_REG_1,
                len: 4,
                mask: CT_ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
            e.push(Expr::Cmp {
                sreg: NFT_REG_1,
                op: NFT_CMP_NEQ,
                data: vec![0; 4],
            });
            e.push(Expr::Verdict(nl::NF_ACCEPT));
        }
        RuleKind::Loopback | RuleKind::LegacyLoopback => {
            e.extend(meta_eq(
                NFT_META_IIF,
                LOOPBACK_IFINDEX.to_ne_bytes().to_vec(),
            ));
            // The current rule leaves the request router's connections to the user rules.
            if *kind == RuleKind::Loopback {
                e.extend(meta_cmp(
                    NFT_META_MARK,
                    NFT_CMP_NEQ,
                    crate::ROUTED_MARK.to_ne_bytes().to_vec(),
                ));
            }
            e.push(Expr::Verdict(nl::NF_ACCEPT));
        }
        RuleKind::NeighbourDiscovery => {
            e.extend(meta_eq(NFT_META_NFPROTO, vec![nl::NFPROTO_IPV6]));
            e.extend(meta_eq(NFT_META_L4PROTO, vec![IPPROTO_ICMPV6]));
            e.push(Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 0,
                len: 1,
                dreg: NFT_REG_1,
            });
            e.push(Expr::Range {
                sreg: NFT_REG_1,
                op: NFT_RANGE_EQ,
                from: vec![ND_TYPES.0],
                to: vec![ND_TYPES.1],
            });
            e.push(Expr::Verdict(nl::NF_ACCEPT));
        }
        RuleKind::RoutedReject => {
            e.extend(meta_eq(
                NFT_META_MARK,
                crate::ROUTED_MARK.to_ne_bytes().to_vec(),
            ));
            e.extend(meta_eq(NFT_META_L4PROTO, vec![IPPROTO_TCP]));
            e.push(Expr::Reject(NFT_REJECT_TCP_RST));
        }
        RuleKind::User(a) => {
            if let Some(f) = a.family {
                let p = match f {
                    Family::Ipv4 => nl::NFPROTO_IPV4,
                    Family::Ipv6 => nl::NFPROTO_IPV6,
                };
                e.extend(meta_eq(NFT_META_NFPROTO, vec![p]));
            }
            if let Some(s) = a.source {
                let (offset, len) = if s.is_ipv4() { (12, 4) } else { (8, 16) };
                e.push(Expr::Payload {
                    base: NFT_PAYLOAD_NETWORK_HEADER,
                    offset,
                    len,
                    dreg: NFT_REG_1,
                });
                if s.len() < s.max_len() {
                    e.push(Expr::Bitwise {
                        sreg: NFT_REG_1,
                        dreg: NFT_REG_1,
                        len,
                        mask: s.mask_bytes(),
                        xor: vec![0; len as usize],
                    });
                }
                e.push(Expr::Cmp {
                    sreg: NFT_REG_1,
                    op: NFT_CMP_EQ,
                    data: s.addr_bytes(),
                });
            }
            if let Some(p) = a.l4 {
                e.extend(meta_eq(NFT_META_L4PROTO, vec![p]));
            }
            if let Some(r) = a.dport {
                e.push(Expr::Payload {
                    base: NFT_PAYLOAD_TRANSPORT_HEADER,
                    offset: 2,
                    len: 2,
                    dreg: NFT_REG_1,
                });
                if r.start == r.end {
                    e.push(Expr::Cmp {
                        sreg: NFT_REG_1,
                        op: NFT_CMP_EQ,
                        data: r.start.to_be_bytes().to_vec(),
                    });
                } else {
                    e.push(Expr::Range {
                        sreg: NFT_REG_1,
                        op: NFT_RANGE_EQ,
                        from: r.start.to_be_bytes().to_vec(),
                        to: r.end.to_be_bytes().to_vec(),
                    });
                }
            }
            e.push(Expr::Verdict(verdict_code(a.verdict)));
        }
    }
    e
}

/// The rule kind of dumped expressions, if they are exactly one of ours.
pub(crate) fn decode_kind(exprs: &[Expr]) -> Option<RuleKind> {
    let kind = match exprs.first()? {
        Expr::Ct { .. } => RuleKind::Established,
        Expr::Meta {
            key: NFT_META_IIF, ..
        } if exprs.len() == 3 => RuleKind::LegacyLoopback,
        Expr::Meta {
            key: NFT_META_IIF, ..
        } => RuleKind::Loopback,
        Expr::Meta {
            key: NFT_META_MARK, ..
        } => RuleKind::RoutedReject,
        _ => {
            let nd = RuleKind::NeighbourDiscovery;
            if encode_kind(&nd) == exprs {
                return Some(nd);
            }
            RuleKind::User(parse_atom(exprs)?)
        }
    };
    // Canonical: only what re-encodes to exactly these expressions is ours.
    (encode_kind(&kind) == exprs).then_some(kind)
}

fn parse_atom(exprs: &[Expr]) -> Option<Atom> {
    let mut i = 0;
    let mut family = None;
    let mut source = None;
    let mut l4 = None;
    let mut dport = None;
    let at = |i: usize| exprs.get(i);
    let meta_cmp = |i: usize, want: u32| match (at(i), at(i + 1)) {
        (Some(Expr::Meta { key, .. }), Some(Expr::Cmp { data, .. })) if *key == want => {
            Some(data.clone())
        }
        _ => None,
    };
    if let Some(d) = meta_cmp(i, NFT_META_NFPROTO) {
        family = Some(match d.as_slice() {
            [nl::NFPROTO_IPV4] => Family::Ipv4,
            [nl::NFPROTO_IPV6] => Family::Ipv6,
            _ => return None,
        });
        i += 2;
    }
    if let Some(Expr::Payload {
        base: NFT_PAYLOAD_NETWORK_HEADER,
        len,
        ..
    }) = at(i)
    {
        let len = *len as usize;
        i += 1;
        let mut plen = (len * 8) as u8;
        if let Some(Expr::Bitwise { mask, .. }) = at(i) {
            plen = mask.iter().map(|b| b.leading_ones()).sum::<u32>() as u8;
            i += 1;
        }
        match at(i) {
            Some(Expr::Cmp { data, .. }) if data.len() == len => {
                source = Some(Prefix::from_bytes_masked(data, plen));
            }
            _ => return None,
        }
        i += 1;
    }
    if let Some(d) = meta_cmp(i, NFT_META_L4PROTO) {
        l4 = Some(*d.first()?);
        i += 2;
    }
    if let Some(Expr::Payload {
        base: NFT_PAYLOAD_TRANSPORT_HEADER,
        ..
    }) = at(i)
    {
        i += 1;
        let port = |d: &[u8]| Some(u16::from_be_bytes(d.try_into().ok()?));
        dport = Some(match at(i) {
            Some(Expr::Cmp { data, .. }) => PortRange::single(port(data)?),
            // A reversed range (possible over raw netlink, not from nft) is no rule of
            // the model: foreign.
            Some(Expr::Range { from, to, .. }) => match (port(from)?, port(to)?) {
                (start, end) if start <= end => PortRange { start, end },
                _ => return None,
            },
            _ => return None,
        });
        i += 1;
    }
    let verdict = match at(i)? {
        Expr::Verdict(nl::NF_ACCEPT) => Verdict::Accept,
        Expr::Verdict(nl::NF_DROP) => Verdict::Drop,
        _ => return None,
    };
    (i + 1 == exprs.len()).then_some(Atom {
        family,
        source,
        l4,
        dport,
        verdict,
    })
}

/// A readable form of expressions that are not one of our rule kinds.
pub(crate) fn describe(exprs: &[Expr]) -> String {
    let parts: Vec<String> = exprs
        .iter()
        .map(|e| match e {
            Expr::Meta { key, .. } => format!("meta key {key}"),
            Expr::Ct { key, .. } => format!("ct key {key}"),
            Expr::Payload {
                base, offset, len, ..
            } => {
                format!("payload base {base} offset {offset} len {len}")
            }
            Expr::Cmp { op, data, .. } => format!("cmp op {op} {}", hex(data)),
            Expr::Bitwise { mask, .. } => format!("bitwise mask {}", hex(mask)),
            Expr::Range { from, to, .. } => format!("range {}-{}", hex(from), hex(to)),
            Expr::Verdict(nl::NF_ACCEPT) => "accept".to_owned(),
            Expr::Verdict(nl::NF_DROP) => "drop".to_owned(),
            Expr::Verdict(c) => format!("verdict {}", *c as i32),
            Expr::Reject(NFT_REJECT_TCP_RST) => "reject with tcp reset".to_owned(),
            Expr::Reject(t) => format!("reject type {t}"),
            Expr::Other(n) => n.clone(),
        })
        .collect();
    parts.join(" ")
}

fn hex(d: &[u8]) -> String {
    let mut s = String::from("0x");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &[&str], p: Protocol, ports: &[&str], v: Verdict) -> InboundRule {
        InboundRule {
            sources: s.iter().map(|x| x.parse().unwrap()).collect(),
            protocol: p,
            ports: ports.iter().map(|x| x.parse().unwrap()).collect(),
            verdict: v,
        }
    }

    /// One rule of every shape: several sources and ports, ICMP with and without a
    /// source, a /0 source, any protocol.
    fn every_shape() -> Vec<InboundRule> {
        vec![
            rule(
                &["198.18.0.5/32", "fd00::/64"],
                Protocol::Tcp,
                &["8080", "9000-9100"],
                Verdict::Accept,
            ),
            rule(&[], Protocol::Icmp, &[], Verdict::Drop),
            rule(&["198.18.0.0/15"], Protocol::Icmp, &[], Verdict::Accept),
            rule(&["0.0.0.0/0"], Protocol::Any, &[], Verdict::Accept),
            rule(&[], Protocol::Udp, &["53"], Verdict::Accept),
            rule(&[], Protocol::Any, &[], Verdict::Drop),
        ]
    }

    #[test]
    fn every_kind_decodes_to_itself() {
        let rules = every_shape();
        let mut kinds = vec![
            RuleKind::Established,
            RuleKind::Loopback,
            RuleKind::LegacyLoopback,
            RuleKind::NeighbourDiscovery,
            RuleKind::RoutedReject,
        ];
        for r in &rules {
            kinds.extend(expand(r).into_iter().map(RuleKind::User));
        }
        assert_eq!(kinds.len(), 5 + 4 + 2 + 1 + 1 + 1 + 1);
        for k in kinds {
            let e = encode_kind(&k);
            // Through the wire format and back.
            let mut m = Msg::new(0, 0, 0, 0, 0);
            encode_exprs(&mut m, &e);
            let bytes = m.finish();
            let a = nl::attrs(&bytes[nl::NLMSG_HDRLEN + nl::NFGENMSG_LEN..]).unwrap();
            let back = decode_exprs(nl::find(&a, nl::NFTA_RULE_EXPRESSIONS).unwrap()).unwrap();
            assert_eq!(back, e, "{k}");
            assert_eq!(decode_kind(&back), Some(k), "{k}");
        }
    }

    /// Found by the `nft_rule_dump` fuzz target: a port range written reversed over raw
    /// netlink (nft refuses it) read back as a user rule the model cannot write, which
    /// the agent would then keep as a hand change and fail to apply on every reconcile.
    #[test]
    fn a_reversed_port_range_is_a_foreign_rule() {
        let a = Atom {
            family: Some(Family::Ipv6),
            source: Some("fd00::/64".parse().unwrap()),
            l4: Some(IPPROTO_TCP),
            dport: Some(PortRange {
                start: 9000,
                end: 9100,
            }),
            verdict: Verdict::Accept,
        };
        let mut e = encode_kind(&RuleKind::User(a));
        assert_eq!(decode_kind(&e), Some(RuleKind::User(a)));
        for x in &mut e {
            if let Expr::Range { from, to, .. } = x {
                std::mem::swap(from, to);
            }
        }
        assert_eq!(decode_kind(&e), None, "reversed: foreign");
        let reversed = Atom {
            dport: Some(PortRange {
                start: 9100,
                end: 9000,
            }),
            ..a
        };
        assert_eq!(reversed.to_rule(), None);
    }

    #[test]
    fn every_atom_reads_back_as_a_rule_that_expands_to_it() {
        let mut rules = every_shape();
        rules.push(rule(&["::/0"], Protocol::Udp, &[], Verdict::Drop));
        let whole = crate::model::Ruleset {
            rules: rules.clone(),
        };
        let mut back = Vec::new();
        for a in rules.iter().flat_map(expand) {
            let r = a.to_rule().unwrap_or_else(|| panic!("{a} has no rule"));
            assert_eq!(expand(&r), vec![a], "{a} -> {r}");
            back.push(r);
        }
        let back = crate::model::Ruleset { rules: back };
        assert!(same_rules(&whole, &back));
        // A rule left out is a different ruleset.
        let mut fewer = back.clone();
        fewer.rules.remove(2);
        assert!(!same_rules(&whole, &fewer));
        // A protocol the model has no name for is not a rule.
        let odd = Atom {
            family: Some(Family::Ipv4),
            source: None,
            l4: Some(132),
            dport: None,
            verdict: Verdict::Accept,
        };
        assert_eq!(odd.to_rule(), None);
    }

    #[test]
    fn foreign_expressions_are_not_ours() {
        let mut e = encode_kind(&RuleKind::Loopback);
        e.insert(2, Expr::Other("counter".into()));
        assert_eq!(decode_kind(&e), None);
        // The loopback rule of agents before ROUTED_MARK (`iif lo accept`, which let the
        // request router's connections past the node's rules): the loopback rule without
        // its mark test, read as the legacy built-in (to replace), not as a loopback rule.
        let mut e = encode_kind(&RuleKind::Loopback);
        e.drain(2..4);
        assert_eq!(e, encode_kind(&RuleKind::LegacyLoopback));
        assert_eq!(decode_kind(&e), Some(RuleKind::LegacyLoopback));
        let mut e = encode_kind(&RuleKind::User(
            expand(&rule(&[], Protocol::Tcp, &["80"], Verdict::Accept))[0],
        ));
        if let Some(Expr::Cmp { data, .. }) = e.get_mut(3) {
            data.push(0);
        }
        assert_eq!(decode_kind(&e), None);
    }
}

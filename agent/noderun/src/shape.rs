//! Egress limits of a node (the TDL connections' `bandwidth`): on the node's device, inside
//! its namespace, an htb root qdisc `1:` with one class `1:<0x10+i>` per limit (rate = ceil
//! = the limit) and u32 filters sending packets to the limit's destination prefixes into
//! their class (longest prefix first; IPv4 at priority 1, IPv6 at 2). Other traffic
//! matches no filter and htb's default class `1:0` does not exist, so htb sends it
//! directly, unshaped.
//!
//! All by rtnetlink (netlink-packet-route's messages; htb's options, which it does not
//! model, as raw attributes), never by running `tc`. Idempotent: the current qdisc, classes
//! and filters are read back and nothing is touched when they already match.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcU32Key, TcU32Selector,
    TcU32SelectorFlags,
};
use rtnetlink::packet_utils::nla::{DefaultNla, Nla as _};
use serde::{Deserialize, Serialize};

/// One limit: traffic to any of `destinations` (CIDR prefixes or addresses) shares
/// `bits_per_second`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressLimit {
    pub destinations: Vec<String>,
    pub bits_per_second: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("egress limit {index}: {what}")]
    Invalid { index: usize, what: String },
    #[error("namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace {netns}: no device {dev:?}")]
    NoDevice { netns: PathBuf, dev: String },
    #[error("namespace {netns} dev {dev}: {op}: {source}")]
    Netlink {
        netns: PathBuf,
        dev: String,
        op: String,
        source: std::io::Error,
    },
}

const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_LINKLAYER_ETHERNET: u8 = 1;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ROOT_MAJOR: u16 = 1;
const FIRST_CLASS: u16 = 0x10;
/// At most this many limits (class minors stay below 0x10 + this).
const MAX_LIMITS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Filter {
    prio: u16,
    minor: u16,
    /// (mask, val, off) as the kernel keeps them.
    keys: Vec<(u32, u32, i32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Plan {
    /// (minor, bytes per second).
    classes: Vec<(u16, u64)>,
    filters: Vec<Filter>,
}

fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, l) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an address or prefix"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match l {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
    };
    Ok((addr, len))
}

fn mask_of(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits.min(32))
    }
}

/// u32 keys matching destination `addr/len` (values as network-order bytes in a u32).
fn keys(addr: IpAddr, len: u8) -> Vec<(u32, u32, i32)> {
    match addr {
        IpAddr::V4(v4) => {
            let mask = mask_of(u32::from(len));
            let val = u32::from(v4) & mask;
            vec![(
                u32::from_ne_bytes(mask.to_be_bytes()),
                u32::from_ne_bytes(val.to_be_bytes()),
                16,
            )]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut out = Vec::new();
            for w in 0..4usize {
                let covered = u32::from(len).saturating_sub(32 * w as u32).min(32);
                if covered == 0 {
                    continue;
                }
                let mask = mask_of(covered);
                let word = u32::from_be_bytes([o[4 * w], o[4 * w + 1], o[4 * w + 2], o[4 * w + 3]]);
                out.push((
                    u32::from_ne_bytes(mask.to_be_bytes()),
                    u32::from_ne_bytes((word & mask).to_be_bytes()),
                    24 + 4 * w as i32,
                ));
            }
            if out.is_empty() {
                out.push((0, 0, 24));
            }
            out
        }
    }
}

fn plan(limits: &[EgressLimit]) -> Result<Plan, ShapeError> {
    if limits.len() > MAX_LIMITS {
        return Err(ShapeError::Invalid {
            index: MAX_LIMITS,
            what: format!("at most {MAX_LIMITS} limits per device"),
        });
    }
    let mut p = Plan::default();
    let mut prefixes = Vec::new();
    for (i, l) in limits.iter().enumerate() {
        let invalid = |what: String| ShapeError::Invalid { index: i, what };
        if l.bits_per_second < 8 {
            return Err(invalid(format!(
                "{} bit/s is not a rate",
                l.bits_per_second
            )));
        }
        if l.destinations.is_empty() {
            return Err(invalid("no destinations".into()));
        }
        let minor = FIRST_CLASS + i as u16;
        p.classes.push((minor, l.bits_per_second / 8));
        for d in &l.destinations {
            let (addr, len) = parse_prefix(d).map_err(invalid)?;
            prefixes.push((addr, len, minor));
        }
    }
    // Longest prefix first: u32 takes the first match in insertion order.
    prefixes.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut seen = std::collections::BTreeSet::new();
    for (addr, len, minor) in prefixes {
        let prio = if addr.is_ipv4() { 1 } else { 2 };
        let keys = keys(addr, len);
        if seen.insert((prio, keys.clone())) {
            p.filters.push(Filter { prio, minor, keys });
        }
    }
    Ok(p)
}

fn ratespec(bytes: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = TC_LINKLAYER_ETHERNET;
    r[8..12].copy_from_slice(&(bytes.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    r
}

/// `struct tc_htb_opt` for a class at `bytes` per second (rate = ceil).
fn htb_opt(bytes: u64) -> Vec<u8> {
    // Burst: 10 ms at the rate, at least four full frames; in 64 ns ticks (PSCHED_SHIFT 6).
    let burst = (bytes / 100).max(4 * 1600);
    let ticks = (u128::from(burst) * 1_000_000_000 / u128::from(bytes.max(1)) / 64)
        .min(u128::from(u32::MAX)) as u32;
    let quantum = (bytes / 10).clamp(1600, 200_000) as u32;
    let mut v = Vec::with_capacity(44);
    v.extend_from_slice(&ratespec(bytes));
    v.extend_from_slice(&ratespec(bytes));
    for x in [ticks, ticks, quantum, 0, 0] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v
}

/// `struct tc_htb_glob`: version 3, r2q 10, default class 0 (none: unclassified traffic
/// goes direct).
fn htb_glob() -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    for x in [3u32, 10, 0, 0, 0] {
        v.extend_from_slice(&x.to_ne_bytes());
    }
    v
}

struct Conn {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
    netns: PathBuf,
    dev: String,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    fn err(&self, op: impl Into<String>, source: std::io::Error) -> ShapeError {
        ShapeError::Netlink {
            netns: self.netns.clone(),
            dev: self.dev.clone(),
            op: op.into(),
            source,
        }
    }

    /// Sends one request; collects dump answers; a NACK is an error.
    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, ShapeError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut stream = handle
            .request(req)
            .map_err(|e| self.err(op, std::io::Error::other(e.to_string())))?;
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(self.err(op, e.to_io())),
                NetlinkPayload::InnerMessage(m) => out.push(m),
                _ => {}
            }
        }
        Ok(out)
    }
}

fn tc_header(index: i32, handle: TcHandle, parent: TcHandle, info: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index);
    m.header.handle = handle;
    m.header.parent = parent;
    m.header.info = info;
    m
}

fn h(major: u16, minor: u16) -> TcHandle {
    TcHandle { major, minor }
}

fn kind_of(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

/// The nested attributes of an option the library keeps as raw bytes.
fn nested(m: &TcMessage) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for a in &m.attributes {
        let TcAttribute::Options(opts) = a else {
            continue;
        };
        for o in opts {
            let TcOption::Other(raw) = o else { continue };
            let mut buf = vec![0u8; raw.value_len()];
            raw.emit_value(&mut buf);
            let mut i = 0;
            while i + 4 <= buf.len() {
                let len = u16::from_ne_bytes([buf[i], buf[i + 1]]) as usize;
                let ty = u16::from_ne_bytes([buf[i + 2], buf[i + 3]]) & 0x3fff;
                if len < 4 || i + len > buf.len() {
                    break;
                }
                out.push((ty, buf[i + 4..i + len].to_vec()));
                i += (len + 3) & !3;
            }
        }
    }
    out
}

async fn connect(netns: &Path, dev: &str) -> Result<(Conn, i32), ShapeError> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = crate::netns::run_in(netns, move || {
        let _entered = rt.enter();
        rtnetlink::new_connection()
    })
    .await
    .map_err(|source| ShapeError::Netns {
        path: netns.to_owned(),
        source,
    })?;
    let task = tokio::spawn(conn);
    let c = Conn {
        handle,
        task,
        netns: netns.to_owned(),
        dev: dev.to_string(),
    };
    let mut links = c.handle.link().get().match_name(dev.to_string()).execute();
    let index = match links.try_next().await {
        Ok(Some(l)) => l.header.index as i32,
        Ok(None) | Err(_) => {
            return Err(ShapeError::NoDevice {
                netns: netns.to_owned(),
                dev: dev.to_string(),
            });
        }
    };
    Ok((c, index))
}

/// What is installed now, if the root qdisc is our htb.
async fn current(c: &Conn, index: i32) -> Result<Option<Plan>, ShapeError> {
    let dump = NLM_F_REQUEST | NLM_F_DUMP;
    let qdiscs = c
        .request(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::with_index(index)),
            dump,
            "dumping qdiscs",
        )
        .await?;
    let ours = qdiscs.iter().any(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q) => {
            q.header.index == index
                && q.header.parent == TcHandle::ROOT
                && q.header.handle == h(ROOT_MAJOR, 0)
                && kind_of(q) == Some("htb")
        }
        _ => false,
    });
    if !ours {
        return Ok(None);
    }
    let mut plan = Plan::default();
    let classes = c
        .request(
            RouteNetlinkMessage::GetTrafficClass(tc_header(
                index,
                TcHandle::UNSPEC,
                TcHandle::UNSPEC,
                0,
            )),
            dump,
            "dumping classes",
        )
        .await?;
    for m in classes {
        let RouteNetlinkMessage::NewTrafficClass(cl) = m else {
            continue;
        };
        if cl.header.index != index
            || cl.header.handle.major != ROOT_MAJOR
            || kind_of(&cl) != Some("htb")
        {
            continue;
        }
        let attrs = nested(&cl);
        let mut rate = attrs
            .iter()
            .find(|(t, v)| *t == TCA_HTB_PARMS && v.len() >= 12)
            .map_or(0, |(_, v)| {
                u64::from(u32::from_ne_bytes([v[8], v[9], v[10], v[11]]))
            });
        if let Some((_, v)) = attrs
            .iter()
            .find(|(t, v)| *t == TCA_HTB_RATE64 && v.len() == 8)
        {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            rate = u64::from_ne_bytes(b);
        }
        plan.classes.push((cl.header.handle.minor, rate));
    }
    plan.classes.sort();
    let filters = c
        .request(
            RouteNetlinkMessage::GetTrafficFilter(tc_header(
                index,
                TcHandle::UNSPEC,
                h(ROOT_MAJOR, 0),
                0,
            )),
            dump,
            "dumping filters",
        )
        .await?;
    for m in filters {
        let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
            continue;
        };
        let mut minor = None;
        let mut keys = None;
        for a in &f.attributes {
            let TcAttribute::Options(opts) = a else {
                continue;
            };
            for o in opts {
                match o {
                    TcOption::U32(TcFilterU32Option::ClassId(id)) => minor = Some(id.minor),
                    TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                        keys = Some(
                            sel.keys
                                .iter()
                                .map(|k| (k.mask, k.val, k.off))
                                .collect::<Vec<_>>(),
                        );
                    }
                    _ => {}
                }
            }
        }
        if let (Some(minor), Some(keys)) = (minor, keys) {
            plan.filters.push(Filter {
                prio: (f.header.info >> 16) as u16,
                minor,
                keys,
            });
        } else if kind_of(&f) != Some("u32") {
            // A filter we did not make: not our state.
            plan.filters.push(Filter {
                prio: 0,
                minor: 0,
                keys: Vec::new(),
            });
        }
    }
    Ok(Some(plan))
}

fn sorted(p: &Plan) -> Plan {
    let mut p = p.clone();
    p.classes.sort();
    p.filters.sort();
    p
}

async fn delete_root(c: &Conn, index: i32) -> Result<(), ShapeError> {
    let msg = tc_header(index, TcHandle::UNSPEC, TcHandle::ROOT, 0);
    match c
        .request(
            RouteNetlinkMessage::DelQueueDiscipline(msg),
            NLM_F_REQUEST | NLM_F_ACK,
            "deleting the root qdisc",
        )
        .await
    {
        Ok(_) => Ok(()),
        // Nothing to delete (the default qdisc).
        Err(ShapeError::Netlink { source, .. })
            if matches!(
                source.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Installs `limits` as the egress shaping of `dev` in namespace `netns`; an empty list
/// removes it. Idempotent.
pub async fn shape(netns: &Path, dev: &str, limits: &[EgressLimit]) -> Result<(), ShapeError> {
    let want = plan(limits)?;
    let (c, index) = connect(netns, dev).await?;
    let have = current(&c, index).await?;
    if limits.is_empty() {
        if have.is_some() {
            delete_root(&c, index).await?;
        }
        return Ok(());
    }
    if have.as_ref().map(sorted) == Some(sorted(&want)) {
        return Ok(());
    }
    let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    if have.is_some() {
        delete_root(&c, index).await?;
    }
    let mut q = tc_header(index, h(ROOT_MAJOR, 0), TcHandle::ROOT, 0);
    q.attributes.push(TcAttribute::Kind("htb".into()));
    q.attributes.push(TcAttribute::Options(vec![TcOption::Other(
        DefaultNla::new(TCA_HTB_INIT, htb_glob()),
    )]));
    // A root qdisc of another kind is replaced.
    c.request(
        RouteNetlinkMessage::NewQueueDiscipline(q),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | rtnetlink::packet_core::NLM_F_REPLACE,
        "adding the htb root qdisc",
    )
    .await?;
    for (minor, bytes) in &want.classes {
        let mut m = tc_header(index, h(ROOT_MAJOR, *minor), h(ROOT_MAJOR, 0), 0);
        m.attributes.push(TcAttribute::Kind("htb".into()));
        let mut opts = vec![TcOption::Other(DefaultNla::new(
            TCA_HTB_PARMS,
            htb_opt(*bytes),
        ))];
        if *bytes > u64::from(u32::MAX) {
            opts.push(TcOption::Other(DefaultNla::new(
                TCA_HTB_RATE64,
                bytes.to_ne_bytes().to_vec(),
            )));
            opts.push(TcOption::Other(DefaultNla::new(
                TCA_HTB_CEIL64,
                bytes.to_ne_bytes().to_vec(),
            )));
        }
        m.attributes.push(TcAttribute::Options(opts));
        c.request(
            RouteNetlinkMessage::NewTrafficClass(m),
            create,
            &format!("adding class 1:{minor:x}"),
        )
        .await?;
    }
    for f in &want.filters {
        let proto = if f.prio == 1 { ETH_P_IP } else { ETH_P_IPV6 };
        let info = (u32::from(f.prio) << 16) | u32::from(proto.to_be());
        let mut m = tc_header(index, TcHandle::UNSPEC, h(ROOT_MAJOR, 0), info);
        m.attributes.push(TcAttribute::Kind("u32".into()));
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = f.keys.len() as u8;
        sel.keys = f
            .keys
            .iter()
            .map(|(mask, val, off)| {
                let mut k = TcU32Key::default();
                k.mask = *mask;
                k.val = *val;
                k.off = *off;
                k
            })
            .collect();
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::ClassId(h(ROOT_MAJOR, f.minor))),
            TcOption::U32(TcFilterU32Option::Selector(sel)),
        ]));
        c.request(
            RouteNetlinkMessage::NewTrafficFilter(m),
            create,
            &format!("adding a filter to 1:{:x}", f.minor),
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_longest_prefix_first_and_validates() {
        let p = plan(&[
            EgressLimit {
                destinations: vec!["198.18.0.0/15".into()],
                bits_per_second: 1_000_000,
            },
            EgressLimit {
                destinations: vec!["198.18.1.2".into(), "fd00::/8".into()],
                bits_per_second: 10_000_000,
            },
        ])
        .unwrap();
        assert_eq!(p.classes, vec![(0x10, 125_000), (0x11, 1_250_000)]);
        assert_eq!(p.filters[0].minor, 0x11);
        assert_eq!(
            p.filters[0].keys,
            vec![(u32::MAX, u32::from_ne_bytes([198, 18, 1, 2]), 16)]
        );
        let v6 = p.filters.iter().find(|f| f.prio == 2).unwrap();
        assert_eq!(
            v6.keys,
            vec![(
                u32::from_ne_bytes([0xff, 0, 0, 0]),
                u32::from_ne_bytes([0xfd, 0, 0, 0]),
                24
            )]
        );
        assert!(
            plan(&[EgressLimit {
                destinations: vec!["x".into()],
                bits_per_second: 8
            }])
            .is_err()
        );
        assert!(
            plan(&[EgressLimit {
                destinations: vec!["10.0.0.0/33".into()],
                bits_per_second: 8
            }])
            .is_err()
        );
        assert!(
            plan(&[EgressLimit {
                destinations: vec![],
                bits_per_second: 800
            }])
            .is_err()
        );
        assert!(
            plan(&[EgressLimit {
                destinations: vec!["10.0.0.1".into()],
                bits_per_second: 0
            }])
            .is_err()
        );
    }

    #[test]
    fn htb_structs_have_kernel_sizes() {
        assert_eq!(htb_opt(1_250_000).len(), 44);
        assert_eq!(htb_glob().len(), 20);
        // 10 Mbit/s: 12.5 kB burst = 10 ms = 156250 ticks of 64 ns.
        let o = htb_opt(1_250_000);
        assert_eq!(u32::from_ne_bytes([o[24], o[25], o[26], o[27]]), 156_250);
    }
}

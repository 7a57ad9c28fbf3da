//! Turns the kernel's cumulative per-flow state into delta flow records.
//!
//! The kernel keeps counters since a flow's entry was created. Each time the agent reads an
//! entry it reports what changed since its previous read of the same flow (same key and
//! same `first_seen_ns`, so a 5-tuple reused by a new connection starts over). Records are
//! deltas, so the controller can add them up in any order. The baseline of each flow is
//! also kept in the kernel (`FLOW_REPORTED`, pinned), and a restarted agent starts from it
//! ([`FlowTracker::with_baseline`]): see `datapath::pins` for why each byte is sent once.

use std::collections::{HashMap, HashSet};

/// The per-flow tables' hash: foldhash, seeded per process (SipHash of the 44-byte key
/// showed in profiles of short connections).
pub type FastHash = foldhash::fast::RandomState;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{
    FlowKey, FlowStats,
    flow::{DIR_IN, DIR_OUT, FAMILY_IPV4, PROTO_TCP, PROTO_UDP, state},
};
use weft_proto::v1::{FlowDirection, FlowRecord, Transport};

/// Where a flow was seen and how to date it.
pub struct RecordContext<'a> {
    pub workload: &'a str,
    pub interface: &'a str,
    /// `unix_ns = monotonic_ns + offset` (the kernel stamps CLOCK_MONOTONIC).
    pub mono_to_unix_offset_ns: i128,
}

/// The local address of a key as an `IpAddr`.
pub fn local_ip(key: &FlowKey) -> IpAddr {
    addr(key.family, &key.local_addr)
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

fn ip_bytes(family: u8, raw: &[u8; 16]) -> Vec<u8> {
    if family == FAMILY_IPV4 {
        raw[..4].to_vec()
    } else {
        raw.to_vec()
    }
}

/// What the agent last reported of each flow.
#[derive(Default)]
pub struct FlowTracker {
    seen: HashMap<FlowKey, FlowStats, FastHash>,
}

impl FlowTracker {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }

    /// A tracker that continues from what a previous agent reported (`FLOW_REPORTED`): a
    /// flow found here is not new, and its next record holds only what changed since.
    pub fn with_baseline(entries: impl IntoIterator<Item = (FlowKey, FlowStats)>) -> Self {
        Self {
            seen: entries.into_iter().collect(),
        }
    }

    /// Whether a baseline of `key` (any incarnation) is kept.
    pub fn knows(&self, key: &FlowKey) -> bool {
        self.seen.contains_key(key)
    }

    /// The record of what changed on `key` since the last call, or `None` when nothing did.
    /// With `ended`, the flow is forgotten after this record.
    pub fn update(
        &mut self,
        key: &FlowKey,
        cur: &FlowStats,
        ended: bool,
        ctx: &RecordContext<'_>,
    ) -> Option<FlowRecord> {
        let prev = self
            .seen
            .get(key)
            .filter(|p| p.first_seen_ns == cur.first_seen_ns);
        let first = prev.is_none();
        let p = prev.copied().unwrap_or(FlowStats::ZERO);
        let changed = first || ended || cur.packets != p.packets || cur.requests != p.requests;
        if ended {
            self.seen.remove(key);
        } else {
            self.seen.insert(*key, *cur);
        }
        if !changed {
            return None;
        }
        Some(build_record(key, &p, cur, first, ended, ctx))
    }

    /// Forgets flows no longer in the kernel map (evicted by the LRU without a final
    /// record); returns their keys.
    pub fn retain_live<S: std::hash::BuildHasher>(
        &mut self,
        live: &HashSet<FlowKey, S>,
    ) -> Vec<FlowKey> {
        let mut gone = Vec::new();
        self.seen.retain(|k, _| {
            let keep = live.contains(k);
            if !keep {
                gone.push(*k);
            }
            keep
        });
        gone
    }
}

fn to_unix(mono_ns: u64, offset: i128) -> u64 {
    (mono_ns as i128 + offset).clamp(0, u64::MAX as i128) as u64
}

fn build_record(
    key: &FlowKey,
    p: &FlowStats,
    cur: &FlowStats,
    first: bool,
    ended: bool,
    ctx: &RecordContext<'_>,
) -> FlowRecord {
    let d = |c: u64, o: u64| c.saturating_sub(o);
    let transport = match key.proto {
        PROTO_TCP => Transport::Tcp,
        PROTO_UDP => Transport::Udp,
        _ => Transport::Unspecified,
    };
    let direction = if cur.client_is_local != 0 {
        FlowDirection::Outbound
    } else {
        FlowDirection::Inbound
    };
    FlowRecord {
        workload: ctx.workload.to_owned(),
        interface: ctx.interface.to_owned(),
        transport: transport as i32,
        local_ip: ip_bytes(key.family, &key.local_addr),
        local_port: key.local_port as u32,
        remote_ip: ip_bytes(key.family, &key.remote_addr),
        remote_port: key.remote_port as u32,
        direction: direction as i32,
        packets_out: d(cur.packets[DIR_OUT], p.packets[DIR_OUT]),
        packets_in: d(cur.packets[DIR_IN], p.packets[DIR_IN]),
        bytes_out: d(cur.bytes[DIR_OUT], p.bytes[DIR_OUT]),
        bytes_in: d(cur.bytes[DIR_IN], p.bytes[DIR_IN]),
        payload_bytes_out: d(cur.payload_bytes[DIR_OUT], p.payload_bytes[DIR_OUT]),
        payload_bytes_in: d(cur.payload_bytes[DIR_IN], p.payload_bytes[DIR_IN]),
        first_seen_unix_ns: to_unix(cur.first_seen_ns, ctx.mono_to_unix_offset_ns),
        last_seen_unix_ns: to_unix(cur.last_seen_ns, ctx.mono_to_unix_offset_ns),
        tcp_flags_out: cur.tcp_flags[DIR_OUT] as u32,
        tcp_flags_in: cur.tcp_flags[DIR_IN] as u32,
        handshake_rtt_ns: if p.handshake_rtt_ns == 0 {
            u64::from(cur.handshake_rtt_ns)
        } else {
            0
        },
        requests: cur.requests.wrapping_sub(p.requests) as u64,
        // The latency histogram and its sum are the L7 table's (`L7Table::fill`): built
        // from the payload samples, reconciled with the kernel's exact count and sum.
        first_record: first,
        opened: first && cur.state & state::OPENED != 0,
        ended,
        resets: u32::from(cur.resets.wrapping_sub(p.resets)),
        // Filled in by the L7 table when payload samples told more.
        ..Default::default()
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::flow::FAMILY_IPV6;

    fn key() -> FlowKey {
        let mut k = FlowKey {
            ifindex: 7,
            local_port: 40000,
            remote_port: 80,
            proto: PROTO_TCP,
            family: FAMILY_IPV4,
            ..Default::default()
        };
        k.local_addr[..4].copy_from_slice(&[198, 18, 1, 10]);
        k.remote_addr[..4].copy_from_slice(&[198, 18, 1, 11]);
        k
    }

    fn ctx() -> RecordContext<'static> {
        RecordContext {
            workload: "client",
            interface: "wl-client",
            mono_to_unix_offset_ns: 1_000,
        }
    }

    fn stats(pk_out: u64, pk_in: u64, requests: u32) -> FlowStats {
        let mut s = FlowStats::ZERO;
        s.first_seen_ns = 100;
        s.last_seen_ns = 200;
        s.packets = [pk_out, pk_in];
        s.bytes = [pk_out * 100, pk_in * 1000];
        s.payload_bytes = [pk_out * 50, pk_in * 900];
        s.requests = requests;
        s.client_is_local = 1;
        s.state = state::OPENED;
        s
    }

    #[test]
    fn first_read_reports_everything_and_marks_the_start() {
        let mut t = FlowTracker::default();
        let mut s = stats(3, 2, 1);
        s.handshake_rtt_ns = 20_000_000;
        s.latency_sum_ns = 5_000_000;
        let r = t.update(&key(), &s, false, &ctx()).unwrap();
        assert!(r.first_record && r.opened && !r.ended);
        assert_eq!((r.packets_out, r.packets_in, r.requests), (3, 2, 1));
        assert_eq!(r.payload_bytes_in, 1800);
        assert_eq!(r.handshake_rtt_ns, 20_000_000);
        assert_eq!(r.local_ip, vec![198, 18, 1, 10]);
        assert_eq!(r.direction, FlowDirection::Outbound as i32);
        assert!(
            r.latency.is_empty() && r.latency_sum_ns == 0,
            "latencies are the L7 table's"
        );
        assert_eq!(r.first_seen_unix_ns, 1_100);
    }

    #[test]
    fn later_reads_report_deltas_and_rtt_once() {
        let mut t = FlowTracker::default();
        let mut s = stats(3, 2, 1);
        s.handshake_rtt_ns = 42;
        t.update(&key(), &s, false, &ctx()).unwrap();
        assert!(
            t.update(&key(), &s, false, &ctx()).is_none(),
            "unchanged flow gives no record"
        );
        let mut s2 = stats(10, 8, 4);
        s2.handshake_rtt_ns = 42;
        let r = t.update(&key(), &s2, false, &ctx()).unwrap();
        assert!(!r.first_record && !r.opened);
        assert_eq!((r.packets_out, r.packets_in, r.requests), (7, 6, 3));
        assert_eq!(r.payload_bytes_out, 7 * 50);
        assert_eq!(r.handshake_rtt_ns, 0);
    }

    #[test]
    fn reset_deltas_survive_u16_wraparound() {
        let mut t = FlowTracker::default();
        let mut s = stats(1, 1, 0);
        s.resets = u16::MAX - 1;
        t.update(&key(), &s, false, &ctx());
        let mut s2 = stats(2, 2, 0);
        s2.resets = 3; // wrapped: 5 more
        let r = t.update(&key(), &s2, false, &ctx()).unwrap();
        assert_eq!(r.resets, 5);
    }

    #[test]
    fn reused_tuple_starts_a_new_flow_and_ended_flow_is_forgotten() {
        let mut t = FlowTracker::default();
        t.update(&key(), &stats(5, 5, 2), false, &ctx());
        let r = t.update(&key(), &stats(6, 5, 2), true, &ctx()).unwrap();
        assert!(r.ended);
        assert_eq!(r.packets_out, 1);
        assert_eq!(t.len(), 0);
        let mut again = stats(1, 0, 0);
        again.first_seen_ns = 999;
        t.update(&key(), &stats(5, 5, 2), false, &ctx());
        let r = t.update(&key(), &again, false, &ctx()).unwrap();
        assert!(r.first_record);
        assert_eq!(r.packets_out, 1);
    }

    #[test]
    fn ipv6_addresses_are_sixteen_bytes_and_inbound_is_marked() {
        let mut k = key();
        k.family = FAMILY_IPV6;
        k.local_addr = "fd00:1::10".parse::<Ipv6Addr>().unwrap().octets();
        let mut s = stats(1, 1, 0);
        s.client_is_local = 0;
        let r = FlowTracker::default()
            .update(&k, &s, false, &ctx())
            .unwrap();
        assert_eq!(r.local_ip.len(), 16);
        assert_eq!(r.direction, FlowDirection::Inbound as i32);
        assert_eq!(local_ip(&k), "fd00:1::10".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn evicted_flows_are_forgotten() {
        let mut t = FlowTracker::default();
        t.update(&key(), &stats(1, 1, 0), false, &ctx());
        assert_eq!(t.retain_live(&HashSet::new()), vec![key()]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_tracker_seeded_with_a_baseline_continues_the_flow() {
        // The previous agent reported (3, 2) packets; the kernel counted on to (10, 8).
        let mut t = FlowTracker::with_baseline([(key(), stats(3, 2, 1))]);
        let r = t.update(&key(), &stats(10, 8, 4), false, &ctx()).unwrap();
        assert!(!r.first_record && !r.opened, "not a new connection: {r:?}");
        assert_eq!((r.packets_out, r.packets_in, r.requests), (7, 6, 3));
        assert_eq!((r.bytes_out, r.bytes_in), (700, 6000));
        // Nothing new since the baseline: no record at all.
        let mut t = FlowTracker::with_baseline([(key(), stats(3, 2, 1))]);
        assert!(t.update(&key(), &stats(3, 2, 1), false, &ctx()).is_none());
        // A new connection on the same tuple (another first_seen_ns) starts over.
        let mut again = stats(1, 0, 0);
        again.first_seen_ns = 999;
        let mut t = FlowTracker::with_baseline([(key(), stats(3, 2, 1))]);
        let r = t.update(&key(), &again, false, &ctx()).unwrap();
        assert!(r.first_record && r.packets_out == 1, "{r:?}");
    }
}

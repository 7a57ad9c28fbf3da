//! Per-connection, per-direction TCP reassembly of the tap's copies.
//!
//! Segments arrive retransmitted, overlapping, with sequence numbers that wrap, and
//! possibly out of order (the kernel's ring keeps the order records were made in, which
//! is not always the order of the sequence numbers: a connection's packets are handled
//! on several CPUs). Each direction delivers its bytes in order exactly once, from the
//! sequence number after its SYN (the client's SYN, the server's SYN-ACK) to its FIN or
//! RST.
//!
//! # Starting in the middle of a connection
//! The ring's records are in the order they were made, so a connection's SYN comes before
//! its other records; a connection whose first record here is not its SYN was begun by
//! someone else: a previous agent, which read the ring up to there and died or stopped
//! (or its SYN's copy was dropped from a full ring). Its bytes so far cannot be placed (a
//! request cut in two must never be replayed), so the connection is *resumed*: nothing
//! is reported for it until a client segment marked as the start of a turn
//! ([`Segment::turn`]: the client's first payload after the server's answer, which it
//! acknowledges whole, as the kernel follows it per connection). There the client's
//! stream starts, and the server's at the acknowledgement number of that segment (the
//! next byte the server sends): [`Event::Open`], then the bytes from that request on. A
//! resumed connection that ends or idles out before a turn is dropped without a word
//! (counted in [`Stats::unresumed`]).
//!
//! Everything is bounded: bytes held out of order per connection and in total,
//! connections, how long a hole may stay open ([`Limits::hole_ns`]) and how long a
//! connection may stay idle. Those times run from when a segment was *read* (the clock
//! of the last [`Assembler::tick`]) when that is later than when it was copied: records
//! that waited in the ring while no agent ran are not given up for their age. A hole that is not filled in time (a copy was lost), or a
//! bound that is hit, is a *gap*: the direction reports [`Event::Gap`] and the connection
//! is given up (no more events for it), counted in [`Stats`].
//!
//! Depends on std and agent-common only (`tap_record`), so that the fuzz crate can
//! include it by path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use agent_common::shadow::TapConnKey;

use super::tap_record::{Segment, TCP_FIN, TCP_RST, TCP_SYN, endpoints};

/// Bounds of the reassembler.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes held out of order per connection (both directions).
    pub conn_bytes: usize,
    /// Bytes held out of order over all connections.
    pub total_bytes: usize,
    /// Connections followed at once; a new one past it is given up at once.
    pub connections: usize,
    /// How long a hole may stay open before it is a gap.
    pub hole_ns: u64,
    /// A connection without a segment this long is closed (evicted).
    pub idle_ns: u64,
    /// Sequence numbers further than this ahead of the next expected byte are not
    /// believed (a gap).
    pub window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            conn_bytes: 8 << 20,
            total_bytes: 256 << 20,
            connections: 16_384,
            hole_ns: 2_000_000_000,
            idle_ns: 120_000_000_000,
            window: 64 << 20,
        }
    }
}

/// What the reassembler tells the streamer, in order per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new sampled connection (before any other event of it).
    Open {
        conn: u64,
        client: SocketAddr,
        server: SocketAddr,
        at_ns: u64,
    },
    /// In-order bytes of one direction; `at_ns`: when the first of them was copied.
    Data {
        conn: u64,
        to_server: bool,
        data: Vec<u8>,
        at_ns: u64,
    },
    /// Bytes of this direction are missing: the connection is given up after this.
    Gap { conn: u64, to_server: bool },
    /// The connection ended (FIN both ways, RST, or evicted).
    Close { conn: u64 },
}

/// Why connections were given up or ended, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub opened: u64,
    pub closed: u64,
    /// Given up with a gap (lost copy, or a bound).
    pub gaps: u64,
    /// Closed because idle.
    pub idle: u64,
    /// Not followed at all: too many connections.
    pub refused: u64,
    /// Connections first seen in the middle and resumed at the start of a turn (these
    /// count in `opened` too).
    pub resumed: u64,
    /// Connections first seen in the middle that ended or idled out before a turn
    /// started (nothing reported for them).
    pub unresumed: u64,
}

#[derive(Debug, Default)]
struct Stream {
    /// Sequence number of `delivered` (the next byte expected); `None` before the SYN.
    next_seq: Option<u32>,
    /// Bytes delivered so far (the stream offset of `next_seq`).
    delivered: u64,
    /// Out-of-order bytes by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Segments that came before the SYN that gives the base: (seq, data, flags, ktime).
    early: Vec<(u32, Vec<u8>, u8, u64)>,
    held: usize,
    /// Stream offset where the direction ends (FIN or RST).
    end: Option<u64>,
    /// Since when a hole (or a missing SYN) holds bytes back.
    hole_since: Option<u64>,
}

impl Stream {
    fn finished(&self) -> bool {
        self.end.is_some_and(|e| self.delivered >= e)
    }
}

#[derive(Debug)]
struct Conn {
    id: u64,
    opened_ns: u64,
    streams: [Stream; 2],
    last_ns: u64,
    rst: bool,
    /// Given up: later segments are ignored until the connection ends or idles out.
    dead: bool,
    /// First seen after its SYN: waiting for the start of a turn (no `Open` reported yet).
    resuming: bool,
}

impl Conn {
    fn held(&self) -> usize {
        self.streams[0].held + self.streams[1].held
    }
}

/// Reassembles every sampled connection of one tap.
pub struct Assembler {
    limits: Limits,
    conns: HashMap<TapConnKey, Conn>,
    next_id: u64,
    held: usize,
    stats: Stats,
    /// The latest `now` given to [`Self::tick`] (ktime).
    clock: u64,
}

fn idx(to_server: bool) -> usize {
    usize::from(!to_server)
}

enum Push {
    Ok,
    Gap,
}

impl Assembler {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            conns: HashMap::new(),
            next_id: 1,
            held: 0,
            stats: Stats::default(),
            clock: 0,
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections followed now.
    #[cfg_attr(not(test), allow(dead_code))] // tests and the fuzz target
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes held out of order now.
    #[cfg_attr(not(test), allow(dead_code))] // tests and the fuzz target
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes one segment; appends what it completes to `out`.
    pub fn push(&mut self, seg: Segment, out: &mut Vec<Event>) {
        let mut key = seg.key;
        key._pad = [0; 3];
        if let Some(c) = self.conns.get(&key)
            && c.opened_ns != seg.opened_ns
        {
            if seg.opened_ns < c.opened_ns {
                // A late copy of the connection this one replaced.
                return;
            }
            // The 5-tuple was reused: the old connection is over.
            self.end(&key, out, false);
        }
        if !self.conns.contains_key(&key) {
            if self.conns.len() >= self.limits.connections {
                self.stats.refused += 1;
                return;
            }
            let id = self.next_id;
            self.next_id += 1;
            // Its SYN was read by someone else (see the module doc): resumed at a turn.
            let resuming = seg.flags & TCP_SYN == 0;
            if !resuming {
                let (client, server) = endpoints(&key);
                out.push(Event::Open {
                    conn: id,
                    client,
                    server,
                    at_ns: seg.ktime_ns,
                });
                self.stats.opened += 1;
            }
            self.conns.insert(
                key,
                Conn {
                    id,
                    opened_ns: seg.opened_ns,
                    streams: Default::default(),
                    last_ns: seg.ktime_ns.max(self.clock),
                    rst: false,
                    dead: false,
                    resuming,
                },
            );
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        // When it was read, if later than when it was copied (it waited in the ring).
        let seen = seg.ktime_ns.max(self.clock);
        c.last_ns = c.last_ns.max(seen);
        if c.resuming {
            if seg.flags & (TCP_FIN | TCP_RST) != 0 {
                self.end(&key, out, false);
                return;
            }
            let syn = seg.to_server && seg.flags & TCP_SYN != 0;
            let turn = seg.to_server && seg.turn && !seg.data.is_empty();
            if !syn && !turn {
                return;
            }
            c.resuming = false;
            if turn {
                // The client's request starts here; the server's answer at the next byte
                // the client expects from it.
                c.streams[0].next_seq = Some(seg.seq);
                c.streams[1].next_seq = Some(seg.ack);
                self.stats.resumed += 1;
            }
            let (client, server) = endpoints(&key);
            out.push(Event::Open {
                conn: c.id,
                client,
                server,
                at_ns: seg.ktime_ns,
            });
            self.stats.opened += 1;
        }
        if c.dead {
            if seg.flags & (TCP_FIN | TCP_RST) != 0 {
                self.end(&key, out, false);
            }
            return;
        }
        let i = idx(seg.to_server);
        let before = c.held();
        let r = Self::push_stream(&self.limits, c, i, seg, seen, out);
        let after = c.held();
        self.held = (self.held + after).saturating_sub(before);
        match r {
            Push::Gap => self.give_up(&key, i, out),
            Push::Ok => {
                if self.held > self.limits.total_bytes {
                    self.shed(out);
                }
                self.maybe_close(&key, out);
            }
        }
    }

    fn push_stream(
        limits: &Limits,
        c: &mut Conn,
        i: usize,
        seg: Segment,
        seen: u64,
        out: &mut Vec<Event>,
    ) -> Push {
        let id = c.id;
        let s = &mut c.streams[i];
        if seg.flags & TCP_SYN != 0 {
            // `seg.seq` is the first data byte after the SYN (the kernel adds the SYN's one).
            if s.next_seq.is_none() {
                s.next_seq = Some(seg.seq);
                let early = std::mem::take(&mut s.early);
                for (seq, data, flags, at) in early {
                    s.held = s.held.saturating_sub(data.len());
                    if let Push::Gap =
                        Self::place(limits, id, i, s, seq, data, flags, at, seen, out)
                    {
                        return Push::Gap;
                    }
                }
            }
        }
        if seg.flags & TCP_RST != 0 {
            c.rst = true;
        }
        let s = &mut c.streams[i];
        if s.next_seq.is_none() {
            if seg.data.is_empty() && seg.flags & (TCP_FIN | TCP_RST) == 0 {
                return Push::Ok;
            }
            // Before the SYN's copy (another CPU's buffer): held until it comes.
            s.held += seg.data.len();
            s.early.push((seg.seq, seg.data, seg.flags, seg.ktime_ns));
            s.hole_since.get_or_insert(seen);
            if s.held > limits.conn_bytes || s.early.len() > 4096 {
                return Push::Gap;
            }
            return Push::Ok;
        }
        Self::place(
            limits,
            id,
            i,
            s,
            seg.seq,
            seg.data,
            seg.flags,
            seg.ktime_ns,
            seen,
            out,
        )
    }

    /// Puts a segment of a stream whose base is known in place; delivers what is in order.
    #[allow(clippy::too_many_arguments)]
    fn place(
        limits: &Limits,
        id: u64,
        i: usize,
        s: &mut Stream,
        seq: u32,
        data: Vec<u8>,
        flags: u8,
        at: u64,
        seen: u64,
        out: &mut Vec<Event>,
    ) -> Push {
        let Some(next) = s.next_seq else {
            return Push::Ok;
        };
        let rel = seq.wrapping_sub(next) as i32 as i64;
        if rel > limits.window as i64 {
            return Push::Gap;
        }
        let off = s.delivered as i64 + rel;
        if off < 0 {
            // Before the stream's start: garbage.
            return Push::Ok;
        }
        let off = off as u64;
        let end = off + data.len() as u64;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            // RST: the direction ends at the RST's sequence number (it carries no data).
            let e = if flags & TCP_RST != 0 { off } else { end };
            s.end = Some(s.end.map_or(e, |x| x.min(e)));
        }
        if end > s.delivered && !data.is_empty() {
            if off <= s.delivered {
                let skip = (s.delivered - off) as usize;
                let fresh = data[skip..].to_vec();
                s.delivered = end;
                s.next_seq = Some(next.wrapping_add(fresh.len() as u32));
                out.push(Event::Data {
                    conn: id,
                    to_server: i == 0,
                    data: fresh,
                    at_ns: at,
                });
                Self::drain(id, i, s, at, out);
            } else {
                let keep = match s.pending.get(&off) {
                    Some(old) => old.len() < data.len(),
                    None => true,
                };
                if keep {
                    let n = data.len();
                    if let Some(old) = s.pending.insert(off, data) {
                        s.held -= old.len();
                    }
                    s.held += n;
                }
                s.hole_since.get_or_insert(seen);
                if s.held > limits.conn_bytes {
                    return Push::Gap;
                }
            }
        }
        if s.pending.is_empty() && s.early.is_empty() {
            s.hole_since = None;
        }
        Push::Ok
    }

    fn drain(id: u64, i: usize, s: &mut Stream, at: u64, out: &mut Vec<Event>) {
        while let Some(entry) = s.pending.first_entry() {
            let off = *entry.key();
            if off > s.delivered {
                break;
            }
            let data = entry.remove();
            s.held -= data.len();
            let end = off + data.len() as u64;
            if end <= s.delivered {
                continue;
            }
            let fresh = data[(s.delivered - off) as usize..].to_vec();
            s.delivered = end;
            if let Some(n) = s.next_seq {
                s.next_seq = Some(n.wrapping_add(fresh.len() as u32));
            }
            // Appended to the previous event of the stream when it is this one's.
            if let Some(Event::Data {
                conn,
                to_server,
                data: prev,
                ..
            }) = out.last_mut()
                && *conn == id
                && *to_server == (i == 0)
            {
                prev.extend_from_slice(&fresh);
            } else {
                out.push(Event::Data {
                    conn: id,
                    to_server: i == 0,
                    data: fresh,
                    at_ns: at,
                });
            }
        }
        if s.pending.is_empty() {
            s.hole_since = None;
        }
    }

    fn maybe_close(&mut self, key: &TapConnKey, out: &mut Vec<Event>) {
        let Some(c) = self.conns.get(key) else {
            return;
        };
        let done = |s: &Stream| s.finished();
        let both = done(&c.streams[0]) && done(&c.streams[1]);
        let reset = c.rst && c.streams.iter().any(done);
        if both || reset {
            self.end(key, out, false);
        }
    }

    /// Removes a connection, reporting its close (if its opening was reported).
    fn end(&mut self, key: &TapConnKey, out: &mut Vec<Event>, idle: bool) {
        if let Some(c) = self.conns.remove(key) {
            self.held = self.held.saturating_sub(c.held());
            if c.resuming {
                self.stats.unresumed += 1;
                return;
            }
            if !c.dead {
                out.push(Event::Close { conn: c.id });
            }
            self.stats.closed += 1;
            if idle {
                self.stats.idle += 1;
            }
        }
    }

    /// A gap in direction `i`: reported, and the connection is given up.
    fn give_up(&mut self, key: &TapConnKey, i: usize, out: &mut Vec<Event>) {
        if let Some(c) = self.conns.get_mut(key) {
            if c.dead {
                return;
            }
            out.push(Event::Gap {
                conn: c.id,
                to_server: i == 0,
            });
            self.held = self.held.saturating_sub(c.held());
            for s in &mut c.streams {
                *s = Stream::default();
            }
            c.dead = true;
            self.stats.gaps += 1;
        }
    }

    /// Over the total bound: the connection holding the most bytes is given up.
    fn shed(&mut self, out: &mut Vec<Event>) {
        while self.held > self.limits.total_bytes {
            let Some((key, i)) = self
                .conns
                .iter()
                .filter(|(_, c)| !c.dead && c.held() > 0)
                .max_by_key(|(_, c)| c.held())
                .map(|(k, c)| (*k, usize::from(c.streams[0].held < c.streams[1].held)))
            else {
                break;
            };
            self.give_up(&key, i, out);
        }
    }

    /// Gives up holes older than the bound and closes idle connections (`now`: ktime).
    pub fn tick(&mut self, now: u64, out: &mut Vec<Event>) {
        self.clock = self.clock.max(now);
        let mut holes = Vec::new();
        let mut idle = Vec::new();
        for (k, c) in &self.conns {
            if now.saturating_sub(c.last_ns) > self.limits.idle_ns {
                idle.push((*k, c.streams.iter().any(|s| s.hole_since.is_some())));
                continue;
            }
            if c.dead {
                continue;
            }
            for (i, s) in c.streams.iter().enumerate() {
                if s.hole_since
                    .is_some_and(|t| now.saturating_sub(t) > self.limits.hole_ns)
                {
                    holes.push((*k, i));
                    break;
                }
            }
        }
        for (k, i) in holes {
            self.give_up(&k, i, out);
        }
        for (k, hole) in idle {
            if hole {
                self.give_up(&k, 0, out);
            }
            self.end(&k, out, true);
        }
    }

    /// Ends every connection (the tap goes away).
    pub fn close_all(&mut self, out: &mut Vec<Event>) {
        let keys: Vec<TapConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.end(&k, out, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::tap_record::{TCP_ACK, key_of};

    const C: &str = "198.18.0.2:40000";
    const S: &str = "198.18.0.1:80";

    fn seg(to_server: bool, seq: u32, flags: u8, data: &[u8]) -> Segment {
        Segment {
            key: key_of(C.parse().unwrap(), S.parse().unwrap()),
            opened_ns: 1,
            ktime_ns: 10,
            to_server,
            seq,
            ack: 0,
            flags,
            turn: false,
            data: data.to_vec(),
        }
    }

    /// A client segment that starts a turn (acknowledging the server up to `ack`).
    fn turn(seq: u32, ack: u32, data: &[u8]) -> Segment {
        Segment {
            ack,
            turn: true,
            ..seg(true, seq, TCP_ACK, data)
        }
    }

    /// Bytes per direction, and the events other than data in order.
    fn collect(events: &[Event]) -> (Vec<u8>, Vec<u8>, Vec<String>) {
        let (mut a, mut b, mut other) = (Vec::new(), Vec::new(), Vec::new());
        for e in events {
            match e {
                Event::Data {
                    to_server: true,
                    data,
                    ..
                } => a.extend_from_slice(data),
                Event::Data { data, .. } => b.extend_from_slice(data),
                Event::Open { .. } => other.push("open".to_owned()),
                Event::Gap { to_server, .. } => other.push(format!("gap {to_server}")),
                Event::Close { .. } => other.push("close".to_owned()),
            }
        }
        (a, b, other)
    }

    fn run(segs: Vec<Segment>) -> (Vec<u8>, Vec<u8>, Vec<String>, Assembler) {
        let mut a = Assembler::new(Limits::default());
        let mut out = Vec::new();
        for s in segs {
            a.push(s, &mut out);
        }
        let (x, y, z) = collect(&out);
        (x, y, z, a)
    }

    #[test]
    fn in_order_connection_opens_delivers_and_closes() {
        let (up, down, ev, a) = run(vec![
            seg(true, 101, TCP_SYN, b""),
            seg(false, 501, TCP_SYN | TCP_ACK, b""),
            seg(true, 101, TCP_ACK, b"GET /"),
            seg(true, 106, TCP_ACK | TCP_FIN, b" x"),
            seg(false, 501, TCP_ACK, b"200 OK"),
            seg(false, 507, TCP_ACK | TCP_FIN, b""),
        ]);
        assert_eq!(up, b"GET / x");
        assert_eq!(down, b"200 OK");
        assert_eq!(ev, ["open", "close"]);
        assert_eq!(a.connections(), 0);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn out_of_order_retransmitted_and_overlapping_segments_deliver_once() {
        let (up, _, ev, a) = run(vec![
            seg(true, 11, TCP_SYN, b""),
            seg(true, 17, TCP_ACK, b"ghij"),
            seg(true, 15, TCP_ACK, b"efgh"),
            seg(true, 11, TCP_ACK, b"abc"),
            seg(true, 11, TCP_ACK, b"abcd"),
            seg(true, 13, TCP_ACK, b"cdef"),
            seg(true, 21, TCP_ACK, b"k"),
        ]);
        assert_eq!(up, b"abcdefghijk");
        assert_eq!(ev, ["open"]);
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let base = u32::MAX - 2;
        let (up, _, _, _) = run(vec![
            seg(true, base, TCP_SYN, b""),
            seg(true, base.wrapping_add(4), TCP_ACK, b"efgh"),
            seg(true, base, TCP_ACK, b"abcd"),
        ]);
        assert_eq!(up, b"abcdefgh");
    }

    #[test]
    fn segments_before_the_syn_ack_copy_wait_for_it() {
        let (up, down, ev, _) = run(vec![
            seg(true, 1, TCP_SYN, b""),
            seg(false, 51, TCP_ACK, b"hello"),
            seg(true, 1, TCP_ACK, b"req"),
            seg(false, 51, TCP_SYN | TCP_ACK, b""),
        ]);
        assert_eq!(up, b"req");
        assert_eq!(down, b"hello");
        assert_eq!(ev, ["open"]);
    }

    /// A restarted agent reads a connection from its middle: the rest of a request the
    /// previous agent had begun streaming (and its answer) is never replayed; the
    /// connection is opened at the next request, whose bytes and answer are whole.
    #[test]
    fn a_connection_begun_elsewhere_resumes_at_the_next_request() {
        let (up, down, ev, a) = run(vec![
            // The end of request 1 (its start went to the previous agent), its answer.
            seg(true, 1000, TCP_ACK, b"rest of request 1"),
            seg(false, 5000, TCP_ACK, b"answer 1"),
            // Request 2 starts a turn: it acknowledges the answer whole.
            turn(1017, 5008, b"GET /2 HTTP/1.1\r\n"),
            seg(true, 1034, TCP_ACK, b"\r\n"),
            seg(false, 5008, TCP_ACK, b"answer 2"),
            turn(1036, 5016, b"GET /3\r\n\r\n"),
            seg(false, 5016, TCP_ACK | TCP_FIN, b"answer 3"),
            seg(true, 1046, TCP_ACK | TCP_FIN, b""),
        ]);
        assert_eq!(up, b"GET /2 HTTP/1.1\r\n\r\nGET /3\r\n\r\n");
        assert_eq!(down, b"answer 2answer 3");
        assert_eq!(ev, ["open", "close"]);
        assert_eq!(a.stats().resumed, 1);
        assert_eq!((a.stats().opened, a.stats().closed), (1, 1));
        assert_eq!(a.connections(), 0);
    }

    #[test]
    fn a_connection_begun_elsewhere_that_ends_before_a_turn_reports_nothing() {
        let (up, down, ev, a) = run(vec![
            seg(true, 1000, TCP_ACK, b"half a request"),
            // Not a turn: the client has not seen the whole answer (pipelined).
            Segment {
                turn: false,
                ..turn(1014, 4000, b"more")
            },
            seg(false, 5000, TCP_ACK | TCP_FIN, b"answer"),
        ]);
        assert!(up.is_empty() && down.is_empty() && ev.is_empty(), "{ev:?}");
        assert_eq!(a.connections(), 0);
        assert_eq!(a.stats().unresumed, 1);
        assert_eq!((a.stats().opened, a.stats().closed), (0, 0));
        // One that idles out: gone without a word too.
        let mut a = Assembler::new(Limits {
            idle_ns: 100,
            ..Limits::default()
        });
        let mut out = Vec::new();
        a.push(seg(true, 1000, TCP_ACK, b"half"), &mut out);
        a.tick(1_000, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(a.connections(), 0);
    }

    #[test]
    fn a_hole_left_open_is_a_gap_and_the_connection_is_given_up() {
        let mut a = Assembler::new(Limits {
            hole_ns: 100,
            ..Limits::default()
        });
        let mut out = Vec::new();
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        a.push(seg(true, 5, TCP_ACK, b"late"), &mut out);
        a.tick(50, &mut out);
        assert!(!out.iter().any(|e| matches!(e, Event::Gap { .. })));
        a.tick(200, &mut out);
        assert!(matches!(
            out.last(),
            Some(Event::Gap {
                to_server: true,
                ..
            })
        ));
        assert_eq!(a.stats().gaps, 1);
        // Given up: later bytes are not delivered, the end is not reported twice.
        let n = out.len();
        a.push(seg(true, 1, TCP_ACK, b"abcd"), &mut out);
        assert_eq!(out.len(), n);
        a.push(seg(true, 9, TCP_FIN, b""), &mut out);
        assert_eq!(a.connections(), 0);
        assert_eq!(a.held(), 0);
    }

    /// Records that waited in the ring while no agent ran are old when read: their holes
    /// and idleness count from when they were read.
    #[test]
    fn records_that_waited_in_the_ring_are_not_given_up_for_their_age() {
        let mut a = Assembler::new(Limits {
            hole_ns: 100,
            idle_ns: 1_000,
            ..Limits::default()
        });
        let mut out = Vec::new();
        // Read at 1,000,000; copied at 10 (`seg`'s ktime).
        a.tick(1_000_000, &mut out);
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        a.push(seg(true, 5, TCP_ACK, b"efgh"), &mut out);
        a.tick(1_000_050, &mut out);
        assert!(
            !out.iter()
                .any(|e| matches!(e, Event::Gap { .. } | Event::Close { .. })),
            "{out:?}"
        );
        a.push(seg(true, 1, TCP_ACK, b"abcd"), &mut out);
        assert_eq!(collect(&out).0, b"abcdefgh");
        // A hole left open past the bound from its reading is a gap as ever.
        a.push(seg(true, 20, TCP_ACK, b"x"), &mut out);
        a.tick(1_000_200, &mut out);
        assert!(matches!(out.last(), Some(Event::Gap { .. })), "{out:?}");
    }

    #[test]
    fn bytes_held_per_connection_are_bounded() {
        let mut a = Assembler::new(Limits {
            conn_bytes: 10,
            ..Limits::default()
        });
        let mut out = Vec::new();
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        a.push(seg(true, 100, TCP_ACK, &[1; 8]), &mut out);
        assert_eq!(a.held(), 8);
        a.push(seg(true, 200, TCP_ACK, &[1; 8]), &mut out);
        assert!(matches!(out.last(), Some(Event::Gap { .. })));
        assert_eq!(a.held(), 0);
    }

    #[test]
    fn total_bytes_are_bounded_by_giving_up_the_largest() {
        let mut a = Assembler::new(Limits {
            total_bytes: 20,
            ..Limits::default()
        });
        let mut out = Vec::new();
        let mut other = seg(true, 1, TCP_SYN, b"");
        other.key.client_port = 1;
        a.push(other.clone(), &mut out);
        other.seq = 50;
        other.flags = TCP_ACK;
        other.data = vec![0; 15];
        a.push(other, &mut out);
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        a.push(seg(true, 50, TCP_ACK, &[0; 10]), &mut out);
        assert!(a.held() <= 20);
        assert_eq!(a.stats().gaps, 1);
    }

    #[test]
    fn idle_connections_are_closed_and_too_many_refused() {
        let mut a = Assembler::new(Limits {
            connections: 1,
            idle_ns: 100,
            ..Limits::default()
        });
        let mut out = Vec::new();
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        let mut other = seg(true, 1, TCP_SYN, b"");
        other.key.client_port = 2;
        a.push(other, &mut out);
        assert_eq!(a.stats().refused, 1);
        a.tick(1000, &mut out);
        assert_eq!(a.stats().idle, 1);
        assert!(matches!(out.last(), Some(Event::Close { .. })));
    }

    #[test]
    fn a_reset_closes_and_a_reused_tuple_is_a_new_connection() {
        let mut a = Assembler::new(Limits::default());
        let mut out = Vec::new();
        a.push(seg(true, 1, TCP_SYN, b""), &mut out);
        a.push(seg(true, 1, TCP_ACK, b"ab"), &mut out);
        a.push(seg(false, 1, TCP_RST, b""), &mut out);
        // The server's stream has no base: the RST waits; the client's RST ends it.
        a.push(seg(true, 3, TCP_RST, b""), &mut out);
        assert_eq!(a.connections(), 0);
        let mut again = seg(true, 1000, TCP_SYN, b"");
        again.opened_ns = 2;
        a.push(again, &mut out);
        let opens: Vec<u64> = out
            .iter()
            .filter_map(|e| match e {
                Event::Open { conn, .. } => Some(*conn),
                _ => None,
            })
            .collect();
        assert_eq!(opens, [1, 2]);
    }

    #[test]
    fn syn_with_far_sequence_is_not_believed() {
        let (_, _, ev, _) = run(vec![
            seg(true, 1, TCP_SYN, b""),
            seg(true, 1 << 30, TCP_ACK, b"x"),
        ]);
        assert_eq!(ev, ["open", "gap true"]);
    }
}

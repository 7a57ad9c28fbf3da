//! Request/response turns rebuilt from the whole-stream copies of one flow
//! (`STREAM_CHUNKS`, kernel `stream`), with the rules `weft import pcap` follows for a
//! capture: client bytes after server bytes start a turn; the server's first bytes after
//! them answer it (its latency); server bytes in a row belong to the same answer; each side
//! of a turn keeps at most [`TURN_BYTES`]. A turn is complete, and handed out, when the
//! client starts the next one, when the flow ends ([`StreamTurns::finish`]), or when it has
//! been answered, nothing came for a while and every payload byte the kernel counted on the
//! flow has been taken in ([`StreamTurns::settle_if_quiet`]); server bytes after that are a
//! turn of their own with no request.
//!
//! Chunks are placed by their TCP sequence numbers: a retransmission's bytes already seen
//! are dropped, and a hole (a copy lost to a full ring) makes the side of the turn
//! incomplete: no byte after it is kept in that turn, since frames after a hole cannot be
//! found. A side the kernel cut at its bound (`chunk::CUT`) is incomplete too, and its next
//! bytes are no hole.
//!
//! A stream is followed whole only from its start: its first chunk must be the client's
//! first payload ([`StreamTurns::start`]). A flow whose start was copied before this agent
//! ran (a restarted agent, pinned flow map) cannot be parsed from the middle of an HPACK
//! context: it is followed by the first [`HEAD_BYTES`] of each side of a turn
//! ([`StreamTurns::heads`]), never complete, which is what a payload sample gives of other
//! flows.
//!
//! Depends on std, agent-common and weft-l7 only, so that the fuzz crate can include it by
//! path.

use agent_common::{
    StreamChunk,
    flow::{PAYLOAD_SAMPLE_BYTES, STREAM_TURN_BYTES, chunk},
};

/// Bytes kept of each side of a turn (the kernel copies no more).
pub const TURN_BYTES: usize = STREAM_TURN_BYTES as usize;
/// Bytes kept of each side of a turn of a stream followed by its heads.
pub const HEAD_BYTES: usize = PAYLOAD_SAMPLE_BYTES;

/// One complete turn of a flow copied whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeTurn {
    pub request: Vec<u8>,
    pub request_complete: bool,
    pub response: Vec<u8>,
    pub response_complete: bool,
    pub start_ns: u64,
    pub latency_ns: u64,
}

impl WholeTurn {
    pub fn as_turn(&self) -> weft_l7::Turn<'_> {
        weft_l7::Turn {
            request: &self.request,
            request_complete: self.request_complete,
            response: &self.response,
            response_complete: self.response_complete,
            start_ns: self.start_ns,
            latency_ns: self.latency_ns,
        }
    }
}

#[derive(Debug)]
struct Side {
    bytes: Vec<u8>,
    /// Every byte this side sent in the turn is in `bytes`.
    complete: bool,
    /// Bytes kept at most.
    cap: usize,
}

impl Side {
    fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            complete: true,
            cap,
        }
    }

    /// Appends `data`; after a hole, a cut or the bound nothing more is kept.
    fn append(&mut self, data: &[u8], hole: bool) {
        if hole {
            self.complete = false;
        }
        if !self.complete {
            return;
        }
        let room = self.cap.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.complete = false;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

#[derive(Debug)]
struct Open {
    start_ns: u64,
    /// When the server's answer began.
    answered_ns: Option<u64>,
    request: Side,
    response: Side,
}

impl Open {
    fn into_turn(self, heads: bool) -> Option<WholeTurn> {
        let answered = self.answered_ns?;
        Some(WholeTurn {
            request: self.request.bytes,
            request_complete: self.request.complete && !heads,
            response: self.response.bytes,
            response_complete: self.response.complete && !heads,
            start_ns: self.start_ns,
            latency_ns: answered.saturating_sub(self.start_ns),
        })
    }
}

/// What is known of each direction's sequence numbers (0: the client's, 1: the server's).
#[derive(Debug, Default, Clone, Copy)]
struct Direction {
    /// The sequence number after the last byte placed.
    next: Option<u32>,
    /// The kernel cut this side: the next bytes may start past `next` with no hole.
    cut: bool,
}

/// Counts of what did not make a turn whole.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StreamStats {
    /// Holes in a side's sequence numbers (copies lost).
    pub holes: u64,
    /// Chunks whose bytes had all been placed already (retransmissions).
    pub duplicates: u64,
}

/// The turns of one flow copied whole.
#[derive(Debug)]
pub struct StreamTurns {
    dirs: [Direction; 2],
    turn: Option<Open>,
    /// The newest chunk's kernel time.
    last_ns: u64,
    stats: StreamStats,
    /// Followed by the heads of its turns only (see [`StreamTurns::heads`]).
    heads: bool,
    /// Payload bytes of the packets taken in, per side (client, server), retransmissions
    /// included: the kernel's count of the flow's payload, when all of it was taken in.
    seen: [u64; 2],
}

impl StreamTurns {
    /// Follows a stream from `first`, its first chunk seen; `None` unless that is the
    /// start of the client's bytes (the stream cannot be followed from the middle).
    pub fn start(first: &StreamChunk) -> Option<Self> {
        (first.from_client == 1 && first.flags & chunk::START != 0 && first.offset == 0)
            .then(|| Self::new(false))
    }

    /// Follows a stream by the first [`HEAD_BYTES`] of each side of its turns, none of them
    /// complete: for a stream whose start was not seen, or when too many are followed whole.
    pub fn heads() -> Self {
        Self::new(true)
    }

    fn new(heads: bool) -> Self {
        Self {
            dirs: [Direction::default(); 2],
            turn: None,
            last_ns: 0,
            stats: StreamStats::default(),
            heads,
            seen: [0; 2],
        }
    }

    /// Whether the stream is followed whole (not by its heads).
    pub fn is_whole(&self) -> bool {
        !self.heads
    }

    fn side(&self) -> Side {
        Side::new(if self.heads { HEAD_BYTES } else { TURN_BYTES })
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Bytes held for the open turn.
    #[cfg_attr(not(test), allow(dead_code))] // the tests' and the fuzz target's bound
    pub fn held(&self) -> usize {
        self.turn
            .as_ref()
            .map_or(0, |t| t.request.bytes.len() + t.response.bytes.len())
    }

    /// Takes in one chunk and its bytes; a turn it completes goes to `out`.
    pub fn push(&mut self, c: &StreamChunk, data: &[u8], out: &mut Vec<WholeTurn>) {
        let from_client = c.from_client == 1;
        let side = usize::from(!from_client);
        if c.offset == 0 {
            self.seen[side] += u64::from(c.payload_len);
        }
        let d = &mut self.dirs[side];
        let end = c.seq.wrapping_add(data.len() as u32);
        let mut data = data;
        let mut hole = false;
        if let Some(next) = d.next {
            let ahead = c.seq.wrapping_sub(next) as i32;
            if ahead > 0 {
                hole = !d.cut;
            } else if ahead < 0 {
                let seen = ahead.unsigned_abs() as usize;
                if seen >= data.len() {
                    self.stats.duplicates += 1;
                    return;
                }
                data = &data[seen..];
            }
        }
        if hole {
            self.stats.holes += 1;
        }
        let cut = c.flags & chunk::CUT != 0;
        d.cut = cut;
        // Past a cut the packet's remaining bytes were not copied: the stream goes on
        // after the packet.
        d.next = Some(if cut {
            later_seq(
                c.seq.wrapping_sub(c.offset).wrapping_add(c.payload_len),
                end,
            )
        } else {
            end
        });
        self.last_ns = self.last_ns.max(c.ts_ns);
        if from_client {
            if self.turn.as_ref().is_none_or(|t| t.answered_ns.is_some()) {
                self.settle(out);
                self.turn = Some(Open {
                    start_ns: c.ts_ns,
                    answered_ns: None,
                    request: self.side(),
                    response: self.side(),
                });
            }
            if let Some(t) = self.turn.as_mut() {
                t.request.append(data, hole);
                if cut {
                    t.request.complete = false;
                }
            }
        } else {
            // Server bytes with no turn open: after a turn settled while quiet, or before
            // the client spoke again. A turn of its own, with no request.
            if self.turn.is_none() {
                self.turn = Some(Open {
                    start_ns: c.ts_ns,
                    answered_ns: Some(c.ts_ns),
                    request: self.side(),
                    response: self.side(),
                });
            }
            let Some(t) = self.turn.as_mut() else {
                return;
            };
            t.answered_ns.get_or_insert(c.ts_ns);
            t.response.append(data, hole);
            if cut {
                t.response.complete = false;
            }
        }
    }

    fn settle(&mut self, out: &mut Vec<WholeTurn>) {
        if let Some(turn) = self.turn.take().and_then(|t| t.into_turn(self.heads)) {
            out.push(turn);
        }
    }

    /// Hands out the open turn if it was answered, nothing came for `quiet_ns` (by
    /// `now_ns`, the kernel's clock) and every payload byte the kernel counted on the flow
    /// (`kernel_bytes`: client's, server's) was taken in: the answer is not being written
    /// any more, and no packet of it is still in the ring. A side the kernel cut at its
    /// bound left packets uncopied, so such a turn waits for the next one.
    pub fn settle_if_quiet(
        &mut self,
        now_ns: u64,
        quiet_ns: u64,
        kernel_bytes: [u64; 2],
        out: &mut Vec<WholeTurn>,
    ) {
        let answered = self.turn.as_ref().is_some_and(|t| t.answered_ns.is_some());
        if answered && now_ns.saturating_sub(self.last_ns) >= quiet_ns && self.seen == kernel_bytes
        {
            self.settle(out);
        }
    }

    /// The flow ended: its last turn, if it was answered (as a capture's import does).
    pub fn finish(&mut self, out: &mut Vec<WholeTurn>) {
        self.settle(out);
    }
}

/// The later of two sequence numbers (modulo 2^32).
fn later_seq(a: u32, b: u32) -> u32 {
    if (b.wrapping_sub(a) as i32) > 0 { b } else { a }
}

// By path, so that the file is found also where the fuzz crate includes this one.
#[cfg(test)]
#[path = "stream_turns/tests.rs"]
mod tests;

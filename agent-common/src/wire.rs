//! The records the kernel program posts to its ring buffers, decoded from byte slices.
//!
//! User space gets ring-buffer items as `&[u8]` of whatever length the ring reports. These
//! decoders check the length and read every field at its `#[repr(C)]` offset in native byte
//! order (what the kernel wrote), without reinterpreting memory; then they refuse values the
//! kernel program never writes (a family other than IPv4/IPv6, a sample longer than its
//! buffer, ...), so a layout drift between the two sides shows up as an error instead of
//! garbage records. `to_bytes` writes the same layout (tests and tools build items with it).

use core::fmt;

use crate::flow::{
    FAMILY_IPV4, FAMILY_IPV6, FlowEvent, FlowKey, FlowStats, PAYLOAD_SAMPLE_BYTES, PROTO_TCP,
    PROTO_UDP, PayloadSample, STREAM_CHUNK_BYTES, StreamChunk, chunk, sample, state, turn,
};

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record has.
    Short {
        record: &'static str,
        need: usize,
        got: usize,
    },
    /// A field holds a value the kernel program never writes.
    Invalid {
        record: &'static str,
        field: &'static str,
        value: u64,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Short { record, need, got } => {
                write!(f, "{record}: {got} bytes, the record has {need}")
            }
            DecodeError::Invalid {
                record,
                field,
                value,
            } => write!(
                f,
                "{record}: field {field} is {value}, which the kernel program never writes"
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}

/// All `state::*` bits.
const STATE_BITS: u16 = state::OPENED
    | state::FIN_OUT
    | state::FIN_IN
    | state::RST
    | state::END_REPORTED
    | state::SAMPLED_OUT
    | state::SAMPLED_IN
    | state::HANDSHAKE_MARK
    | state::HANDSHAKE_DONE
    | state::LAST_FIN_IN
    | state::WHOLE;

fn invalid(record: &'static str, field: &'static str, value: u64) -> DecodeError {
    DecodeError::Invalid {
        record,
        field,
        value,
    }
}

/// Sequential native-endian reads from a buffer whose length was checked against the
/// record's size (`take`); fields are read in declaration order at their offsets.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The first `N` bytes of `bytes`, or `Short`.
    fn take<const N: usize>(bytes: &'a [u8], record: &'static str) -> Result<Self, DecodeError> {
        match bytes.get(..N) {
            Some(b) => Ok(Self { bytes: b, at: 0 }),
            None => Err(DecodeError::Short {
                record,
                need: N,
                got: bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(src) = self.bytes.get(self.at..self.at + N) {
            out.copy_from_slice(src);
        }
        self.at += N;
        out
    }

    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    fn u16(&mut self) -> u16 {
        u16::from_ne_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_ne_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_ne_bytes(self.array())
    }

    fn u64x2(&mut self) -> [u64; 2] {
        [self.u64(), self.u64()]
    }
}

/// Sequential native-endian writes, the mirror of [`Reader`].
struct Writer<const N: usize> {
    out: [u8; N],
    at: usize,
}

impl<const N: usize> Writer<N> {
    fn new() -> Self {
        Self { out: [0; N], at: 0 }
    }

    fn bytes(&mut self, b: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + b.len()) {
            dst.copy_from_slice(b);
        }
        self.at += b.len();
    }

    fn done(self) -> [u8; N] {
        debug_assert_eq!(self.at, N, "a record's fields fill it exactly");
        self.out
    }
}

impl FlowKey {
    pub const SIZE: usize = core::mem::size_of::<FlowKey>();

    fn read(r: &mut Reader<'_>) -> Self {
        FlowKey {
            local_addr: r.array(),
            remote_addr: r.array(),
            ifindex: r.u32(),
            local_port: r.u16(),
            remote_port: r.u16(),
            proto: r.u8(),
            family: r.u8(),
            _pad: r.array(),
        }
    }

    fn write<const N: usize>(&self, w: &mut Writer<N>) {
        w.bytes(&self.local_addr);
        w.bytes(&self.remote_addr);
        w.bytes(&self.ifindex.to_ne_bytes());
        w.bytes(&self.local_port.to_ne_bytes());
        w.bytes(&self.remote_port.to_ne_bytes());
        w.bytes(&[self.proto, self.family]);
        w.bytes(&self._pad);
    }

    /// What the kernel program guarantees of a key: TCP or UDP, IPv4 or IPv6, and IPv4
    /// addresses in the first four bytes with the rest zero.
    pub fn validate(&self) -> Result<(), DecodeError> {
        const R: &str = "FlowKey";
        if !matches!(self.family, FAMILY_IPV4 | FAMILY_IPV6) {
            return Err(invalid(R, "family", self.family.into()));
        }
        if !matches!(self.proto, PROTO_TCP | PROTO_UDP) {
            return Err(invalid(R, "proto", self.proto.into()));
        }
        if self.family == FAMILY_IPV4 {
            for (field, addr) in [
                ("local_addr", &self.local_addr),
                ("remote_addr", &self.remote_addr),
            ] {
                if let Some(&b) = addr[4..].iter().find(|b| **b != 0) {
                    return Err(invalid(R, field, b.into()));
                }
            }
        }
        Ok(())
    }

    /// Decodes and validates a key from the first [`FlowKey::SIZE`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let k = Self::read(&mut Reader::take::<{ FlowKey::SIZE }>(bytes, "FlowKey")?);
        k.validate()?;
        Ok(k)
    }

    pub fn to_bytes(&self) -> [u8; FlowKey::SIZE] {
        let mut w = Writer::new();
        self.write(&mut w);
        w.done()
    }
}

impl FlowStats {
    pub const SIZE: usize = core::mem::size_of::<FlowStats>();

    fn read(r: &mut Reader<'_>) -> Self {
        FlowStats {
            first_seen_ns: r.u64(),
            last_seen_ns: r.u64(),
            packets: r.u64x2(),
            bytes: r.u64x2(),
            payload_bytes: r.u64x2(),
            mark_ns: r.u64(),
            latency_sum_ns: r.u64(),
            requests: r.u32(),
            handshake_rtt_ns: r.u32(),
            resets: r.u16(),
            state: r.u16(),
            tcp_flags: r.array(),
            client_is_local: r.u8(),
            turn: r.u8(),
        }
    }

    fn write<const N: usize>(&self, w: &mut Writer<N>) {
        for v in [self.first_seen_ns, self.last_seen_ns]
            .into_iter()
            .chain(self.packets)
            .chain(self.bytes)
            .chain(self.payload_bytes)
            .chain([self.mark_ns, self.latency_sum_ns])
        {
            w.bytes(&v.to_ne_bytes());
        }
        w.bytes(&self.requests.to_ne_bytes());
        w.bytes(&self.handshake_rtt_ns.to_ne_bytes());
        w.bytes(&self.resets.to_ne_bytes());
        w.bytes(&self.state.to_ne_bytes());
        w.bytes(&self.tcp_flags);
        w.bytes(&[self.client_is_local, self.turn]);
    }

    /// What the kernel program guarantees of a flow's state: `client_is_local` is 0 or 1,
    /// `turn` a `turn::*` value, `state` only `state::*` bits.
    pub fn validate(&self) -> Result<(), DecodeError> {
        const R: &str = "FlowStats";
        if self.client_is_local > 1 {
            return Err(invalid(R, "client_is_local", self.client_is_local.into()));
        }
        if !matches!(self.turn, turn::NONE | turn::CLIENT | turn::SERVER) {
            return Err(invalid(R, "turn", self.turn.into()));
        }
        if self.state & !STATE_BITS != 0 {
            return Err(invalid(R, "state", self.state.into()));
        }
        Ok(())
    }

    /// Decodes and validates a flow's state from the first [`FlowStats::SIZE`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s = Self::read(&mut Reader::take::<{ FlowStats::SIZE }>(
            bytes,
            "FlowStats",
        )?);
        s.validate()?;
        Ok(s)
    }

    pub fn to_bytes(&self) -> [u8; FlowStats::SIZE] {
        let mut w = Writer::new();
        self.write(&mut w);
        w.done()
    }
}

impl FlowEvent {
    pub const SIZE: usize = core::mem::size_of::<FlowEvent>();

    /// Decodes a flow-end event from the first [`FlowEvent::SIZE`] bytes of a ring-buffer
    /// item. Besides a valid key and state, the kernel posts it only for a closed flow
    /// (RST, or FIN both ways) and marks it `END_REPORTED` first.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        const R: &str = "FlowEvent";
        let mut r = Reader::take::<{ FlowEvent::SIZE }>(bytes, R)?;
        let ev = FlowEvent {
            key: FlowKey::read(&mut r),
            _pad: r.array(),
            stats: FlowStats::read(&mut r),
        };
        ev.key.validate()?;
        ev.stats.validate()?;
        let st = ev.stats.state;
        let closed = st & state::RST != 0
            || st & (state::FIN_OUT | state::FIN_IN) == state::FIN_OUT | state::FIN_IN;
        if st & state::END_REPORTED == 0 || !closed {
            return Err(invalid(R, "stats.state", st.into()));
        }
        Ok(ev)
    }

    pub fn to_bytes(&self) -> [u8; FlowEvent::SIZE] {
        let mut w = Writer::new();
        self.key.write(&mut w);
        w.bytes(&self._pad);
        self.stats.write(&mut w);
        w.done()
    }
}

impl PayloadSample {
    pub const SIZE: usize = core::mem::size_of::<PayloadSample>();

    /// The captured payload bytes (`captured` of `data`, never more than the buffer).
    pub fn payload(&self) -> &[u8] {
        let n = usize::from(self.captured).min(PAYLOAD_SAMPLE_BYTES);
        self.data.get(..n).unwrap_or_default()
    }

    /// Decodes a payload sample from the first [`PayloadSample::SIZE`] bytes of a
    /// ring-buffer item. The kernel program writes a `sample::*` kind, a direction of 0 or
    /// 1, and copies at most the buffer and at most the packet's payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        const R: &str = "PayloadSample";
        let mut r = Reader::take::<{ PayloadSample::SIZE }>(bytes, R)?;
        let s = PayloadSample {
            key: FlowKey::read(&mut r),
            kind: r.u8(),
            dir: r.u8(),
            captured: r.u16(),
            flow_first_seen_ns: r.u64(),
            ts_ns: r.u64(),
            latency_ns: r.u64(),
            payload_len: r.u32(),
            first_of_direction: r.u8(),
            _pad: r.array(),
            data: r.array(),
        };
        s.key.validate()?;
        if !matches!(s.kind, sample::FIRST | sample::REQUEST | sample::RESPONSE) {
            return Err(invalid(R, "kind", s.kind.into()));
        }
        if s.dir > 1 {
            return Err(invalid(R, "dir", s.dir.into()));
        }
        if s.first_of_direction > 1 {
            return Err(invalid(
                R,
                "first_of_direction",
                s.first_of_direction.into(),
            ));
        }
        if usize::from(s.captured) > PAYLOAD_SAMPLE_BYTES || u32::from(s.captured) > s.payload_len {
            return Err(invalid(R, "captured", s.captured.into()));
        }
        Ok(s)
    }

    pub fn to_bytes(&self) -> [u8; PayloadSample::SIZE] {
        let mut w = Writer::new();
        self.key.write(&mut w);
        w.bytes(&[self.kind, self.dir]);
        w.bytes(&self.captured.to_ne_bytes());
        for v in [self.flow_first_seen_ns, self.ts_ns, self.latency_ns] {
            w.bytes(&v.to_ne_bytes());
        }
        w.bytes(&self.payload_len.to_ne_bytes());
        w.bytes(&[self.first_of_direction]);
        w.bytes(&self._pad);
        w.bytes(&self.data);
        w.done()
    }
}

impl StreamChunk {
    pub const SIZE: usize = core::mem::size_of::<StreamChunk>();

    /// Decodes a `STREAM_CHUNKS` item: the chunk and its bytes. The kernel program copies
    /// only TCP flows, writes `from_client` 0 or 1 and only `chunk::*` flags, and posts at
    /// least one byte, at most [`STREAM_CHUNK_BYTES`], inside the packet's payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<(Self, &[u8]), DecodeError> {
        const R: &str = "StreamChunk";
        let mut r = Reader::take::<{ StreamChunk::SIZE }>(bytes, R)?;
        let c = StreamChunk {
            key: FlowKey::read(&mut r),
            from_client: r.u8(),
            flags: r.u8(),
            dir: r.u8(),
            _pad: r.u8(),
            flow_first_seen_ns: r.u64(),
            ts_ns: r.u64(),
            seq: r.u32(),
            payload_len: r.u32(),
            offset: r.u32(),
            len: r.u32(),
        };
        c.key.validate()?;
        if c.key.proto != PROTO_TCP {
            return Err(invalid(R, "key.proto", c.key.proto.into()));
        }
        if c.from_client > 1 {
            return Err(invalid(R, "from_client", c.from_client.into()));
        }
        if c.flags & !chunk::ALL != 0 {
            return Err(invalid(R, "flags", c.flags.into()));
        }
        if c.dir > 1 {
            return Err(invalid(R, "dir", c.dir.into()));
        }
        if c.len == 0 || c.len as usize > STREAM_CHUNK_BYTES {
            return Err(invalid(R, "len", c.len.into()));
        }
        if u64::from(c.offset) + u64::from(c.len) > u64::from(c.payload_len) {
            return Err(invalid(R, "offset", c.offset.into()));
        }
        let data = bytes
            .get(StreamChunk::SIZE..StreamChunk::SIZE + c.len as usize)
            .ok_or(DecodeError::Short {
                record: R,
                need: StreamChunk::SIZE + c.len as usize,
                got: bytes.len(),
            })?;
        Ok((c, data))
    }

    /// The header's bytes, as the kernel writes them (the data follows).
    pub fn to_bytes(&self) -> [u8; StreamChunk::SIZE] {
        let mut w = Writer::new();
        self.key.write(&mut w);
        w.bytes(&[self.from_client, self.flags, self.dir, self._pad]);
        for v in [self.flow_first_seen_ns, self.ts_ns] {
            w.bytes(&v.to_ne_bytes());
        }
        for v in [self.seq, self.payload_len, self.offset, self.len] {
            w.bytes(&v.to_ne_bytes());
        }
        w.done()
    }
}

#[cfg(test)]
mod tests;

//! Capture files: classic libpcap (either byte order, microsecond or nanosecond
//! timestamps) and pcapng (section, interface description, enhanced, simple and obsolete
//! packet blocks). Link types: Ethernet (1), raw IP (101, 228, 229), Linux cooked v1 (113)
//! and v2 (276).
//!
//! Packets are numbered from 1 in file order, as Wireshark numbers them; a malformed packet
//! becomes an error naming it and the import goes on with the next one. A record header that
//! runs past the end of the file ends the import (nothing after it can be located).

use super::packet::{self, Frame};
use super::turns::Tracker;
use super::{ImportError, ImportReport};
use crate::topology::check_fields;

const PCAP_MICROS: u32 = 0xa1b2_c3d4;
const PCAP_NANOS: u32 = 0xa1b2_3c4d;
const PCAPNG_SHB: u32 = 0x0a0d_0d0a;
const PCAPNG_BOM: u32 = 0x1a2b_3c4d;
/// Records larger than this are corruption, not packets.
const MAX_RECORD: usize = 16 * 1024 * 1024;

/// Imports a capture file's bytes.
pub fn import(bytes: &[u8]) -> ImportReport {
    import_with_progress(bytes, &mut |_| {})
}

/// Bytes read between two calls of an import's progress callback.
const PROGRESS_EVERY: usize = 1 << 20;

/// [`import`], calling `progress` with the bytes read so far every MiB of the file.
pub fn import_with_progress(bytes: &[u8], progress: &mut dyn FnMut(usize)) -> ImportReport {
    let mut reader = Reader {
        report: ImportReport::default(),
        tracker: Tracker::default(),
        number: 0,
        progress,
        next_progress: PROGRESS_EVERY,
    };
    match bytes
        .get(..4)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]))
    {
        Some(PCAPNG_SHB) => reader.pcapng(bytes),
        Some(_) => reader.classic(bytes),
        None => reader.report.errors.push(ImportError {
            location: "file header".into(),
            message: format!("{} bytes: too short for a capture file", bytes.len()),
        }),
    }
    let Reader {
        mut report,
        tracker,
        ..
    } = reader;
    // Hosts are addresses or DNS names within the topology's bounds and labels are kept
    // only when the topology takes them, so this refuses nothing unless a parser changes.
    let (observed, flows) = tracker.finish_with_flows();
    report.flows = flows;
    let (observations, marks): (Vec<_>, Vec<_>) = observed
        .into_iter()
        .filter(|(o, _)| match check_fields(o) {
            Ok(()) => true,
            Err(e) => {
                report.errors.push(ImportError {
                    location: format!(
                        "flow {} -> {}",
                        o.source.to_endpoint_string(),
                        o.destination.to_endpoint_string()
                    ),
                    message: e.to_string(),
                });
                false
            }
        })
        .unzip();
    report.observations = observations;
    report.sort_with_marks(marks);
    report
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let raw = [*b.get(at)?, *b.get(at + 1)?];
        Some(match self {
            Order::Little => u16::from_le_bytes(raw),
            Order::Big => u16::from_be_bytes(raw),
        })
    }

    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(match self {
            Order::Little => u32::from_le_bytes(raw),
            Order::Big => u32::from_be_bytes(raw),
        })
    }
}

struct Reader<'p> {
    report: ImportReport,
    tracker: Tracker,
    number: u64,
    progress: &'p mut dyn FnMut(usize),
    /// The offset at which `progress` is called next.
    next_progress: usize,
}

/// One pcapng interface: link type and timestamp units per second.
struct Interface {
    linktype: u32,
    units_per_second: u64,
}

impl Reader<'_> {
    /// Reports `at` bytes read when it passed the next MiB.
    fn reached(&mut self, at: usize) {
        if at >= self.next_progress {
            (self.progress)(at);
            self.next_progress = at.saturating_add(PROGRESS_EVERY);
        }
    }

    fn header_error(&mut self, message: String) {
        self.report.errors.push(ImportError {
            location: "file header".into(),
            message,
        });
    }

    /// One captured frame, numbered.
    fn frame(&mut self, linktype: u32, ts_ns: u64, data: &[u8], original_len: u64) {
        self.report.units_read += 1;
        let snapped = (data.len() as u64) < original_len;
        match packet::decode(linktype, data, snapped) {
            Ok(Frame::Segment(segment)) => self.tracker.packet(&segment, ts_ns),
            Ok(Frame::Skipped) => self.report.skipped += 1,
            Err(message) => self
                .report
                .errors
                .push(ImportError::packet(self.number, message)),
        }
    }

    fn classic(&mut self, bytes: &[u8]) {
        let (order, nanos) = match bytes.get(..4).map(|m| [m[0], m[1], m[2], m[3]]) {
            Some(m) if u32::from_le_bytes(m) == PCAP_MICROS => (Order::Little, false),
            Some(m) if u32::from_le_bytes(m) == PCAP_NANOS => (Order::Little, true),
            Some(m) if u32::from_be_bytes(m) == PCAP_MICROS => (Order::Big, false),
            Some(m) if u32::from_be_bytes(m) == PCAP_NANOS => (Order::Big, true),
            _ => {
                return self
                    .header_error("not a pcap or pcapng file (unknown magic number)".into());
            }
        };
        let Some(network) = order.u32(bytes, 20) else {
            return self.header_error(format!(
                "pcap global header truncated ({} of 24 bytes)",
                bytes.len()
            ));
        };
        // The upper bits may carry FCS information; the link type is the low 16.
        let linktype = network & 0xffff;
        if !packet::supported_linktype(linktype) {
            return self.header_error(format!(
                "link type {linktype} is not supported (Ethernet 1, raw IP 101, Linux cooked 113 and 276)"
            ));
        }
        let mut at = 24;
        while at < bytes.len() {
            self.reached(at);
            self.number += 1;
            let header = (
                order.u32(bytes, at),
                order.u32(bytes, at + 4),
                order.u32(bytes, at + 8),
                order.u32(bytes, at + 12),
            );
            let (Some(sec), Some(frac), Some(caplen), Some(origlen)) = header else {
                self.report.units_read += 1;
                self.report.errors.push(ImportError::packet(
                    self.number,
                    format!(
                        "record header truncated ({} of 16 bytes): the file ends here",
                        bytes.len() - at
                    ),
                ));
                return;
            };
            let caplen = caplen as usize;
            let start = at + 16;
            if caplen > MAX_RECORD || caplen > bytes.len() - start {
                self.report.units_read += 1;
                self.report.errors.push(ImportError::packet(
                    self.number,
                    format!(
                        "record claims {caplen} captured bytes, {} left in the file: truncated or corrupt, nothing after it can be read",
                        bytes.len() - start
                    ),
                ));
                return;
            }
            let frac_ns = if nanos {
                u64::from(frac)
            } else {
                u64::from(frac) * 1_000
            };
            let ts_ns = u64::from(sec) * 1_000_000_000 + frac_ns;
            self.frame(
                linktype,
                ts_ns,
                &bytes[start..start + caplen],
                u64::from(origlen),
            );
            at = start + caplen;
        }
    }

    fn pcapng(&mut self, bytes: &[u8]) {
        let mut order = Order::Little;
        let mut interfaces: Vec<Interface> = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            self.reached(at);
            let block_type = order.u32(bytes, at);
            if block_type == Some(PCAPNG_SHB) {
                // The byte-order magic decides how this section is read.
                order = match bytes.get(at + 8..at + 12).map(|m| [m[0], m[1], m[2], m[3]]) {
                    Some(m) if u32::from_le_bytes(m) == PCAPNG_BOM => Order::Little,
                    Some(m) if u32::from_be_bytes(m) == PCAPNG_BOM => Order::Big,
                    _ => {
                        return self.header_error(format!(
                            "pcapng section header at byte {at} has no byte-order magic"
                        ));
                    }
                };
                interfaces.clear();
            }
            let (Some(block_type), Some(len)) = (order.u32(bytes, at), order.u32(bytes, at + 4))
            else {
                self.header_error(format!("pcapng block header truncated at byte {at}"));
                return;
            };
            let len = len as usize;
            if len < 12 || !len.is_multiple_of(4) || len > MAX_RECORD || len > bytes.len() - at {
                let is_packet = matches!(block_type, 2 | 3 | 6);
                let message = format!(
                    "pcapng block of type {block_type} at byte {at} claims {len} bytes ({} left): truncated or corrupt, nothing after it can be read",
                    bytes.len() - at
                );
                if is_packet {
                    self.number += 1;
                    self.report.units_read += 1;
                    self.report
                        .errors
                        .push(ImportError::packet(self.number, message));
                } else {
                    self.header_error(message);
                }
                return;
            }
            let body = &bytes[at + 8..at + len - 4];
            match block_type {
                1 => interfaces.push(interface(order, body)),
                2 | 3 | 6 => {
                    self.number += 1;
                    self.packet_block(order, block_type, body, &interfaces);
                }
                _ => {}
            }
            at += len;
        }
    }

    fn packet_block(
        &mut self,
        order: Order,
        block_type: u32,
        body: &[u8],
        interfaces: &[Interface],
    ) {
        // (interface, timestamp high, low, captured length, original length, data offset)
        let fields = match block_type {
            6 => (
                order.u32(body, 0),
                order.u32(body, 4),
                order.u32(body, 8),
                order.u32(body, 12),
                order.u32(body, 16),
                20,
            ),
            2 => (
                order.u16(body, 0).map(u32::from),
                order.u32(body, 4),
                order.u32(body, 8),
                order.u32(body, 12),
                order.u32(body, 16),
                20,
            ),
            _ => {
                let original = order.u32(body, 0);
                let captured = original.map(|o| o.min(body.len().saturating_sub(4) as u32));
                (Some(0), Some(0), Some(0), captured, original, 4)
            }
        };
        let (Some(interface_id), Some(high), Some(low), Some(caplen), Some(origlen), offset) =
            fields
        else {
            self.report.units_read += 1;
            self.report.errors.push(ImportError::packet(
                self.number,
                "packet block too short for its fields",
            ));
            return;
        };
        let Some(interface) = interfaces.get(interface_id as usize) else {
            self.report.units_read += 1;
            self.report.errors.push(ImportError::packet(
                self.number,
                format!("packet names interface {interface_id}, which was not described"),
            ));
            return;
        };
        let Some(data) = body.get(offset..offset + caplen as usize) else {
            self.report.units_read += 1;
            self.report.errors.push(ImportError::packet(
                self.number,
                format!("captured length {caplen} runs past the packet block"),
            ));
            return;
        };
        if !packet::supported_linktype(interface.linktype) {
            self.report.units_read += 1;
            self.report.errors.push(ImportError::packet(
                self.number,
                format!("link type {} is not supported", interface.linktype),
            ));
            return;
        }
        let units = (u64::from(high) << 32) | u64::from(low);
        let per = interface.units_per_second.max(1);
        let ts_ns = (u128::from(units / per) * 1_000_000_000
            + u128::from(units % per) * 1_000_000_000 / u128::from(per))
        .min(u128::from(u64::MAX)) as u64;
        self.frame(interface.linktype, ts_ns, data, u64::from(origlen));
    }
}

/// An interface description block's link type and `if_tsresol`.
fn interface(order: Order, body: &[u8]) -> Interface {
    let linktype = order.u16(body, 0).map_or(u32::MAX, u32::from);
    let mut units_per_second = 1_000_000;
    let mut at = 8;
    while let (Some(code), Some(len)) = (order.u16(body, at), order.u16(body, at + 2)) {
        if code == 0 {
            break;
        }
        let len = usize::from(len);
        if code == 9
            && len == 1
            && let Some(&resolution) = body.get(at + 4)
        {
            let exponent = u32::from(resolution & 0x7f);
            let base: u64 = if resolution & 0x80 != 0 { 2 } else { 10 };
            units_per_second = base.checked_pow(exponent).unwrap_or(1_000_000);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    Interface {
        linktype,
        units_per_second,
    }
}

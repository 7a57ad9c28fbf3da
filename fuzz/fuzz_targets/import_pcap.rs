//! The capture importer: pcap (both byte orders, micro/nanoseconds) and pcapng, link
//! layers, IPv4/IPv6, TCP/UDP, turns, L7 parsing and DNS naming.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::observation::check_report;
use weft_topology::import::{Format, ImportOptions, import_bytes, pcap};

fuzz_target!(|data: &[u8]| {
    let r = pcap::import(data);
    assert_eq!(
        r,
        import_bytes(Format::Pcap, data, &ImportOptions::default()),
        "not deterministic"
    );
    check_report(&r);
    let packet_errors = r
        .errors
        .iter()
        .filter(|e| e.location.starts_with("packet "))
        .count() as u64;
    assert!(
        packet_errors + r.skipped <= r.units_read,
        "{packet_errors} packet errors + {} skipped > {} packets read",
        r.skipped,
        r.units_read
    );
    // A packet is at least a 16-byte record header (pcap) or a 12-byte block (pcapng).
    assert!(
        r.units_read as usize <= data.len() / 12,
        "{} packets in {} bytes",
        r.units_read,
        data.len()
    );
});

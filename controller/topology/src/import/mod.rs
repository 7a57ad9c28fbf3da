//! Imports of traffic weft did not capture itself, as [`TrafficObservation`]s:
//!
//! - [`pcap`]: libpcap and pcapng captures (tcpdump, tshark), decoded and split into
//!   request/response turns exactly as weft's kernel program does;
//! - [`jsonl`]: JSON lines in the specification's `TrafficObservation` shape (nested
//!   `source`/`destination` or flat `source_host`/`dest_host`);
//! - [`envoy`]: Envoy access logs, default text format and JSON.
//!
//! Malformed input never stops an import: each bad line or packet becomes an
//! [`ImportError`] naming it ("line 7", "packet 42") and the rest is still imported.

pub mod envoy;
pub mod jsonl;
mod packet;
pub mod pcap;
mod time;
mod turns;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::observation::{TrafficObservation, is_known_protocol};
use crate::topology::{check_fields, is_printable};

/// One malformed line or packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    /// Where: "line 7", "packet 42", "file header".
    pub location: String,
    pub message: String,
}

impl ImportError {
    pub(crate) fn line(number: usize, message: impl Into<String>) -> Self {
        Self {
            location: format!("line {number}"),
            message: message.into(),
        }
    }

    pub(crate) fn packet(number: u64, message: impl Into<String>) -> Self {
        Self {
            location: format!("packet {number}"),
            message: message.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for ImportError {}

/// What an import produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// Sorted by timestamp.
    pub observations: Vec<TrafficObservation>,
    /// Every malformed line or packet, in input order.
    pub errors: Vec<ImportError>,
    /// Lines (blank ones excluded) or packets read, good or bad.
    pub units_read: u64,
    /// Packets deliberately left out: not IP (ARP, LLDP, ...), not TCP or UDP, IP fragments
    /// after the first.
    pub skipped: u64,
    /// Indices into `observations` of flow-level observations (pcap only): a connection or
    /// datagram flow without any complete request/response turn, reported once with the
    /// bytes of the whole flow, latency 0 and no method or status. They are not requests.
    pub flow_only: Vec<usize>,
    /// Every connection or datagram flow (pcap only), in order of first packet: what weft
    /// saw of it, to check weft against other tools flow by flow.
    pub flows: Vec<FlowSummary>,
}

/// One flow of a capture as weft counted it (`weft import pcap FILE --flows`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FlowSummary {
    /// "tcp" or "udp".
    pub transport: &'static str,
    /// Client and server as `address:port` (`[v6]:port`).
    pub client: String,
    pub server: String,
    /// Time of the first packet, Unix nanoseconds.
    pub first_unix_ns: u64,
    pub protocol: String,
    /// TLS server name and ALPN protocols the client offered, when visible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    /// Payload bytes from the client and from the server.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Application requests (HTTP/2 streams, SQL queries, AMQP methods, ...) and how many
    /// failed; WebSocket messages the client sent are counted apart.
    pub requests: u64,
    pub errors: u64,
    pub messages: u64,
    /// Requests (and messages) by method, status and path.
    pub methods: std::collections::BTreeMap<String, u64>,
    pub statuses: std::collections::BTreeMap<u16, u64>,
    pub paths: std::collections::BTreeMap<String, u64>,
    /// The connection ended with a reset.
    pub reset: bool,
}

impl ImportReport {
    /// Observations that stand for a request (all but [`ImportReport::flow_only`]).
    pub fn requests(&self) -> impl Iterator<Item = &TrafficObservation> {
        self.observations
            .iter()
            .enumerate()
            .filter(|(i, _)| self.flow_only.binary_search(i).is_err())
            .map(|(_, o)| o)
    }

    /// Sorts observations by timestamp, keeping `flow_only` pointing at the same ones.
    pub(crate) fn sort_with_marks(&mut self, marks: Vec<bool>) {
        let mut paired: Vec<(TrafficObservation, bool)> = std::mem::take(&mut self.observations)
            .into_iter()
            .zip(marks)
            .collect();
        paired.sort_by(|a, b| {
            (a.0.timestamp_unix_ns, &a.0.source, &a.0.destination).cmp(&(
                b.0.timestamp_unix_ns,
                &b.0.source,
                &b.0.destination,
            ))
        });
        self.flow_only = paired
            .iter()
            .enumerate()
            .filter(|(_, (_, mark))| *mark)
            .map(|(i, _)| i)
            .collect();
        self.observations = paired.into_iter().map(|(o, _)| o).collect();
    }
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// libpcap (either byte order, micro- or nanosecond) or pcapng.
    Pcap,
    /// JSON lines of `TrafficObservation`s.
    Jsonl,
    /// Envoy access log, default text format or JSON lines.
    Envoy,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "pcap" | "pcapng" => Ok(Self::Pcap),
            "jsonl" | "json-lines" | "ndjson" => Ok(Self::Jsonl),
            "envoy" => Ok(Self::Envoy),
            other => Err(format!(
                "unknown import format {other:?} (pcap, jsonl, envoy)"
            )),
        }
    }
}

/// Caller-provided context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Envoy: the name of the downstream (calling) service, used instead of the downstream
    /// address.
    pub source: Option<String>,
}

/// Imports `input` in `format`. Never fails: problems are in [`ImportReport::errors`].
pub fn import_bytes(format: Format, input: &[u8], options: &ImportOptions) -> ImportReport {
    match format {
        Format::Pcap => pcap::import(input),
        Format::Jsonl => jsonl::import(input),
        Format::Envoy => envoy::import(input, options),
    }
}

/// [`import_bytes`], calling `progress` with the bytes read so far: every MiB of a
/// capture, once at the end of the other formats.
pub fn import_bytes_with_progress(
    format: Format,
    input: &[u8],
    options: &ImportOptions,
    progress: &mut dyn FnMut(usize),
) -> ImportReport {
    let report = match format {
        Format::Pcap => pcap::import_with_progress(input, progress),
        Format::Jsonl | Format::Envoy => import_bytes(format, input, options),
    };
    progress(input.len());
    report
}

/// Reads `path` and imports it. Fails only when the file cannot be read.
pub fn import_file(
    format: Format,
    path: &Path,
    options: &ImportOptions,
) -> std::io::Result<ImportReport> {
    let bytes = std::fs::read(path)?;
    Ok(import_bytes(format, &bytes, options))
}

/// Normalises a protocol name to one of [`crate::observation::PROTOCOLS`]: case-insensitive,
/// with the spec's `Protocol.HTTPS` enum spelling and common aliases ("postgresql", "h2",
/// "HTTP/1.1").
pub fn normalize_protocol(name: &str) -> Option<&'static str> {
    let trimmed = name.trim();
    let bare = match trimmed.get(..9) {
        Some(prefix) if prefix.eq_ignore_ascii_case("protocol.") => &trimmed[9..],
        _ => trimmed,
    };
    let lower = bare.to_ascii_lowercase();
    if let Some(known) = crate::observation::PROTOCOLS.iter().find(|p| **p == lower) {
        return Some(known);
    }
    let alias = match lower.as_str() {
        "http/2" | "http/2.0" | "h2" | "h2c" => "http2",
        "http/1.0" | "http/1.1" | "http1" | "http/1" => "http",
        other => weft_l7::Protocol::from_str(other).ok()?.as_str(),
    };
    is_known_protocol(alias).then_some(alias)
}

/// Makes the text fields of an imported observation printable: control and invisible
/// characters (those [`is_printable`] refuses) in hosts, method and path become U+FFFD, as
/// weft-l7 does with labels from wire bytes. Import files are untrusted, and these fields
/// reach terminals through the ASCII map.
pub(crate) fn printable(mut o: TrafficObservation) -> TrafficObservation {
    fn clean(s: &mut String) {
        if !s.chars().all(is_printable) {
            *s = s
                .chars()
                .map(|c| if is_printable(c) { c } else { '\u{fffd}' })
                .collect();
        }
    }
    clean(&mut o.source.host);
    clean(&mut o.destination.host);
    for label in [&mut o.method, &mut o.path].into_iter().flatten() {
        clean(label);
    }
    o
}

/// The last step of a line-based importer: [`printable`], then the topology's own checks of
/// an observation ([`check_fields`]: sizes of hosts, method and path, ...), so that no
/// observation is produced that the topology would refuse. The error names the field as
/// the input does (`input_name` maps the observation's field, e.g. `source.host`, to it).
pub(crate) fn checked(
    o: TrafficObservation,
    input_name: impl Fn(&'static str) -> String,
) -> Result<TrafficObservation, String> {
    let o = printable(o);
    check_fields(&o).map_err(|e| match e.field() {
        Some(field) => format!("field {}: {}", input_name(field), e.reason()),
        None => e.to_string(),
    })?;
    Ok(o)
}

/// Lines of `input` with their 1-based numbers, blank lines left out; a line that is not
/// UTF-8 comes back as an error.
pub(crate) fn numbered_lines(
    input: &[u8],
) -> impl Iterator<Item = (usize, Result<&str, ImportError>)> {
    input
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let text = std::str::from_utf8(raw)
                .map_err(|e| ImportError::line(i + 1, format!("not UTF-8 text: {e}")));
            (i + 1, text)
        })
        .filter(|(_, text)| !matches!(text, Ok(t) if t.trim().is_empty()))
}

#[cfg(test)]
mod tests;

//! Envoy access logs, one request per line, in either of Envoy's stock shapes:
//!
//! - the default text format:
//!   `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
//!   %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
//!   %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//!   "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`
//! - JSON (`json_format`) with the usual keys: `start_time`, `method`, `path`, `protocol`,
//!   `response_code`, `response_flags`, `bytes_received`, `bytes_sent`, `duration`,
//!   `upstream_host`, `upstream_cluster`, `downstream_remote_address`, `authority`.
//!
//! The source is the caller's `--source` name, else the downstream address (JSON), else the
//! first `X-Forwarded-For` address, else `envoy-downstream`. The destination is the upstream
//! cluster (JSON) or the upstream host's address, on the upstream host's port; without an
//! upstream host (no healthy upstream, a local reply) it is the `:authority`. Bytes are from
//! the client's side: `bytes_sent` is what Envoy received from downstream. Response code 0
//! (no response) and response flags other than `-` count as errors. Control characters in
//! hosts, method and path become U+FFFD. A line the topology would refuse (a host over 253
//! bytes, a method or path over 256: the topology's own
//! [`check_fields`](crate::topology::check_fields)) is an error naming its field.

use serde_json::Value;

use super::time::{from_unix_seconds, parse_rfc3339};
use super::{
    ImportError, ImportOptions, ImportReport, checked, normalize_protocol, numbered_lines,
};
use crate::observation::{NetworkEndpoint, TrafficObservation};

/// Source name when nothing in the log tells the downstream.
pub const UNKNOWN_DOWNSTREAM: &str = "envoy-downstream";

/// Imports an Envoy access log.
pub fn import(input: &[u8], options: &ImportOptions) -> ImportReport {
    let mut report = ImportReport::default();
    for (number, line) in numbered_lines(input) {
        report.units_read += 1;
        let parsed = line.and_then(|text| {
            let result = if text.trim_start().starts_with('{') {
                parse_json_line(text, options)
            } else {
                parse_text_line(text, options)
            };
            result.map_err(|message| ImportError::line(number, message))
        });
        match parsed {
            Ok(observation) => report.observations.push(observation),
            Err(error) => report.errors.push(error),
        }
    }
    let marks = vec![false; report.observations.len()];
    report.sort_with_marks(marks);
    report
}

/// The fields of one access-log entry, whichever the shape.
#[derive(Debug, Default)]
struct Entry {
    start_time: u64,
    method: Option<String>,
    path: Option<String>,
    protocol: Option<String>,
    response_code: u16,
    flags: Option<String>,
    bytes_received: u64,
    bytes_sent: u64,
    duration_ms: f64,
    downstream: Option<String>,
    forwarded_for: Option<String>,
    authority: Option<String>,
    upstream_host: Option<String>,
    upstream_cluster: Option<String>,
}

/// Tokens of a text line: `[...]`, `"..."` (with `\"` escapes) and bare words.
fn tokens(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut token = String::new();
        match c {
            '[' => {
                chars.next();
                loop {
                    match chars.next() {
                        Some(']') => break,
                        Some(ch) => token.push(ch),
                        None => return Err("unterminated [start time]".into()),
                    }
                }
            }
            '"' => {
                chars.next();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => {
                            if let Some(escaped) = chars.next() {
                                token.push(escaped);
                            }
                        }
                        Some(ch) => token.push(ch),
                        None => {
                            return Err(format!("unterminated quoted field {}", out.len() + 1));
                        }
                    }
                }
            }
            _ => {
                while let Some(&ch) = chars.peek() {
                    if ch.is_whitespace() {
                        break;
                    }
                    token.push(ch);
                    chars.next();
                }
            }
        }
        out.push(token);
    }
    Ok(out)
}

fn dash(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty() && v != "-").then(|| v.to_string())
}

fn number<T: std::str::FromStr>(field: &str, value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("field {field}: {value:?} is not a number"))
}

/// A default-format line.
fn parse_text_line(line: &str, options: &ImportOptions) -> Result<TrafficObservation, String> {
    let t = tokens(line)?;
    if t.len() < 9 {
        return Err(format!(
            "{} fields, the default Envoy format has 13 (from [START_TIME] to \"UPSTREAM_HOST\")",
            t.len()
        ));
    }
    let start_time = parse_rfc3339(&t[0]).map_err(|e| format!("field START_TIME: {e}"))?;
    let mut request = t[1].split_whitespace();
    let method = request.next().and_then(dash);
    let path = request.next().and_then(dash);
    let protocol = request.next().and_then(dash);
    let response_code = number("RESPONSE_CODE", &t[2])?;
    let get = |i: usize| t.get(i).and_then(|v| dash(v));
    let entry = Entry {
        start_time,
        method,
        path,
        protocol,
        response_code,
        flags: dash(&t[3]),
        bytes_received: number("BYTES_RECEIVED", &t[4])?,
        bytes_sent: number("BYTES_SENT", &t[5])?,
        duration_ms: number("DURATION", &t[6])?,
        downstream: None,
        forwarded_for: get(8),
        authority: get(11),
        upstream_host: get(12),
        upstream_cluster: None,
    };
    observation(entry, options)
}

/// A JSON line.
fn parse_json_line(line: &str, options: &ImportOptions) -> Result<TrafficObservation, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".into());
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(dash(s)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("field {key:?}: expected a string")),
        }
    };
    let count = |key: &str| -> Result<u64, String> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| format!("field {key:?}: {n} is not a non-negative integer")),
            Some(Value::String(s)) if s == "-" => Ok(0),
            Some(Value::String(s)) => number(&format!("{key:?}"), s),
            Some(_) => Err(format!("field {key:?}: expected a number")),
        }
    };
    let start_time = match obj.get("start_time") {
        Some(Value::String(s)) => {
            parse_rfc3339(s).map_err(|e| format!("field \"start_time\": {e}"))?
        }
        Some(Value::Number(n)) => from_unix_seconds(n.as_f64().unwrap_or(f64::NAN))
            .map_err(|e| format!("field \"start_time\": {e}"))?,
        Some(_) => return Err("field \"start_time\": expected a timestamp".into()),
        None => return Err("missing field \"start_time\"".into()),
    };
    let response_code = u16::try_from(count("response_code")?)
        .map_err(|_| "field \"response_code\": out of range".to_string())?;
    let entry = Entry {
        start_time,
        method: text("method")?,
        path: text("path")?,
        protocol: text("protocol")?,
        response_code,
        flags: text("response_flags")?,
        bytes_received: count("bytes_received")?,
        bytes_sent: count("bytes_sent")?,
        duration_ms: count("duration")? as f64,
        downstream: text("downstream_remote_address")?,
        forwarded_for: text("x_forwarded_for")?,
        authority: text("authority")?,
        upstream_host: text("upstream_host")?,
        upstream_cluster: text("upstream_cluster")?,
    };
    observation(entry, options)
}

/// `host:port`, `[v6]:port`, `tcp://host:port`, or a bare host with `default_port`; an
/// address without a host (`:80`, `[]:80`) is an error.
fn split_host_port(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = split_address(address, default_port)?;
    if host.trim().is_empty() {
        return Err(format!("{:?} has no host", address.trim()));
    }
    Ok((host, port))
}

fn split_address(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let address = address.trim();
    let address = address.split_once("://").map_or(address, |(_, rest)| rest);
    if let Some(rest) = address.strip_prefix('[') {
        let (host, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("{address:?} is not an address"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("{address:?} has a bad port"))?,
            None => default_port,
        };
        return Ok((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Ok((
            host.to_string(),
            port.parse()
                .map_err(|_| format!("{address:?} has a bad port"))?,
        )),
        _ => Ok((address.to_string(), default_port)),
    }
}

fn observation(e: Entry, options: &ImportOptions) -> Result<TrafficObservation, String> {
    let protocol = match e.protocol.as_deref() {
        Some(p) if p.to_ascii_uppercase().starts_with("HTTP/2") => "http2",
        Some(p) if p.to_ascii_uppercase().starts_with("HTTP/3") => "http2",
        Some(p) => normalize_protocol(p).unwrap_or("http"),
        None => "tcp",
    };
    let default_port = 80;
    let dest_field = match (&e.upstream_host, &e.upstream_cluster) {
        (Some(_), Some(_)) => "upstream_cluster",
        (Some(_), None) => "upstream_host",
        (None, _) => "authority",
    };
    let (dest_host, dest_port) = match (&e.upstream_host, &e.authority) {
        (Some(upstream), _) => {
            let (host, port) = split_host_port(upstream, default_port)
                .map_err(|m| format!("field upstream_host: {m}"))?;
            (e.upstream_cluster.clone().unwrap_or(host), port)
        }
        (None, Some(authority)) => {
            split_host_port(authority, default_port).map_err(|m| format!("field authority: {m}"))?
        }
        (None, None) => {
            return Err("no destination: neither an upstream host nor an authority".into());
        }
    };
    if !e.duration_ms.is_finite() || e.duration_ms < 0.0 {
        return Err(format!(
            "field DURATION: {} is not a duration",
            e.duration_ms
        ));
    }
    let source_field = match (&options.source, &e.downstream, &e.forwarded_for) {
        (Some(_), _, _) => "source (the caller's name)",
        (None, Some(_), _) => "downstream_remote_address",
        (None, None, Some(_)) => "X-Forwarded-For",
        (None, None, None) => "source",
    };
    let name = |field: &'static str| {
        match field {
            "source.host" => source_field,
            "destination.host" => dest_field,
            other => other,
        }
        .to_owned()
    };
    // Everything but the source is checked first, so that a line's error does not depend
    // on whether the caller names the source.
    let mut observation = checked(
        TrafficObservation {
            timestamp_unix_ns: e.start_time,
            source: NetworkEndpoint::new(UNKNOWN_DOWNSTREAM, 0),
            destination: NetworkEndpoint::new(dest_host, dest_port),
            protocol: protocol.to_string(),
            bytes_sent: e.bytes_received,
            bytes_received: e.bytes_sent,
            latency_ms: e.duration_ms,
            status_code: (e.response_code != 0).then_some(e.response_code),
            method: e.method,
            path: e.path,
            error: e.response_code == 0 || e.flags.is_some(),
        },
        name,
    )?;
    observation.source = match (&options.source, &e.downstream, &e.forwarded_for) {
        (Some(name), _, _) => NetworkEndpoint::new(name.clone(), 0),
        (None, Some(downstream), _) => {
            let (host, port) = split_host_port(downstream, 0)
                .map_err(|m| format!("field downstream_remote_address: {m}"))?;
            NetworkEndpoint::new(host, port)
        }
        (None, None, Some(xff)) => {
            // The first address (empty entries of a list such as ", 10.0.0.1" skipped).
            let first = xff.split(',').map(str::trim).find(|a| !a.is_empty());
            NetworkEndpoint::new(first.unwrap_or(UNKNOWN_DOWNSTREAM), 0)
        }
        (None, None, None) => NetworkEndpoint::new(UNKNOWN_DOWNSTREAM, 0),
    };
    checked(observation, name)
}

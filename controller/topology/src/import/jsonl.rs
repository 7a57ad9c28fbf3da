//! JSON lines of observations in the specification's `TrafficObservation` shape:
//!
//! ```json
//! {"timestamp": "2026-11-23T16:03:17Z", "source": {"host": "web", "port": 8080},
//!  "destination": {"host": "api", "port": 443}, "protocol": "Protocol.HTTPS",
//!  "bytes_sent": 2048, "bytes_received": 4096, "latency_ms": 125.0,
//!  "status_code": 201, "method": "POST", "path": "/api/orders"}
//! ```
//!
//! or flat, as the spec's `create_traffic_observation` takes them: `source_host`,
//! `source_port`, `dest_host`, `dest_port` (`destination_host`/`destination_port` too).
//!
//! Required: the two endpoints and `protocol` (case-insensitive, `Protocol.X` accepted).
//! In the nested shape `timestamp`, `bytes_sent`, `bytes_received` and `latency_ms` are
//! required too, as in the spec's dataclass; the flat shape defaults them like
//! `create_traffic_observation` (now, 0, 0, 0). `timestamp` is RFC 3339 text or Unix
//! seconds; `timestamp_unix_ns` and `error` (weft's own serialisation) are accepted. Control
//! characters in hosts, method and path become U+FFFD. A line the topology would refuse
//! (a host over 253 bytes, a method or path over 256: the topology's own
//! [`check_fields`](crate::topology::check_fields)) is an error naming its field.

use serde_json::{Map, Value};

use super::time::{from_unix_seconds, parse_rfc3339};
use super::{ImportError, ImportReport, checked, normalize_protocol, numbered_lines};
use crate::observation::{NetworkEndpoint, TrafficObservation};
use crate::time::now_unix_ns;

/// Imports JSON lines.
pub fn import(input: &[u8]) -> ImportReport {
    let mut report = ImportReport::default();
    let now = now_unix_ns();
    for (number, line) in numbered_lines(input) {
        report.units_read += 1;
        let parsed = line.and_then(|text| {
            parse_line(text, now).map_err(|message| ImportError::line(number, message))
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

/// One line to an observation; the error names the field.
pub fn parse_line(text: &str, now_unix_ns: u64) -> Result<TrafficObservation, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object".into());
    };
    let nested = obj.contains_key("source") || obj.contains_key("destination");
    let mut dest_host_field = "dest_host";
    let (source, destination) = if nested {
        (endpoint(&obj, "source")?, endpoint(&obj, "destination")?)
    } else {
        let dest_host = if obj.contains_key("destination_host") {
            "destination_host"
        } else {
            "dest_host"
        };
        dest_host_field = dest_host;
        let dest_port = if obj.contains_key("destination_port") {
            "destination_port"
        } else {
            "dest_port"
        };
        (
            NetworkEndpoint::new(string(&obj, "source_host")?, port(&obj, "source_port")?),
            NetworkEndpoint::new(string(&obj, dest_host)?, port(&obj, dest_port)?),
        )
    };
    let protocol_text = string(&obj, "protocol")?;
    let protocol = normalize_protocol(&protocol_text)
        .ok_or_else(|| format!("field \"protocol\": unknown protocol {protocol_text:?}"))?;
    let timestamp_unix_ns = match (obj.get("timestamp"), obj.get("timestamp_unix_ns")) {
        (Some(Value::String(s)), _) => {
            parse_rfc3339(s).map_err(|e| format!("field \"timestamp\": {e}"))?
        }
        (Some(Value::Number(n)), _) => from_unix_seconds(n.as_f64().unwrap_or(f64::NAN))
            .map_err(|e| format!("field \"timestamp\": {e}"))?,
        (Some(other), _) => {
            return Err(format!(
                "field \"timestamp\": expected RFC 3339 text or Unix seconds, got {}",
                kind(other)
            ));
        }
        (None, Some(_)) => unsigned(&obj, "timestamp_unix_ns")?.unwrap_or(0),
        (None, None) if !nested => now_unix_ns,
        (None, None) => return Err("missing field \"timestamp\"".into()),
    };
    let required = |field: &str| -> Result<Option<()>, String> {
        if nested && !obj.contains_key(field) {
            Err(format!("missing field {field:?}"))
        } else {
            Ok(None)
        }
    };
    required("bytes_sent")?;
    required("bytes_received")?;
    required("latency_ms")?;
    let latency_ms = match obj.get("latency_ms") {
        None | Some(Value::Null) => 0.0,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if ms.is_finite() && ms >= 0.0 => ms,
            _ => return Err(format!("field \"latency_ms\": {n} is not a latency")),
        },
        Some(other) => {
            return Err(format!(
                "field \"latency_ms\": expected a number, got {}",
                kind(other)
            ));
        }
    };
    let status_code = match unsigned(&obj, "status_code")? {
        None => None,
        Some(code) => Some(
            u16::try_from(code)
                .map_err(|_| format!("field \"status_code\": {code} is out of range"))?,
        ),
    };
    let error = match obj.get("error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "field \"error\": expected true or false, got {}",
                kind(other)
            ));
        }
    };
    let observation = TrafficObservation {
        timestamp_unix_ns,
        source,
        destination,
        protocol: protocol.to_string(),
        bytes_sent: unsigned(&obj, "bytes_sent")?.unwrap_or(0),
        bytes_received: unsigned(&obj, "bytes_received")?.unwrap_or(0),
        latency_ms,
        status_code,
        method: optional_string(&obj, "method")?,
        path: optional_string(&obj, "path")?,
        error,
    };
    checked(observation, |field| {
        let name = match field {
            "source.host" if !nested => "source_host",
            "destination.host" if !nested => dest_host_field,
            other => other,
        };
        format!("{name:?}")
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn endpoint(obj: &Map<String, Value>, field: &str) -> Result<NetworkEndpoint, String> {
    match obj.get(field) {
        Some(Value::Object(inner)) => {
            let qualify = |key: &str, e: String| {
                e.replacen(&format!("{key:?}"), &format!("\"{field}.{key}\""), 1)
            };
            let host = string(inner, "host").map_err(|e| qualify("host", e))?;
            let port = port(inner, "port").map_err(|e| qualify("port", e))?;
            Ok(NetworkEndpoint::new(host, port))
        }
        Some(other) => Err(format!(
            "field {field:?}: expected an object {{\"host\", \"port\"}}, got {}",
            kind(other)
        )),
        None => Err(format!("missing field {field:?}")),
    }
}

fn string(obj: &Map<String, Value>, field: &str) -> Result<String, String> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("field {field:?}: empty")),
        Some(other) => Err(format!(
            "field {field:?}: expected a string, got {}",
            kind(other)
        )),
        None => Err(format!("field {field:?}: missing")),
    }
}

fn optional_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field {field:?}: expected a string, got {}",
            kind(other)
        )),
    }
}

fn unsigned(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("field {field:?}: {n} is not a non-negative integer")),
        Some(other) => Err(format!(
            "field {field:?}: expected an integer, got {}",
            kind(other)
        )),
    }
}

fn port(obj: &Map<String, Value>, field: &str) -> Result<u16, String> {
    let value = match obj.get(field) {
        Some(Value::String(s)) => s
            .parse::<u64>()
            .map_err(|_| format!("field {field:?}: {s:?} is not a port number"))?,
        _ => unsigned(obj, field)?.ok_or_else(|| format!("field {field:?}: missing"))?,
    };
    u16::try_from(value).map_err(|_| format!("field {field:?}: {value} is not a port number"))
}

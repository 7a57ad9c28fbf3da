//! The library/import path: one [`TrafficObservation`] (a request between two endpoints
//! named by host) merged into the topology.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use super::evidence::Evidence;
use super::limits::{Full, MAX_LABEL_BYTES, MAX_NAME_BYTES, TimestampError, is_printable};
use super::{
    DependencyKey, NewEndpoint, Seen, Topology, protocol_for, unknown_client_name,
    unknown_server_name,
};
use crate::model::Transport;
use crate::observation::{TrafficObservation, is_known_protocol};
use crate::registry::WorkloadDirectory;
use crate::time::now_unix_ns;

/// Why an observation was refused; names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObservationError {
    #[error("field `{field}`: must not be empty")]
    EmptyHost { field: &'static str },
    #[error("field `{field}`: {len} bytes is longer than the {max} accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A control character (or another invisible one) in a name or label: names reach
    /// terminals, Prometheus labels and DOT files.
    #[error("field `{field}`: character {index} ({code}) is not printable", code = unicode_name(*character))]
    NonPrintable {
        field: &'static str,
        /// 0-based, in characters.
        index: usize,
        character: char,
    },
    #[error("field `protocol`: unknown protocol `{0}` (known: {known})", known = crate::observation::PROTOCOLS.join(", "))]
    UnknownProtocol(String),
    #[error("field `latency_ms`: must be a finite number >= 0, got {0}")]
    Latency(f64),
    /// `timestamp_unix_ns` outside the accepted window.
    #[error("{0}")]
    Timestamp(TimestampError),
    /// It needed a new service or dependency and the topology is full.
    #[error("{0}")]
    Full(Full),
}

impl ObservationError {
    /// The field at fault; `None` when the observation is fine but did not fit.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::EmptyHost { field }
            | Self::TooLong { field, .. }
            | Self::NonPrintable { field, .. } => Some(field),
            Self::UnknownProtocol(_) => Some("protocol"),
            Self::Latency(_) => Some("latency_ms"),
            Self::Timestamp(e) => Some(e.field),
            Self::Full(_) => None,
        }
    }

    /// What is wrong, without the `field `...`: ` the message starts with (for callers
    /// that name the field themselves).
    pub fn reason(&self) -> String {
        let text = self.to_string();
        match self.field() {
            Some(field) => text
                .strip_prefix(&format!("field `{field}`: "))
                .map_or_else(|| text.clone(), str::to_owned),
            None => text,
        }
    }
}

fn unicode_name(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}

/// A name or label of an observation: at most `max` bytes, every character printable.
pub fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), ObservationError> {
    if value.len() > max {
        return Err(ObservationError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    match value.chars().enumerate().find(|(_, c)| !is_printable(*c)) {
        Some((index, character)) => Err(ObservationError::NonPrintable {
            field,
            index,
            character,
        }),
        None => Ok(()),
    }
}

/// Everything the topology checks of one observation by itself, before it looks at its
/// clock or its size: hosts present, names and labels within [`MAX_NAME_BYTES`] /
/// [`MAX_LABEL_BYTES`] and printable, latency a finite number >= 0, protocol known (or
/// empty). The importers apply it to what they produce; [`Topology::observe_traffic`]
/// applies it first.
pub fn check_fields(o: &TrafficObservation) -> Result<(), ObservationError> {
    for (field, host) in [
        ("source.host", &o.source.host),
        ("destination.host", &o.destination.host),
    ] {
        let host = host.trim();
        if host.is_empty() {
            return Err(ObservationError::EmptyHost { field });
        }
        check_text(field, host, MAX_NAME_BYTES)?;
    }
    for (field, label) in [("method", &o.method), ("path", &o.path)] {
        check_text(field, label.as_deref().unwrap_or_default(), MAX_LABEL_BYTES)?;
    }
    if !o.latency_ms.is_finite() || o.latency_ms < 0.0 {
        return Err(ObservationError::Latency(o.latency_ms));
    }
    let protocol = o.protocol.trim().to_ascii_lowercase();
    if !protocol.is_empty() && !is_known_protocol(&protocol) {
        return Err(ObservationError::UnknownProtocol(o.protocol.clone()));
    }
    Ok(())
}

impl Topology {
    /// Merges one request. Hosts that are IP addresses are named like agent records
    /// (registry, DNS answer, `ip:port` / `ip`); other hosts name their service as they
    /// are (lower-cased). An empty protocol means "guess from the port".
    pub fn observe_traffic(
        &self,
        o: &TrafficObservation,
        directory: &impl WorkloadDirectory,
    ) -> Result<(), ObservationError> {
        check_fields(o)?;
        let source_host = o.source.host.trim();
        let destination_host = o.destination.host.trim();
        let protocol = o.protocol.trim().to_ascii_lowercase();
        let now = now_unix_ns();
        self.check_observation_time(o, now)?;
        let at = if o.timestamp_unix_ns > 0 {
            o.timestamp_unix_ns
        } else {
            now
        };
        let transport = if matches!(protocol.as_str(), "udp" | "dns") {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let port = o.destination.port;
        let (evidence, protocol) = if protocol.is_empty() {
            (Evidence::Port, protocol_for(transport, port).to_owned())
        } else {
            // TLS on an HTTPS port is the spec's `https` (no ALPN in an observation).
            let protocol = super::classify::https_if_http(&protocol, port, &[]).to_owned();
            (Evidence::Declared, protocol)
        };

        let source_ip = parse_ip(source_host);
        let destination_ip = parse_ip(destination_host);
        let (client, client_registered) = match source_ip {
            Some(ip) => self.name_ip(ip, directory, at, now, unknown_client_name(ip)),
            None => (source_host.to_ascii_lowercase(), false),
        };
        let (server, server_registered) = match destination_ip {
            Some(ip) => self.name_ip(ip, directory, at, now, unknown_server_name(ip, port)),
            None => (destination_host.to_ascii_lowercase(), false),
        };
        let key = DependencyKey {
            client,
            server,
            transport,
            port,
        };
        let reserved = self
            .reserve_for(&key, directory)
            .map_err(ObservationError::Full)?;
        let seen = Seen {
            first: Some(at),
            last: Some(at),
            now,
        };
        self.touch_service(&key.client, client_registered, None, seen, reserved.client);
        let host = destination_ip.map_or_else(
            || destination_host.to_ascii_lowercase(),
            |ip| ip.to_string(),
        );
        self.touch_service(
            &key.server,
            server_registered,
            Some(NewEndpoint {
                host: &host,
                port,
                port_guess: key.protocol(),
                evidence: Some((evidence, &protocol)),
            }),
            seen,
            reserved.server,
        );
        let ipv6 = destination_ip.map(|ip| ip.is_ipv6());
        self.record(key, at, now, reserved.dependency, &protocol, |stats| {
            stats.record_request(o, evidence, &protocol, at, ipv6);
        });
        self.observations_ingested.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Checks `timestamp_unix_ns` against the accepted window; counts a refusal.
    pub fn check_observation_time(
        &self,
        o: &TrafficObservation,
        now: u64,
    ) -> Result<(), ObservationError> {
        self.limits
            .check_timestamp("timestamp_unix_ns", o.timestamp_unix_ns, now, true)
            .map_err(|error| {
                self.hits.hit(error.limit());
                ObservationError::Timestamp(error)
            })
    }

    fn name_ip(
        &self,
        ip: IpAddr,
        directory: &impl WorkloadDirectory,
        at: u64,
        now: u64,
        unknown: String,
    ) -> (String, bool) {
        match self.known_name(&ip, directory, at, now) {
            (Some(name), registered) => (name, registered),
            (None, _) => (unknown, false),
        }
    }
}

fn parse_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

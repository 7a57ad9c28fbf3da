//! Wire types become domain types here, and go no further: a `FlowRecord` becomes a
//! [`FlowObservation`], a wire `Workload` a [`Workload`]; every rejection names its field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_proto::v1 as wire;
use weft_topology::model::{
    Direction, DnsAnswer, FlowObservation, L7Info, LatencyBucket, RequestGroup, Transport, Workload,
};
use weft_topology::topology::limits::{MAX_LABEL_BYTES, MAX_NAME_BYTES};

/// Why a wire value could not become a domain value. Every variant names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("field `{field}`: an IP address must be 4 or 16 bytes, got {len}")]
    IpLength { field: &'static str, len: usize },
    #[error("field `{field}`: port {value} is out of range (0..=65535)")]
    PortRange { field: &'static str, value: u32 },
    #[error("field `{field}`: must be specified")]
    Unspecified { field: &'static str },
    #[error("field `{field}`: unknown enum value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    #[error("field `{field}`: `{value}` is not an IP address")]
    InvalidAddress { field: &'static str, value: String },
    #[error("field `{field}`: must not be empty")]
    Empty { field: &'static str },
    #[error("field `{field}`: unknown protocol `{value}` (known: {known})", known = weft_topology::observation::PROTOCOLS.join(", "))]
    UnknownProtocol { field: &'static str, value: String },
    #[error("field `{field}`: {len} bytes is longer than the {max} accepted")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

impl ConversionError {
    /// The wire field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            Self::IpLength { field, .. }
            | Self::PortRange { field, .. }
            | Self::Unspecified { field }
            | Self::UnknownEnum { field, .. }
            | Self::InvalidAddress { field, .. }
            | Self::Empty { field }
            | Self::UnknownProtocol { field, .. }
            | Self::TooLong { field, .. } => field,
        }
    }
}

/// Refuses a text longer than `max` bytes: names and labels are kept for as long as the
/// service or dependency, so their length bounds memory as much as their number.
/// ALPN protocol names kept per flow record.
const MAX_ALPN: usize = 8;

fn bounded(field: &'static str, text: &str, max: usize) -> Result<(), ConversionError> {
    if text.len() > max {
        Err(ConversionError::TooLong {
            field,
            len: text.len(),
            max,
        })
    } else {
        Ok(())
    }
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A host name without a trailing `:port` (IPv6 literals in brackets keep their colons).
fn host_without_port(text: &str) -> &str {
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => text,
    }
}

fn l7_info(record: &wire::FlowRecord) -> Result<L7Info, ConversionError> {
    bounded("server_name", &record.server_name, MAX_NAME_BYTES)?;
    bounded("tls_sni", &record.tls_sni, MAX_NAME_BYTES)?;
    for name in record.tls_alpn.iter().take(MAX_ALPN) {
        bounded("tls_alpn", name, MAX_LABEL_BYTES)?;
    }
    for answer in &record.dns_answers {
        bounded("dns_answers.name", &answer.name, MAX_NAME_BYTES)?;
    }
    for group in &record.request_groups {
        bounded("request_groups.method", &group.method, MAX_LABEL_BYTES)?;
        bounded("request_groups.path", &group.path, MAX_LABEL_BYTES)?;
    }
    let protocol = match non_empty(&record.protocol) {
        Some(name) => {
            let name = name.to_ascii_lowercase();
            if !weft_topology::observation::is_known_protocol(&name) {
                return Err(ConversionError::UnknownProtocol {
                    field: "protocol",
                    value: record.protocol.clone(),
                });
            }
            Some(name)
        }
        None => None,
    };
    let dns_answers = record
        .dns_answers
        .iter()
        .filter_map(|answer| {
            let name = non_empty(&answer.name)?;
            Some(
                ip_from_bytes("dns_answers.ip", &answer.ip).map(|ip| DnsAnswer {
                    name: name.trim_end_matches('.').to_ascii_lowercase(),
                    ip,
                    ttl_seconds: answer.ttl_seconds,
                }),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(L7Info {
        protocol_from_payload: protocol.is_some() && record.protocol_from_payload,
        protocol,
        server_name: non_empty(host_without_port(record.server_name.trim()))
            .map(|name| name.to_ascii_lowercase()),
        tls_sni: non_empty(record.tls_sni.trim()).map(|name| name.to_ascii_lowercase()),
        // More ALPN names than a client offers in practice are left out, not refused.
        tls_alpn: record
            .tls_alpn
            .iter()
            .take(MAX_ALPN)
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect(),
        request_groups: record
            .request_groups
            .iter()
            .map(|group| RequestGroup {
                method: group.method.clone(),
                path: group.path.clone(),
                status: group.status,
                count: group.count,
                errors: group.errors,
                latency_sum_ns: group.latency_sum_ns,
            })
            .collect(),
        dns_answers,
    })
}

fn ip_from_bytes(field: &'static str, bytes: &[u8]) -> Result<IpAddr, ConversionError> {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if let Ok(octets) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(octets)));
    }
    Err(ConversionError::IpLength {
        field,
        len: bytes.len(),
    })
}

fn port(field: &'static str, value: u32) -> Result<u16, ConversionError> {
    u16::try_from(value).map_err(|_| ConversionError::PortRange { field, value })
}

fn transport(value: i32) -> Result<Transport, ConversionError> {
    const FIELD: &str = "transport";
    match wire::Transport::try_from(value) {
        Ok(wire::Transport::Tcp) => Ok(Transport::Tcp),
        Ok(wire::Transport::Udp) => Ok(Transport::Udp),
        Ok(wire::Transport::Unspecified) => Err(ConversionError::Unspecified { field: FIELD }),
        Err(_) => Err(ConversionError::UnknownEnum {
            field: FIELD,
            value,
        }),
    }
}

fn direction(value: i32) -> Result<Direction, ConversionError> {
    const FIELD: &str = "direction";
    match wire::FlowDirection::try_from(value) {
        Ok(wire::FlowDirection::Outbound) => Ok(Direction::Outbound),
        Ok(wire::FlowDirection::Inbound) => Ok(Direction::Inbound),
        Ok(wire::FlowDirection::Unspecified) => Err(ConversionError::Unspecified { field: FIELD }),
        Err(_) => Err(ConversionError::UnknownEnum {
            field: FIELD,
            value,
        }),
    }
}

/// A wire flow record as a validated [`FlowObservation`].
pub fn flow_from_wire(record: &wire::FlowRecord) -> Result<FlowObservation, ConversionError> {
    let local_ip = ip_from_bytes("local_ip", &record.local_ip)?;
    let remote_ip = ip_from_bytes("remote_ip", &record.remote_ip)?;
    let mut latency: Vec<LatencyBucket> = record
        .latency
        .iter()
        .map(|bucket| LatencyBucket {
            upper_bound_ns: bucket.upper_bound_ns,
            count: bucket.count,
        })
        .collect();
    latency.sort_by_key(|bucket| bucket.upper_bound_ns);
    bounded("workload", &record.workload, MAX_NAME_BYTES)?;
    let workload = Some(record.workload.trim())
        .filter(|name| !name.is_empty())
        .map(str::to_owned);
    Ok(FlowObservation {
        workload,
        interface: record.interface.clone(),
        transport: transport(record.transport)?,
        local_ip,
        local_port: port("local_port", record.local_port)?,
        remote_ip,
        remote_port: port("remote_port", record.remote_port)?,
        direction: direction(record.direction)?,
        packets_out: record.packets_out,
        packets_in: record.packets_in,
        bytes_out: record.bytes_out,
        bytes_in: record.bytes_in,
        payload_bytes_out: record.payload_bytes_out,
        payload_bytes_in: record.payload_bytes_in,
        first_seen_unix_ns: record.first_seen_unix_ns,
        last_seen_unix_ns: record.last_seen_unix_ns,
        tcp_flags_out: record.tcp_flags_out,
        tcp_flags_in: record.tcp_flags_in,
        handshake_rtt_ns: Some(record.handshake_rtt_ns).filter(|rtt| *rtt > 0),
        requests: record.requests,
        latency_sum_ns: record.latency_sum_ns,
        latency,
        first_record: record.first_record,
        opened: record.opened,
        ended: record.ended,
        resets: record.resets,
        l7: l7_info(record)?,
    })
}

/// A wire workload as a validated [`Workload`].
pub fn workload_from_wire(workload: &wire::Workload) -> Result<Workload, ConversionError> {
    let name = workload.name.trim();
    if name.is_empty() {
        return Err(ConversionError::Empty {
            field: "workload.name",
        });
    }
    bounded("workload.name", name, MAX_NAME_BYTES)?;
    let addresses = workload
        .addresses
        .iter()
        .map(|text| {
            text.trim()
                .parse::<IpAddr>()
                .map_err(|_| ConversionError::InvalidAddress {
                    field: "workload.addresses",
                    value: text.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Workload {
        name: name.to_owned(),
        interface: workload.interface.clone(),
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_record() -> wire::FlowRecord {
        wire::FlowRecord {
            workload: "web".into(),
            interface: "veth-web".into(),
            transport: wire::Transport::Tcp as i32,
            local_ip: vec![10, 0, 0, 1],
            local_port: 40000,
            remote_ip: vec![10, 0, 0, 2],
            remote_port: 5432,
            direction: wire::FlowDirection::Outbound as i32,
            ..Default::default()
        }
    }

    #[test]
    fn valid_record_converts() {
        let observation = flow_from_wire(&valid_record()).expect("valid record");
        assert_eq!(observation.local_ip, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(observation.remote_port, 5432);
        assert_eq!(observation.direction, Direction::Outbound);
        assert_eq!(observation.transport, Transport::Tcp);
        assert_eq!(observation.handshake_rtt_ns, None);
    }

    #[test]
    fn names_longer_than_a_dns_name_are_refused_with_their_field() {
        for (field, set) in [
            (
                "workload",
                (|r: &mut wire::FlowRecord| r.workload = "w".repeat(254)) as fn(&mut _),
            ),
            ("server_name", |r| r.server_name = "s".repeat(1 << 20)),
            ("dns_answers.name", |r| {
                r.dns_answers.push(wire::DnsAnswer {
                    name: "d".repeat(300),
                    ip: vec![10, 0, 0, 9],
                    ttl_seconds: 60,
                })
            }),
            ("request_groups.path", |r| {
                r.request_groups.push(wire::RequestGroup {
                    path: "/".repeat(257),
                    ..Default::default()
                })
            }),
        ] {
            let mut record = valid_record();
            set(&mut record);
            let error = flow_from_wire(&record).unwrap_err();
            assert_eq!(error.field(), field, "{error}");
        }
        let mut record = valid_record();
        record.workload = "w".repeat(253);
        assert!(flow_from_wire(&record).is_ok());
    }

    #[test]
    fn ipv6_addresses_convert_from_16_bytes() {
        let mut record = valid_record();
        record.local_ip = vec![0; 16];
        record.remote_ip = Ipv6Addr::LOCALHOST.octets().to_vec();
        let observation = flow_from_wire(&record).expect("valid record");
        assert_eq!(observation.remote_ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
    }

    #[test]
    fn local_ip_of_wrong_length_names_the_field() {
        let mut record = valid_record();
        record.local_ip = vec![1, 2, 3];
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "local_ip");
        assert!(error.to_string().contains("local_ip"), "{error}");
    }

    #[test]
    fn remote_ip_of_wrong_length_names_the_field() {
        let mut record = valid_record();
        record.remote_ip = vec![];
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "remote_ip");
        assert!(error.to_string().contains("remote_ip"), "{error}");
    }

    #[test]
    fn port_above_65535_names_the_field() {
        let mut record = valid_record();
        record.remote_port = 65536;
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "remote_port");
        let mut record = valid_record();
        record.local_port = 70000;
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "local_port");
        assert!(error.to_string().contains("70000"), "{error}");
    }

    #[test]
    fn unspecified_direction_names_the_field() {
        let mut record = valid_record();
        record.direction = wire::FlowDirection::Unspecified as i32;
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error, ConversionError::Unspecified { field: "direction" });
        record.direction = 42;
        assert_eq!(flow_from_wire(&record).unwrap_err().field(), "direction");
    }

    #[test]
    fn unspecified_transport_names_the_field() {
        let mut record = valid_record();
        record.transport = 0;
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "transport");
    }

    #[test]
    fn latency_buckets_are_sorted_by_upper_bound() {
        let mut record = valid_record();
        record.latency = vec![
            wire::LatencyBucket {
                upper_bound_ns: 2_000,
                count: 1,
            },
            wire::LatencyBucket {
                upper_bound_ns: 1_000,
                count: 2,
            },
        ];
        let observation = flow_from_wire(&record).expect("valid record");
        let bounds: Vec<u64> = observation
            .latency
            .iter()
            .map(|b| b.upper_bound_ns)
            .collect();
        assert_eq!(bounds, vec![1_000, 2_000]);
    }

    #[test]
    fn l7_fields_convert() {
        let mut record = valid_record();
        record.protocol = "HTTP".into();
        record.protocol_from_payload = true;
        record.server_name = "API.example.com:8443".into();
        record.request_groups = vec![wire::RequestGroup {
            method: "GET".into(),
            path: "/users/{id}".into(),
            status: 500,
            count: 3,
            errors: 3,
            latency_sum_ns: 9,
        }];
        record.dns_answers = vec![wire::DnsAnswer {
            name: "db.lab.".into(),
            ip: vec![10, 0, 0, 9],
            ttl_seconds: 30,
        }];
        let l7 = flow_from_wire(&record).expect("valid record").l7;
        assert_eq!(l7.protocol.as_deref(), Some("http"));
        assert!(l7.protocol_from_payload);
        assert_eq!(l7.server_name.as_deref(), Some("api.example.com"));
        assert_eq!(l7.request_groups[0].errors, 3);
        assert_eq!(l7.dns_answers[0].name, "db.lab");
        assert_eq!(l7.dns_answers[0].ip, IpAddr::from([10, 0, 0, 9]));
    }

    #[test]
    fn unknown_protocol_and_bad_dns_ip_name_their_fields() {
        let mut record = valid_record();
        record.protocol = "gopher".into();
        let error = flow_from_wire(&record).unwrap_err();
        assert_eq!(error.field(), "protocol");
        assert!(error.to_string().contains("gopher"), "{error}");
        let mut record = valid_record();
        record.dns_answers = vec![wire::DnsAnswer {
            name: "x".into(),
            ip: vec![1, 2],
            ttl_seconds: 1,
        }];
        assert_eq!(
            flow_from_wire(&record).unwrap_err().field(),
            "dns_answers.ip"
        );
    }

    #[test]
    fn empty_protocol_is_unknown_and_server_name_loses_its_port() {
        let mut record = valid_record();
        record.protocol_from_payload = true;
        record.server_name = "[fd00::1]:443".into();
        let l7 = flow_from_wire(&record).expect("valid").l7;
        assert_eq!(l7.protocol, None);
        assert!(!l7.protocol_from_payload);
        assert_eq!(l7.server_name.as_deref(), Some("fd00::1"));
    }

    #[test]
    fn workload_with_bad_address_names_the_field() {
        let workload = wire::Workload {
            name: "db".into(),
            interface: "veth-db".into(),
            addresses: vec!["10.0.0.2".into(), "not-an-ip".into()],
        };
        let error = workload_from_wire(&workload).unwrap_err();
        assert_eq!(error.field(), "workload.addresses");
        assert!(error.to_string().contains("not-an-ip"));
    }

    #[test]
    fn workload_parses_v4_and_v6_addresses() {
        let workload = wire::Workload {
            name: "db".into(),
            interface: "veth-db".into(),
            addresses: vec!["10.0.0.2".into(), "fd00::2".into()],
        };
        let workload = workload_from_wire(&workload).expect("valid workload");
        assert_eq!(workload.addresses.len(), 2);
        assert!(workload.addresses[1].is_ipv6());
    }
}

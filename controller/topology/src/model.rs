//! Domain types of the observation path. They know nothing of the wire: the controller's
//! gRPC layer converts a `FlowRecord` into a [`FlowObservation`] and a wire `Workload` into
//! a [`Workload`], so the registry and the topology only ever see validated values.

use std::net::IpAddr;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Who opened the flow, seen from the workload that reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The reporting workload is the client.
    Outbound,
    /// The reporting workload is the server.
    Inbound,
}

/// One request-latency histogram bucket: `count` requests took less than
/// `upper_bound_ns` and at least the previous bucket's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyBucket {
    pub upper_bound_ns: u64,
    pub count: u64,
}

/// Traffic of one flow during one interval, as seen on one workload interface.
/// "out" leaves the workload, "in" reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowObservation {
    /// Name of the reporting workload; `None` when the agent did not name it.
    pub workload: Option<String>,
    pub interface: String,
    pub transport: Transport,
    pub local_ip: IpAddr,
    pub local_port: u16,
    pub remote_ip: IpAddr,
    pub remote_port: u16,
    pub direction: Direction,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub payload_bytes_out: u64,
    pub payload_bytes_in: u64,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    pub tcp_flags_out: u32,
    pub tcp_flags_in: u32,
    /// Handshake RTT, if this record carries it.
    pub handshake_rtt_ns: Option<u64>,
    pub requests: u64,
    pub latency_sum_ns: u64,
    /// Buckets sorted by upper bound.
    pub latency: Vec<LatencyBucket>,
    pub first_record: bool,
    pub opened: bool,
    pub ended: bool,
    pub resets: u32,
    /// What the payload (or the agent's port guess) showed about the application layer.
    pub l7: L7Info,
}

impl FlowObservation {
    /// The server's port: the remote one of an outbound flow, the local one of an inbound.
    pub fn server_port(&self) -> u16 {
        match self.direction {
            Direction::Outbound => self.remote_port,
            Direction::Inbound => self.local_port,
        }
    }

    /// The application protocol the agent named, with TLS that carries HTTP as `https`
    /// ([`crate::topology::classify::https_if_http`]).
    pub fn app_protocol(&self) -> Option<&str> {
        self.l7.protocol.as_deref().map(|p| {
            crate::topology::classify::https_if_http(p, self.server_port(), &self.l7.tls_alpn)
        })
    }
}

/// Application-layer facts of one flow record. `Default` is "nothing known".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct L7Info {
    /// Detected application protocol, one of [`crate::observation::PROTOCOLS`].
    pub protocol: Option<String>,
    /// `protocol` came from payload bytes rather than from the port.
    pub protocol_from_payload: bool,
    /// TLS SNI or HTTP Host (without a port) the client sent.
    pub server_name: Option<String>,
    /// TLS SNI of the flow's ClientHello, when seen.
    pub tls_sni: Option<String>,
    /// TLS ALPN protocols the client offered, when seen.
    pub tls_alpn: Vec<String>,
    pub request_groups: Vec<RequestGroup>,
    pub dns_answers: Vec<DnsAnswer>,
}

/// Requests of one kind: same method, path pattern and status.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestGroup {
    pub method: String,
    pub path: String,
    /// 0 when the protocol has none.
    pub status: u32,
    pub count: u64,
    pub errors: u64,
    pub latency_sum_ns: u64,
}

/// A DNS answer seen on the wire: `name` resolves to `ip` for `ttl_seconds`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswer {
    pub name: String,
    pub ip: IpAddr,
    pub ttl_seconds: u32,
}

/// A workload an agent hosts: a service instance behind one host-side interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub interface: String,
    pub addresses: Vec<IpAddr>,
}

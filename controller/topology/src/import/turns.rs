//! Connections and datagram flows of a capture, split into request/response turns with the
//! kernel program's rules (`track_turn` in agent-ebpf):
//!
//! - the client is the sender of a SYN or of a flow's first UDP datagram, the receiver of a
//!   SYN-ACK, or, for a connection already running when the capture started, the side with
//!   the higher (ephemeral-looking) port;
//! - client payload at the start of a flow or after server payload begins a request turn;
//! - the first server payload after a client turn completes it: the request's latency is the
//!   time between the two packets; server payload in a row belongs to the same response;
//! - a pure ACK or FIN of an unknown connection starts nothing, and a SYN on the 5-tuple of a
//!   closed connection starts a new one.
//!
//! Packets are taken in capture order, one at a time, as the kernel program sees them: no
//! reordering by sequence number.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use weft_l7::{Protocol, Transport};

use super::packet::{L4, Segment, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::observation::{NetworkEndpoint, TrafficObservation};
use crate::topology::{MAX_LABEL_BYTES, MAX_NAME_BYTES, check_text};

/// Whether a method or path from the wire is one the topology takes; one it would refuse is
/// left out of the observation (lossy UTF-8 of a 128-byte head can be 384 bytes).
fn label_fits(field: &'static str, label: &str) -> bool {
    check_text(field, label, MAX_LABEL_BYTES).is_ok()
}

/// Bytes of each turn (and of each direction's first payload) kept for parsing, as the
/// kernel program's payload samples.
const HEAD_BYTES: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey {
    l4: L4,
    a: (IpAddr, u16),
    b: (IpAddr, u16),
}

impl FlowKey {
    fn of(s: &Segment<'_>) -> Self {
        let (x, y) = ((s.src, s.sport), (s.dst, s.dport));
        let (a, b) = if x <= y { (x, y) } else { (y, x) };
        Self { l4: s.l4, a, b }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    None,
    Client,
    Server,
}

#[derive(Debug, Clone)]
struct Turn {
    start_ns: u64,
    response_ns: Option<u64>,
    request_bytes: u64,
    response_bytes: u64,
    request_head: Vec<u8>,
    response_head: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Flow {
    l4: L4,
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    first_ns: u64,
    side: Side,
    turns: Vec<Turn>,
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    client_bytes: u64,
    server_bytes: u64,
    reset: bool,
    fin_client: bool,
    fin_server: bool,
}

impl Flow {
    fn closed(&self) -> bool {
        self.reset || (self.fin_client && self.fin_server)
    }
}

fn extend_head(head: &mut Vec<u8>, bytes: &[u8]) {
    let room = HEAD_BYTES.saturating_sub(head.len());
    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Turns packets into observations.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    flows: HashMap<FlowKey, Flow>,
    done: Vec<Flow>,
    /// Names learned from DNS answers.
    names: HashMap<IpAddr, String>,
}

impl Tracker {
    pub(crate) fn packet(&mut self, s: &Segment<'_>, ts_ns: u64) {
        let key = FlowKey::of(s);
        let syn = s.flags & TCP_SYN != 0;
        let ack = s.flags & TCP_ACK != 0;
        let is_tcp = s.l4 == L4::Tcp;
        if let Some(existing) = self.flows.get(&key)
            && is_tcp
            && syn
            && !ack
            && existing.closed()
            && let Some(old) = self.flows.remove(&key)
        {
            self.done.push(old);
        }
        let flow = match self.flows.entry(key) {
            Entry::Occupied(existing) => existing.into_mut(),
            Entry::Vacant(_) if is_tcp && !syn && s.payload_len == 0 => return,
            Entry::Vacant(vacant) => {
                let sender = (s.src, s.sport);
                let receiver = (s.dst, s.dport);
                let sender_is_client = if !is_tcp || (syn && !ack) {
                    true
                } else if syn && ack {
                    false
                } else {
                    s.sport > s.dport
                };
                let (client, server) = if sender_is_client {
                    (sender, receiver)
                } else {
                    (receiver, sender)
                };
                vacant.insert(Flow {
                    l4: s.l4,
                    client,
                    server,
                    first_ns: ts_ns,
                    side: Side::None,
                    turns: Vec::new(),
                    client_first: Vec::new(),
                    server_first: Vec::new(),
                    client_bytes: 0,
                    server_bytes: 0,
                    reset: false,
                    fin_client: false,
                    fin_server: false,
                })
            }
        };
        let from_client = (s.src, s.sport) == flow.client;
        if s.payload_len > 0 {
            if from_client {
                flow.client_bytes += s.payload_len;
                if flow.client_first.is_empty() {
                    extend_head(&mut flow.client_first, s.payload);
                }
                match flow.turns.last_mut() {
                    Some(turn) if flow.side == Side::Client => {
                        turn.request_bytes += s.payload_len;
                        extend_head(&mut turn.request_head, s.payload);
                    }
                    _ => {
                        let mut head = Vec::new();
                        extend_head(&mut head, s.payload);
                        flow.turns.push(Turn {
                            start_ns: ts_ns,
                            response_ns: None,
                            request_bytes: s.payload_len,
                            response_bytes: 0,
                            request_head: head,
                            response_head: Vec::new(),
                        });
                    }
                }
                flow.side = Side::Client;
            } else {
                flow.server_bytes += s.payload_len;
                if flow.server_first.is_empty() {
                    extend_head(&mut flow.server_first, s.payload);
                }
                if flow.side != Side::None
                    && let Some(turn) = flow.turns.last_mut()
                {
                    if flow.side == Side::Client {
                        turn.response_ns = Some(ts_ns);
                    }
                    turn.response_bytes += s.payload_len;
                    extend_head(&mut turn.response_head, s.payload);
                }
                flow.side = Side::Server;
                if flow.server.1 == 53 || flow.server.1 == 5353 {
                    // A name the topology would refuse (escaped bytes make a 253-byte name
                    // up to four times longer) does not name the address.
                    for (name, address, _ttl) in weft_l7::dns_answers(s.payload, is_tcp) {
                        if check_text("dns name", &name, MAX_NAME_BYTES).is_ok() {
                            self.names.insert(address, name);
                        }
                    }
                }
            }
        }
        if is_tcp {
            if s.flags & TCP_RST != 0 {
                flow.reset = true;
            }
            if s.flags & TCP_FIN != 0 {
                if from_client {
                    flow.fin_client = true;
                } else {
                    flow.fin_server = true;
                }
            }
            if s.flags & TCP_RST != 0
                && let Some(flow) = self.flows.remove(&key)
            {
                self.done.push(flow);
            }
        }
    }

    /// Every flow as observations, names from DNS applied; the flag marks a flow-level
    /// observation (no complete turn).
    pub(crate) fn finish(mut self) -> Vec<(TrafficObservation, bool)> {
        let mut flows = std::mem::take(&mut self.done);
        flows.extend(self.flows.drain().map(|(_, f)| f));
        let mut out = Vec::new();
        for flow in flows {
            self.observations(flow, &mut out);
        }
        out
    }

    fn endpoint(&self, (ip, port): (IpAddr, u16)) -> NetworkEndpoint {
        let host = self
            .names
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| ip.to_string());
        NetworkEndpoint::new(host, port)
    }

    fn observations(&self, flow: Flow, out: &mut Vec<(TrafficObservation, bool)>) {
        let transport = match flow.l4 {
            L4::Tcp => Transport::Tcp,
            L4::Udp => Transport::Udp,
        };
        let detection = weft_l7::detect(
            transport,
            flow.server.1,
            &flow.client_first,
            &flow.server_first,
        );
        let protocol = detection.protocol;
        let has_status = matches!(
            protocol,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::WebSocket
        );
        let source = self.endpoint(flow.client);
        let destination = self.endpoint(flow.server);
        let complete: Vec<&Turn> = flow
            .turns
            .iter()
            .filter(|t| t.response_ns.is_some())
            .collect();
        if complete.is_empty() {
            out.push((
                TrafficObservation {
                    timestamp_unix_ns: flow.first_ns,
                    source,
                    destination,
                    protocol: protocol.as_str().to_string(),
                    bytes_sent: flow.client_bytes,
                    bytes_received: flow.server_bytes,
                    latency_ms: 0.0,
                    status_code: None,
                    method: None,
                    path: None,
                    error: flow.reset,
                },
                true,
            ));
            return;
        }
        let last = complete.len() - 1;
        for (i, turn) in complete.into_iter().enumerate() {
            let request = weft_l7::parse_request(protocol, &turn.request_head);
            let response = weft_l7::parse_response(protocol, &turn.response_head);
            // Captures merged from several interfaces can step back in time: never negative.
            let latency_ns = turn
                .response_ns
                .unwrap_or(turn.start_ns)
                .saturating_sub(turn.start_ns);
            out.push((
                TrafficObservation {
                    timestamp_unix_ns: turn.start_ns,
                    source: source.clone(),
                    destination: destination.clone(),
                    protocol: protocol.as_str().to_string(),
                    bytes_sent: turn.request_bytes,
                    bytes_received: turn.response_bytes,
                    latency_ms: latency_ns as f64 / 1e6,
                    status_code: if has_status {
                        response.as_ref().and_then(|r| r.status)
                    } else {
                        None
                    },
                    method: request
                        .as_ref()
                        .map(|r| r.method.clone())
                        .filter(|m| label_fits("method", m)),
                    path: request
                        .and_then(|r| r.path)
                        .filter(|p| label_fits("path", p)),
                    error: response.is_some_and(|r| r.error) || (flow.reset && i == last),
                },
                false,
            ));
        }
    }
}

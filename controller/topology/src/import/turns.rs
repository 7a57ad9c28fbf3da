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

/// Bytes of each direction's first payload kept for protocol detection, as the kernel
/// program's payload samples.
const HEAD_BYTES: usize = 128;
/// Bytes of each side of a turn kept for counting requests: enough for the frames of many
/// HTTP/2 streams or AMQP methods written together. A turn longer than this is parsed on its
/// first bytes, as the agent does.
const TURN_BYTES: usize = 16 * 1024;

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

/// One application request (or WebSocket message) of a flow, as the flow's
/// [`weft_l7::Session`] counted it.
#[derive(Debug, Clone)]
struct CallSeen {
    start_ns: u64,
    latency_ns: u64,
    /// Payload bytes of the turns this call stands for (a turn with several calls gives its
    /// bytes to the first; turns without a call, such as handshakes, to the next call).
    bytes_sent: u64,
    bytes_received: u64,
    method: Option<String>,
    path: Option<String>,
    status: Option<u16>,
    error: bool,
    message: bool,
}

#[derive(Debug, Clone)]
struct Flow {
    l4: L4,
    client: (IpAddr, u16),
    server: (IpAddr, u16),
    first_ns: u64,
    side: Side,
    /// The turn in progress.
    turn: Option<Turn>,
    /// Complete turns seen.
    turns_done: u64,
    session: Option<weft_l7::Session>,
    calls: Vec<CallSeen>,
    /// Bytes of turns that gave no call yet: (sent, received).
    carry: (u64, u64),
    client_first: Vec<u8>,
    server_first: Vec<u8>,
    /// What the client sent before the server's first payload, up to [`TURN_BYTES`]: a
    /// TLS ClientHello in full, for its SNI and ALPN.
    client_head: Vec<u8>,
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
    extend_to(head, bytes, HEAD_BYTES);
}

fn extend_to(head: &mut Vec<u8>, bytes: &[u8], limit: usize) {
    let room = limit.saturating_sub(head.len());
    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

impl Flow {
    fn transport(&self) -> Transport {
        match self.l4 {
            L4::Tcp => Transport::Tcp,
            L4::Udp => Transport::Udp,
        }
    }

    fn protocol(&self) -> Protocol {
        weft_l7::detect(
            self.transport(),
            self.server.1,
            &self.client_first,
            &self.server_first,
        )
        .protocol
    }

    /// Counts the requests of the turn in progress, if it was answered; forgets its bytes.
    fn settle_turn(&mut self) {
        let Some(turn) = self.turn.take() else {
            return;
        };
        let Some(response_ns) = turn.response_ns else {
            return;
        };
        self.turns_done += 1;
        if self.session.is_none() {
            // Both first payloads are known once a turn is answered: detection is final.
            self.session = Some(weft_l7::Session::new(self.protocol()));
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let calls = session.turn(&weft_l7::Turn {
            request: &turn.request_head,
            request_complete: turn.request_bytes <= turn.request_head.len() as u64,
            response: &turn.response_head,
            response_complete: turn.response_bytes <= turn.response_head.len() as u64,
            start_ns: turn.start_ns,
            // Captures merged from several interfaces can step back in time: never negative.
            latency_ns: response_ns.saturating_sub(turn.start_ns),
        });
        self.carry.0 += turn.request_bytes;
        self.carry.1 += turn.response_bytes;
        self.take_calls(calls);
    }

    fn take_calls(&mut self, calls: Vec<weft_l7::Call>) {
        let protocol = self
            .session
            .as_ref()
            .map_or(Protocol::Tcp, |s| s.protocol());
        let has_status = matches!(
            protocol,
            Protocol::Http1 | Protocol::Http2 | Protocol::Grpc | Protocol::WebSocket
        );
        for call in calls {
            let (sent, received) = std::mem::take(&mut self.carry);
            let error = call.error();
            let request = call.request;
            self.calls.push(CallSeen {
                start_ns: call.start_ns,
                latency_ns: call.latency_ns,
                bytes_sent: sent,
                bytes_received: received,
                method: request
                    .as_ref()
                    .map(|r| r.method.clone())
                    .filter(|m| label_fits("method", m)),
                path: request
                    .and_then(|r| r.path)
                    .filter(|p| label_fits("path", p)),
                status: if has_status {
                    call.response.and_then(|r| r.status)
                } else {
                    None
                },
                error,
                message: call.kind == weft_l7::CallKind::Message,
            });
        }
    }

    /// The flow is over: the last turn and every open request.
    fn finish(&mut self) {
        self.settle_turn();
        if let Some(session) = self.session.as_mut() {
            let calls = session.flush(true);
            self.take_calls(calls);
        }
        if let Some(last) = self.calls.last_mut() {
            last.bytes_sent += self.carry.0;
            last.bytes_received += self.carry.1;
            self.carry = (0, 0);
        }
    }
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
                    turn: None,
                    turns_done: 0,
                    session: None,
                    calls: Vec::new(),
                    carry: (0, 0),
                    client_first: Vec::new(),
                    server_first: Vec::new(),
                    client_head: Vec::new(),
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
                if flow.server_bytes == 0 {
                    extend_to(&mut flow.client_head, s.payload, TURN_BYTES);
                }
                match flow.turn.as_mut() {
                    Some(turn) if flow.side == Side::Client => {
                        turn.request_bytes += s.payload_len;
                        extend_to(&mut turn.request_head, s.payload, TURN_BYTES);
                    }
                    _ => {
                        flow.settle_turn();
                        let mut head = Vec::new();
                        extend_to(&mut head, s.payload, TURN_BYTES);
                        flow.turn = Some(Turn {
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
                    && let Some(turn) = flow.turn.as_mut()
                {
                    if flow.side == Side::Client {
                        turn.response_ns = Some(ts_ns);
                    }
                    turn.response_bytes += s.payload_len;
                    extend_to(&mut turn.response_head, s.payload, TURN_BYTES);
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

    /// Every flow as observations, names from DNS applied (the flag marks a flow-level
    /// observation: no request), and a summary of every flow, in order of first packet.
    pub(crate) fn finish_with_flows(
        mut self,
    ) -> (Vec<(TrafficObservation, bool)>, Vec<super::FlowSummary>) {
        let mut flows = std::mem::take(&mut self.done);
        flows.extend(self.flows.drain().map(|(_, f)| f));
        flows.sort_by_key(|f| (f.first_ns, f.client, f.server));
        let mut out = Vec::new();
        let mut summaries = Vec::new();
        for flow in flows {
            self.observations(flow, &mut out, &mut summaries);
        }
        (out, summaries)
    }

    fn endpoint(&self, (ip, port): (IpAddr, u16)) -> NetworkEndpoint {
        let host = self
            .names
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| ip.to_string());
        NetworkEndpoint::new(host, port)
    }

    fn observations(
        &self,
        mut flow: Flow,
        out: &mut Vec<(TrafficObservation, bool)>,
        summaries: &mut Vec<super::FlowSummary>,
    ) {
        flow.finish();
        let protocol = flow
            .session
            .as_ref()
            .map_or_else(|| flow.protocol(), |s| s.protocol());
        let seen = summary(&flow, protocol);
        // TLS that carries HTTP (port or ALPN) is the spec's `https` in the topology; the
        // flow summary keeps what was seen on the wire.
        let protocol =
            crate::topology::classify::https_if_http(protocol.as_str(), flow.server.1, &seen.alpn)
                .to_owned();
        summaries.push(seen);
        let source = self.endpoint(flow.client);
        let destination = self.endpoint(flow.server);
        if flow.calls.is_empty() {
            // No request: no answered turn, or only a handshake.
            out.push((
                TrafficObservation {
                    timestamp_unix_ns: flow.first_ns,
                    source,
                    destination,
                    protocol: protocol.clone(),
                    bytes_sent: flow.client_bytes,
                    bytes_received: flow.server_bytes,
                    latency_ms: 0.0,
                    status_code: None,
                    method: None,
                    path: None,
                    error: flow.reset && flow.turns_done == 0,
                },
                true,
            ));
            return;
        }
        let last = flow.calls.len() - 1;
        for (i, call) in flow.calls.into_iter().enumerate() {
            out.push((
                TrafficObservation {
                    timestamp_unix_ns: call.start_ns,
                    source: source.clone(),
                    destination: destination.clone(),
                    protocol: protocol.clone(),
                    bytes_sent: call.bytes_sent,
                    bytes_received: call.bytes_received,
                    latency_ms: call.latency_ns as f64 / 1e6,
                    status_code: call.status,
                    method: call.method,
                    path: call.path,
                    error: call.error || (flow.reset && i == last),
                },
                false,
            ));
        }
    }
}

fn endpoint_text((ip, port): (IpAddr, u16)) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// What weft saw of one flow, for `--flows`.
fn summary(flow: &Flow, protocol: Protocol) -> super::FlowSummary {
    // The whole ClientHello, not only the first bytes detection looks at.
    let detection = weft_l7::detect(
        flow.transport(),
        flow.server.1,
        &flow.client_head,
        &flow.server_first,
    );
    let mut s = super::FlowSummary {
        transport: match flow.l4 {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        },
        client: endpoint_text(flow.client),
        server: endpoint_text(flow.server),
        first_unix_ns: flow.first_ns,
        protocol: protocol.as_str().to_string(),
        sni: detection.tls_sni,
        alpn: detection.tls_alpn,
        bytes_sent: flow.client_bytes,
        bytes_received: flow.server_bytes,
        reset: flow.reset,
        ..Default::default()
    };
    let last = flow.calls.len().saturating_sub(1);
    for (i, call) in flow.calls.iter().enumerate() {
        if call.message {
            s.messages += 1;
        } else {
            s.requests += 1;
        }
        s.errors += u64::from(call.error || (flow.reset && i == last));
        if let Some(m) = &call.method {
            *s.methods.entry(m.clone()).or_default() += 1;
        }
        if let Some(st) = call.status {
            *s.statuses.entry(st).or_default() += 1;
        }
        if let Some(p) = &call.path {
            *s.paths.entry(p.clone()).or_default() += 1;
        }
    }
    s
}

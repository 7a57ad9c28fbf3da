//! The most recent flows, as the agents reported them, for `GET /flows` and `weft flows`:
//! endpoints, protocol, TLS SNI/ALPN, and the requests counted on each flow (errors,
//! methods, statuses, paths), so that a user can check weft flow by flow.
//!
//! Bounded: at most [`RecentFlows::capacity`] flows, the oldest forgotten first; per flow
//! at most [`MAX_LABELS`] distinct methods, statuses and paths (the rest counted under "").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;
use weft_topology::model::{Direction, FlowObservation, Transport};

/// Distinct methods (and statuses, and paths) kept per flow.
pub const MAX_LABELS: usize = 32;
/// Flows kept by default.
pub const DEFAULT_CAPACITY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    transport: Transport,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    first_seen_unix_ns: u64,
}

/// One flow as `GET /flows` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowView {
    /// The agent (host) that reported it, and the workload, when named.
    pub host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    pub transport: &'static str,
    /// Client and server, `address:port`.
    pub client: String,
    pub server: String,
    /// Whether the reporting workload is the client ("outbound") or the server.
    pub direction: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    pub first_seen_unix_ns: u64,
    pub last_seen_unix_ns: u64,
    /// Payload bytes the reporting workload sent and received.
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Application requests (and WebSocket messages) and the failed ones.
    pub requests: u64,
    pub errors: u64,
    pub methods: BTreeMap<String, u64>,
    /// By status; 0 stands for requests without one.
    pub statuses: BTreeMap<u32, u64>,
    pub paths: BTreeMap<String, u64>,
    pub ended: bool,
}

fn count<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, overflow: K, n: u64) {
    if map.len() >= MAX_LABELS && !map.contains_key(&key) {
        *map.entry(overflow).or_default() += n;
    } else {
        *map.entry(key).or_default() += n;
    }
}

#[derive(Debug, Default)]
struct Inner {
    flows: HashMap<Key, FlowView>,
    /// Keys in order of arrival, for forgetting the oldest.
    order: VecDeque<Key>,
}

/// The recent flows; shared by the ingest path and the REST API.
#[derive(Debug)]
pub struct RecentFlows {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl Default for RecentFlows {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl RecentFlows {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds one record of a flow reported by `host`.
    pub fn record(&self, host: &str, o: &FlowObservation) {
        let outbound = o.direction == Direction::Outbound;
        let (client, server) = if outbound {
            ((o.local_ip, o.local_port), (o.remote_ip, o.remote_port))
        } else {
            ((o.remote_ip, o.remote_port), (o.local_ip, o.local_port))
        };
        let key = Key {
            host: host.to_owned(),
            transport: o.transport,
            local: (o.local_ip, o.local_port),
            remote: (o.remote_ip, o.remote_port),
            first_seen_unix_ns: o.first_seen_unix_ns,
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let inner = &mut *inner;
        if !inner.flows.contains_key(&key) {
            while inner.flows.len() >= self.capacity {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.flows.remove(&old);
                    }
                    None => break,
                }
            }
            inner.order.push_back(key.clone());
        }
        let view = inner.flows.entry(key).or_insert_with(|| FlowView {
            host: host.to_owned(),
            workload: o.workload.clone(),
            transport: o.transport.as_str(),
            client: std::net::SocketAddr::new(client.0, client.1).to_string(),
            server: std::net::SocketAddr::new(server.0, server.1).to_string(),
            direction: if outbound { "outbound" } else { "inbound" },
            protocol: None,
            server_name: None,
            sni: None,
            alpn: Vec::new(),
            first_seen_unix_ns: o.first_seen_unix_ns,
            last_seen_unix_ns: o.last_seen_unix_ns,
            bytes_out: 0,
            bytes_in: 0,
            requests: 0,
            errors: 0,
            methods: BTreeMap::new(),
            statuses: BTreeMap::new(),
            paths: BTreeMap::new(),
            ended: false,
        });
        let l7 = &o.l7;
        if l7.protocol.is_some() {
            view.protocol.clone_from(&l7.protocol);
        }
        if l7.server_name.is_some() {
            view.server_name.clone_from(&l7.server_name);
        }
        if l7.tls_sni.is_some() {
            view.sni.clone_from(&l7.tls_sni);
        }
        if !l7.tls_alpn.is_empty() {
            view.alpn.clone_from(&l7.tls_alpn);
        }
        view.last_seen_unix_ns = view.last_seen_unix_ns.max(o.last_seen_unix_ns);
        view.bytes_out = view.bytes_out.saturating_add(o.payload_bytes_out);
        view.bytes_in = view.bytes_in.saturating_add(o.payload_bytes_in);
        view.ended |= o.ended;
        for g in &l7.request_groups {
            view.requests = view.requests.saturating_add(g.count);
            view.errors = view.errors.saturating_add(g.errors);
            if !g.method.is_empty() {
                count(&mut view.methods, g.method.clone(), String::new(), g.count);
            }
            count(&mut view.statuses, g.status, 0, g.count);
            if !g.path.is_empty() {
                count(&mut view.paths, g.path.clone(), String::new(), g.count);
            }
        }
    }

    /// The `limit` flows seen last, most recent first.
    pub fn recent(&self, limit: usize) -> Vec<FlowView> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut flows: Vec<FlowView> = inner.flows.values().cloned().collect();
        flows.sort_by(|a, b| {
            (b.last_seen_unix_ns, &a.client, &a.server).cmp(&(
                a.last_seen_unix_ns,
                &b.client,
                &b.server,
            ))
        });
        flows.truncate(limit);
        flows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_topology::model::{L7Info, RequestGroup};

    fn obs(port: u16, first: u64, groups: Vec<RequestGroup>) -> FlowObservation {
        FlowObservation {
            workload: Some("client".into()),
            interface: "eth0".into(),
            transport: Transport::Tcp,
            local_ip: "198.18.0.1".parse().unwrap(),
            local_port: port,
            remote_ip: "198.18.0.2".parse().unwrap(),
            remote_port: 443,
            direction: Direction::Outbound,
            packets_out: 1,
            packets_in: 1,
            bytes_out: 100,
            bytes_in: 200,
            payload_bytes_out: 10,
            payload_bytes_in: 20,
            first_seen_unix_ns: first,
            last_seen_unix_ns: first + 5,
            tcp_flags_out: 0,
            tcp_flags_in: 0,
            handshake_rtt_ns: None,
            requests: 0,
            latency_sum_ns: 0,
            latency: Vec::new(),
            first_record: true,
            opened: true,
            ended: false,
            resets: 0,
            l7: L7Info {
                protocol: Some("tls".into()),
                tls_sni: Some("api.example".into()),
                tls_alpn: vec!["h2".into()],
                request_groups: groups,
                ..Default::default()
            },
        }
    }

    fn group(method: &str, status: u32, count: u64, errors: u64) -> RequestGroup {
        RequestGroup {
            method: method.into(),
            path: "/x".into(),
            status,
            count,
            errors,
            latency_sum_ns: 0,
        }
    }

    #[test]
    fn records_of_a_flow_add_up_and_keep_sni_and_alpn() {
        let flows = RecentFlows::new(8);
        flows.record("hv1", &obs(40000, 100, vec![group("GET", 200, 2, 0)]));
        let mut later = obs(40000, 100, vec![group("GET", 503, 1, 1)]);
        later.l7.tls_sni = None;
        later.last_seen_unix_ns = 900;
        later.ended = true;
        flows.record("hv1", &later);
        let v = flows.recent(10);
        assert_eq!(v.len(), 1);
        let f = &v[0];
        assert_eq!((f.requests, f.errors), (3, 1));
        assert_eq!(f.statuses, BTreeMap::from([(200, 2), (503, 1)]));
        assert_eq!(f.methods, BTreeMap::from([("GET".to_string(), 3)]));
        assert_eq!(f.sni.as_deref(), Some("api.example"));
        assert_eq!(f.alpn, ["h2"]);
        assert_eq!(
            (f.client.as_str(), f.server.as_str()),
            ("198.18.0.1:40000", "198.18.0.2:443")
        );
        assert_eq!(
            (f.bytes_out, f.bytes_in, f.last_seen_unix_ns),
            (20, 40, 900)
        );
        assert!(f.ended);
    }

    #[test]
    fn the_oldest_flows_are_forgotten_and_labels_are_bounded() {
        let flows = RecentFlows::new(3);
        for i in 0..5u16 {
            flows.record("hv1", &obs(40000 + i, u64::from(i) * 10, Vec::new()));
        }
        let v = flows.recent(10);
        let ports: Vec<_> = v.iter().map(|f| f.client.clone()).collect();
        assert_eq!(
            ports,
            ["198.18.0.1:40004", "198.18.0.1:40003", "198.18.0.1:40002"]
        );
        assert_eq!(flows.recent(1).len(), 1);

        let many: Vec<_> = (0..100)
            .map(|i| group(&format!("M{i}"), 200, 1, 0))
            .collect();
        flows.record("hv1", &obs(50000, 1, many));
        let f = flows
            .recent(10)
            .into_iter()
            .find(|f| f.client.ends_with(":50000"))
            .unwrap();
        assert_eq!(f.methods.len(), MAX_LABELS + 1);
        assert_eq!(f.methods.values().sum::<u64>(), 100);
        assert_eq!(f.requests, 100);
    }
}

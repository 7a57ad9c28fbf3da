//! Naming protocols from ports, and the [`ServiceClassifier`]: what kind of service a
//! service is, from its port, protocol, name, request paths and traffic shape, with
//! user rules (see [`super::rules`]) taking precedence.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::rules::Rules;
use crate::model::Transport;

/// Application protocol guessed from the server port; the transport otherwise.
pub fn protocol_for(transport: Transport, port: u16) -> &'static str {
    match port {
        80 | 8080 | 8000 => "http",
        443 | 8443 => "https",
        5432 => "postgres",
        3306 => "mysql",
        6379 => "redis",
        27017 => "mongodb",
        9092 => "kafka",
        5672 => "amqp",
        53 => "dns",
        50051 => "grpc",
        _ => transport.as_str(),
    }
}

/// HTTPS server ports: TLS seen there is the spec's `https`.
pub const HTTPS_PORTS: &[u16] = &[443, 8443];

/// ALPN names of HTTP: a ClientHello offering one of them carries HTTP.
pub const HTTP_ALPN: &[&str] = &["http/1.1", "http/1.0", "h2"];

/// `tls` as the spec's `https` when it carries HTTP: the client offered an HTTP ALPN
/// protocol, or the server port is an HTTPS one ([`HTTPS_PORTS`]). Any other protocol,
/// and TLS without either sign (a database over TLS, say), stays itself.
pub fn https_if_http<'a>(protocol: &'a str, server_port: u16, alpn: &[String]) -> &'a str {
    if protocol == "tls"
        && (HTTPS_PORTS.contains(&server_port)
            || alpn.iter().any(|a| HTTP_ALPN.contains(&a.as_str())))
    {
        "https"
    } else {
        protocol
    }
}

/// What a service is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    Database,
    Cache,
    MessageQueue,
    LoadBalancer,
    ApiGateway,
    WebServer,
    Microservice,
    ExternalApi,
    /// Only ever seen as a client.
    Client,
}

impl ServiceType {
    pub const ALL: [Self; 9] = [
        Self::Database,
        Self::Cache,
        Self::MessageQueue,
        Self::LoadBalancer,
        Self::ApiGateway,
        Self::WebServer,
        Self::Microservice,
        Self::ExternalApi,
        Self::Client,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Cache => "cache",
            Self::MessageQueue => "message_queue",
            Self::LoadBalancer => "load_balancer",
            Self::ApiGateway => "api_gateway",
            Self::WebServer => "web_server",
            Self::Microservice => "microservice",
            Self::ExternalApi => "external_api",
            Self::Client => "client",
        }
    }

    /// The type a server of `protocol` has, if the protocol alone says.
    pub fn from_protocol(protocol: &str) -> Option<Self> {
        match protocol {
            "postgres" | "mysql" | "mongodb" => Some(Self::Database),
            "redis" => Some(Self::Cache),
            "kafka" | "amqp" => Some(Self::MessageQueue),
            _ => None,
        }
    }
}

/// Whether a protocol carries HTTP-style requests.
pub fn is_http(protocol: &str) -> bool {
    matches!(
        protocol,
        "http" | "https" | "http2" | "grpc" | "websocket" | "tls"
    )
}

/// Everything the classifier looks at for one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceFacts {
    pub name: String,
    /// A registered workload.
    pub registered: bool,
    /// (host or address, port, protocol) of every endpoint it serves.
    pub endpoints: Vec<(String, u16, String)>,
    /// Distinct services calling it.
    pub clients: usize,
    /// Distinct services it calls over HTTP-style protocols.
    pub http_upstreams: usize,
    /// Distinct services it calls.
    pub upstreams: usize,
    /// Request paths it served.
    pub paths: Vec<String>,
}

impl ServiceFacts {
    fn serves_http(&self) -> bool {
        self.endpoints.iter().any(|(_, _, p)| is_http(p))
    }
}

/// Name tokens (split on `.`, `-`, `_`) and the type each one suggests, checked in order.
const NAME_HINTS: &[(&[&str], ServiceType)] = &[
    (
        &["gateway", "gw", "apigw", "apigateway", "kong"],
        ServiceType::ApiGateway,
    ),
    (
        &[
            "lb",
            "haproxy",
            "loadbalancer",
            "balancer",
            "elb",
            "alb",
            "traefik",
        ],
        ServiceType::LoadBalancer,
    ),
    (
        &[
            "db",
            "postgres",
            "postgresql",
            "pg",
            "mysql",
            "mariadb",
            "mongo",
            "mongodb",
            "database",
        ],
        ServiceType::Database,
    ),
    (
        &["redis", "cache", "memcached", "memcache", "valkey"],
        ServiceType::Cache,
    ),
    (
        &[
            "kafka", "rabbit", "rabbitmq", "amqp", "queue", "mq", "nats", "broker",
        ],
        ServiceType::MessageQueue,
    ),
    (
        &["nginx", "www", "web", "apache", "httpd"],
        ServiceType::WebServer,
    ),
];

/// Suffixes of names inside the cluster; a dotted name outside these is external.
const INTERNAL_SUFFIXES: &[&str] = &[
    ".internal",
    ".local",
    ".svc",
    ".cluster",
    ".lan",
    ".localdomain",
    ".lab",
    ".home",
    ".corp",
    ".intranet",
];

fn tokens(name: &str) -> impl Iterator<Item = String> + '_ {
    name.split(['.', '-', '_', ':'])
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
}

/// The type a service name suggests.
pub fn type_from_name(name: &str) -> Option<ServiceType> {
    let tokens: Vec<String> = tokens(name).collect();
    NAME_HINTS.iter().find_map(|(words, kind)| {
        tokens
            .iter()
            .any(|t| words.contains(&t.as_str()))
            .then_some(*kind)
    })
}

/// Whether an address is outside private, lab, loopback and link-local ranges.
pub fn is_public_address(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            let shared = o[0] == 100 && (64..128).contains(&o[1]);
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || shared)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(v6.is_loopback() || v6.is_unspecified() || unique_local || link_local)
        }
    }
}

/// Whether a host (name or address) lies outside the cluster: a public address, or a
/// dotted name that does not end in an internal suffix.
pub fn is_external_host(host: &str) -> bool {
    if let Ok(socket) = host.parse::<std::net::SocketAddr>() {
        return is_public_address(&socket.ip());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return is_public_address(&ip);
    }
    let host = host.to_ascii_lowercase();
    host.contains('.') && !INTERNAL_SUFFIXES.iter().any(|s| host.ends_with(s))
}

/// Which step of [`ServiceClassifier::classify`] decided a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// A user rule.
    Rule,
    /// A database, cache or queue protocol served.
    Protocol,
    /// Nothing served.
    Client,
    /// A name hint.
    Name,
    /// HTTP fan-out or proxy shape.
    Shape,
    /// An external host.
    External,
    /// `/api` paths.
    Paths,
    /// Nothing more specific: the fallback.
    Default,
}

impl Basis {
    /// A user rule or a protocol that names the type: good enough to learn from.
    pub fn is_strong(self) -> bool {
        matches!(self, Self::Rule | Self::Protocol)
    }
}

/// Classifies services: user rules first, then the built-in factors.
#[derive(Debug, Clone, Default)]
pub struct ServiceClassifier {
    rules: Rules,
}

impl ServiceClassifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_rules(rules: Rules) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The type of a service. Order: user rules; a database/cache/queue protocol served;
    /// a name hint; traffic shape (HTTP fan-out to two or more HTTP services is a gateway,
    /// an HTTP proxy with one HTTP upstream and several clients a load balancer); an
    /// external host; `/api` paths or onward calls make a microservice; other HTTP a web
    /// server; anything else served a microservice; nothing served a client.
    pub fn classify(&self, facts: &ServiceFacts) -> ServiceType {
        self.classify_explained(facts).0
    }

    /// The spec's `classify_service(endpoint, observation)`: the type of the service at
    /// `endpoint` from one observation alone. The endpoint is the server when it is the
    /// observation's destination (its port, protocol, host name and request path count);
    /// a source endpoint is a client unless rules or its name say otherwise.
    pub fn classify_service(
        &self,
        endpoint: &crate::observation::NetworkEndpoint,
        observation: &crate::observation::TrafficObservation,
    ) -> ServiceType {
        let serves = *endpoint == observation.destination;
        let protocol = if observation.protocol.trim().is_empty() {
            protocol_for(Transport::Tcp, endpoint.port).to_owned()
        } else {
            crate::observation::normalize_protocol(&observation.protocol)
        };
        let facts = ServiceFacts {
            name: endpoint.host.trim().to_ascii_lowercase(),
            registered: false,
            endpoints: if serves {
                vec![(endpoint.host.clone(), endpoint.port, protocol)]
            } else {
                Vec::new()
            },
            clients: usize::from(serves),
            http_upstreams: 0,
            upstreams: usize::from(!serves),
            paths: if serves {
                observation.path.iter().cloned().collect()
            } else {
                Vec::new()
            },
        };
        let (kind, basis) = self.classify_explained(&facts);
        // A client named like a server kind (`gateway`, `db`) is that kind.
        match (serves, basis) {
            (false, Basis::Client) => type_from_name(&facts.name).unwrap_or(kind),
            _ => kind,
        }
    }

    /// [`Self::classify`] with the step that decided, so callers (the learned
    /// classifier of `analytics::learned`) can tell strong evidence from a weak guess.
    pub fn classify_explained(&self, facts: &ServiceFacts) -> (ServiceType, Basis) {
        if let Some(kind) = self.rules.classify(facts) {
            return (kind, Basis::Rule);
        }
        if let Some(kind) = facts
            .endpoints
            .iter()
            .filter_map(|(_, _, p)| ServiceType::from_protocol(p))
            .min()
        {
            return (kind, Basis::Protocol);
        }
        if facts.endpoints.is_empty() {
            return (ServiceType::Client, Basis::Client);
        }
        if let Some(kind) = type_from_name(&facts.name) {
            return (kind, Basis::Name);
        }
        let serves_http = facts.serves_http();
        if serves_http && facts.http_upstreams >= 2 {
            return (ServiceType::ApiGateway, Basis::Shape);
        }
        if serves_http && facts.http_upstreams == 1 && facts.upstreams == 1 && facts.clients >= 2 {
            return (ServiceType::LoadBalancer, Basis::Shape);
        }
        let external = !facts.registered
            && (is_external_host(&facts.name)
                || facts
                    .endpoints
                    .iter()
                    .all(|(host, _, _)| is_external_host(host)));
        if external {
            return (ServiceType::ExternalApi, Basis::External);
        }
        if !serves_http || facts.upstreams > 0 {
            return (ServiceType::Microservice, Basis::Default);
        }
        if facts
            .paths
            .iter()
            .any(|p| p == "/api" || p.starts_with("/api/"))
        {
            return (ServiceType::Microservice, Basis::Paths);
        }
        if tokens(&facts.name).any(|t| t == "service" || t == "svc" || t == "api") {
            return (ServiceType::Microservice, Basis::Name);
        }
        (ServiceType::WebServer, Basis::Default)
    }
}

#[cfg(test)]
mod tests;

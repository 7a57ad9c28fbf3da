//! The two wire shapes that come in two forms: the body of `GET /topology` (the spec's
//! data model by default, weft's own with `shape=weft`) and the items of
//! `POST /observations` (the spec's `TrafficObservation` or weft's). Both are documented
//! here and nowhere else.
#![allow(dead_code)] // descriptions of JSON shapes: never built, only derived from

use utoipa::ToSchema;

/// `GET /topology`: the spec's `TopologyMap` (default, `shape=spec`) or weft's shape
/// (`shape=weft`).
#[derive(ToSchema)]
#[serde(untagged)]
pub enum TopologyAnswer {
    Spec(weft_topology::spec::TopologyMap),
    Weft(Topology),
}

/// `GET /topology?shape=weft`: the topology in weft's field names.
#[derive(ToSchema)]
pub struct Topology {
    /// RFC 3339.
    generated_at: String,
    /// Sorted by name.
    #[schema(value_type = Vec<Object>)]
    services: (),
    /// Sorted by (source, target, transport, port).
    #[schema(value_type = Vec<Object>)]
    dependencies: (),
    /// Everything in the snapshot added up.
    #[schema(value_type = Object)]
    totals: (),
    #[schema(value_type = Object)]
    stats: (),
}

/// One end of an observed exchange.
#[derive(ToSchema)]
pub struct ObservationEndpoint {
    #[schema(example = "10.0.0.5")]
    host: String,
    #[schema(example = 8080)]
    port: u16,
}

/// One traffic observation: the spec's `TrafficObservation` or weft's shape.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum AnyObservation {
    Spec(SpecTrafficObservation),
    Weft(TrafficObservation),
}

/// The spec's `TrafficObservation` (topomapper.md), as its dataclass serialises.
#[derive(ToSchema)]
pub struct SpecTrafficObservation {
    /// RFC 3339, or a naive ISO 8601 time taken as UTC.
    #[schema(example = "2026-12-06T05:00:00Z")]
    timestamp: String,
    source: ObservationEndpoint,
    destination: ObservationEndpoint,
    /// `https`, `HTTPS` or `Protocol.HTTPS` (any of the spec's protocols; aliases such as
    /// `postgresql`).
    #[schema(example = "Protocol.HTTPS")]
    protocol: String,
    bytes_sent: u64,
    bytes_received: u64,
    latency_ms: f64,
    status_code: Option<u16>,
    method: Option<String>,
    path: Option<String>,
}

/// One traffic observation (weft's shape): an element of a JSON array, or one line of
/// JSON lines.
#[derive(ToSchema)]
pub struct TrafficObservation {
    /// When it happened, Unix nanoseconds.
    timestamp_unix_ns: u64,
    source: ObservationEndpoint,
    destination: ObservationEndpoint,
    /// http, https, http2, grpc, websocket, tls, postgres, mysql, mongodb, redis, kafka,
    /// amqp, dns, tcp or udp.
    #[schema(example = "http")]
    protocol: String,
    /// Client to server.
    bytes_sent: u64,
    /// Server to client.
    bytes_received: u64,
    latency_ms: f64,
    status_code: Option<u16>,
    method: Option<String>,
    path: Option<String>,
    /// The exchange failed in a way the status code does not show.
    #[schema(default = false)]
    error: Option<bool>,
}

/// Why one item of a `POST /observations` body was not merged.
#[derive(ToSchema)]
pub struct ObservationError {
    /// 1-based line of a JSON-lines body.
    line: Option<u64>,
    /// 0-based index of an array element.
    index: Option<u64>,
    field: Option<String>,
    /// The limit that kept a valid observation out (`services`, `dependencies`).
    limit: Option<String>,
    message: String,
}

/// What `POST /observations` merged, and what it did not.
#[derive(ToSchema)]
pub struct ObservationsAccepted {
    accepted: u64,
    errors: Vec<ObservationError>,
}

/// `POST /observations` when nothing was taken: a problem whose `errors` (when the body
/// had items) says why each was refused.
#[derive(ToSchema)]
pub struct ObservationsRefused {
    r#type: String,
    title: String,
    status: u16,
    detail: String,
    /// 0 (present when the body had items).
    accepted: Option<u64>,
    /// Why each item was refused (present when the body had items).
    errors: Option<Vec<ObservationError>>,
}

//! In-process: `GET /tdl/export`, a TDL of the workloads the agents registered and of the
//! traffic weft saw between them; it parses, is canonical, and the controller takes it.

mod common;

use std::time::Instant;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use weft_controller::AppState;
use weft_networks::CreateRequest;
use weft_shards::ShardConfig;
use weft_topology::model::Workload;

use common::{call, shard_state};

fn state() -> AppState {
    shard_state(ShardConfig::default())
}

fn workload(name: &str, address: &str) -> Workload {
    Workload {
        name: name.into(),
        interface: format!("veth-{name}"),
        addresses: vec![address.parse().unwrap()],
    }
}

fn observation(source: &str, target: &str, port: u16, protocol: &str) -> Value {
    json!({
        "timestamp_unix_ns": 0,
        "source": {"host": source, "port": 40000},
        "destination": {"host": target, "port": port},
        "protocol": protocol,
        "bytes_sent": 100, "bytes_received": 200,
        "latency_ms": 1.0,
        "status_code": null, "method": null, "path": null,
    })
}

#[tokio::test]
async fn export_writes_a_tdl_of_the_registered_workloads_and_their_traffic() {
    let s = state();
    let now = Instant::now();
    s.registry.register(
        "hv1",
        "a1",
        vec![workload("web", "10.0.0.1"), workload("API.v2", "10.0.0.2")],
        now,
    );
    s.registry.register(
        "hv2",
        "a2",
        vec![workload("db", "10.0.0.3"), workload("dns", "10.0.0.4")],
        now,
    );
    s.registry
        .register("hv3", "a3", vec![workload("batch", "10.0.0.9")], now);
    let lines: Vec<String> = [
        observation("10.0.0.1", "10.0.0.2", 8080, "http"),
        observation("10.0.0.1", "10.0.0.2", 8443, "https"),
        observation("10.0.0.2", "10.0.0.3", 5432, "postgres"),
        observation("10.0.0.2", "10.0.0.4", 53, "dns"),
        observation("10.0.0.2", "10.0.0.4", 5353, "tcp"),
        // To something no agent registered: left out.
        observation("10.0.0.1", "203.0.113.7", 443, "https"),
        // From the workload of a host that is not exported: left out.
        observation("10.0.0.9", "10.0.0.3", 5432, "postgres"),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let (status, _, answer) = call(&s, Method::POST, "/observations", &lines.join("\n")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, content_type, body) = call(
        &s,
        Method::GET,
        "/tdl/export?hosts=hv1,hv2&network=prod",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        content_type.starts_with("application/yaml"),
        "{content_type}"
    );
    let tdl = body.as_str().expect("YAML text").to_owned();
    let net = weft_tdl::parse("export.tdl", &tdl).unwrap_or_else(|e| panic!("{e}\n{tdl}"));
    assert_eq!(weft_tdl::format(&net), tdl, "canonical already");
    assert_eq!(net.name, "prod");
    let nodes: Vec<&str> = net.nodes.keys().map(String::as_str).collect();
    assert_eq!(nodes, ["api-v2", "db", "dns", "web"], "{tdl}");
    assert_eq!(net.nodes["web"].host.as_deref(), Some("hv1"));
    assert_eq!(net.nodes["db"].host.as_deref(), Some("hv2"));
    assert_eq!(net.nodes["db"].addresses[0].to_string(), "10.0.0.3/32");
    assert_eq!(net.nodes["api-v2"].ports, [8080, 8443]);
    assert_eq!(net.nodes["dns"].ports, [53, 5353]);
    let conns: Vec<(String, String, String, Vec<u16>)> = net
        .connections
        .iter()
        .map(|c| {
            (
                c.key(),
                c.protocol.to_string(),
                c.direction.arrow().to_owned(),
                c.ports.clone(),
            )
        })
        .collect();
    assert_eq!(
        conns,
        [
            ("api-v2 -> db".into(), "tcp".into(), "->".into(), vec![5432]),
            (
                "api-v2 -> dns".into(),
                "tcp".into(),
                "->".into(),
                vec![5353]
            ),
            (
                "web -> api-v2".into(),
                "tcp".into(),
                "->".into(),
                vec![8080, 8443]
            ),
        ],
        "{tdl}"
    );
    // Security allows exactly what was seen: dns gets udp 53 and tcp 5353 from api only.
    let rules: Vec<(String, Vec<String>)> = net
        .security
        .iter()
        .map(|s| (s.key(), s.rules.iter().map(ToString::to_string).collect()))
        .collect();
    assert_eq!(
        rules,
        [
            (
                "api-v2 -> db".to_string(),
                vec!["allow_tcp_5432".to_string()]
            ),
            (
                "api-v2 -> dns".to_string(),
                vec!["allow_tcp_5353".to_string(), "allow_udp_53".to_string()]
            ),
            (
                "web -> api-v2".to_string(),
                vec!["allow_tcp_8080".to_string(), "allow_tcp_8443".to_string()]
            ),
        ]
    );
    let inbound = weft_tdl::firewall(&net, "dns");
    assert!(inbound.iter().all(|r| r.source == "api-v2"), "{inbound:?}");
    assert!(weft_tdl::firewall(&net, "web").is_empty());

    // JSON: which workload each node is, and what was left out.
    let (status, _, j) = call(
        &s,
        Method::GET,
        "/tdl/export?hosts=hv1,hv2&network=prod&format=json&addresses=false",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{j}");
    assert_eq!(
        j["nodes"]["api-v2"],
        json!({"workload": "API.v2", "host": "hv1"})
    );
    assert_eq!(j["connections"], 3);
    let left: Vec<&str> = j["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(left.iter().any(|l| l.contains("203.0.113.7")), "{left:?}");
    assert!(left.iter().any(|l| l.contains("batch")), "{left:?}");
    let plain = weft_tdl::parse("j.tdl", j["tdl"].as_str().unwrap()).unwrap();
    assert!(plain.nodes.values().all(|n| n.addresses.is_empty()));

    // Every host: batch is a node, and its traffic to db a connection.
    let (_, _, all) = call(&s, Method::GET, "/tdl/export", "").await;
    let all = weft_tdl::parse("all.tdl", all.as_str().unwrap()).unwrap();
    assert_eq!(all.name, "exported");
    assert!(all.connections.iter().any(|c| c.key() == "batch -> db"));

    // The exported TDL is one the controller takes.
    s.hosts
        .set_underlay("hv1", Some("198.19.0.1".parse().unwrap()));
    s.hosts
        .set_underlay("hv2", Some("198.19.0.2".parse().unwrap()));
    let rec = s
        .networks
        .create(CreateRequest {
            tdl: tdl.clone(),
            file_name: "prod.tdl".into(),
            hosts: vec!["hv1".into(), "hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(rec.placement["db"], "hv2");

    // Wrong requests name their problem.
    let (status, _, body) = call(&s, Method::GET, "/tdl/export?hosts=hv9", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("hv9"), "{body}");
    let (status, _, body) = call(&s, Method::GET, "/tdl/export?network=Prod!", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("network"),
        "{body}"
    );
    let (status, _, _) = call(&s, Method::GET, "/tdl/export?format=xml", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let empty = state();
    let (status, _, body) = call(&empty, Method::GET, "/tdl/export", "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("no registered workloads"),
        "{body}"
    );
}

//! In-process: the networks' CloudEvents on `GET /events/networks` (lifecycle from the
//! network manager, drift from the agents' reports of network resources).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use weft_control::{DriftRepaired, ResourceKey, kinds};
use weft_controller::AppState;
use weft_networks::{CreateRequest, MirrorRequest};
use weft_shards::ShardConfig;

use common::{call, shard_state, sse_data};

const TDL: &str = "\
network: shop
nodes:
  web:
    image: nginx
    addresses: [10.9.0.2/24]
  db:
    image: alpine:3
    ports: [5432]
    addresses: [10.9.0.3/24]
connections:
  web -> db:
    port: 5432
";

fn state() -> AppState {
    shard_state(ShardConfig::default())
}

fn drift(kind: &str, key: &str, repaired: u64, error: &str) -> DriftRepaired {
    DriftRepaired {
        host: "hv1".into(),
        resource: ResourceKey::new(kind, key),
        what: "veth nic-web down".into(),
        detected_unix_ns: 1_700_000_000_000_000_000,
        repaired_unix_ns: repaired,
        error: error.into(),
        kept: false,
    }
}

/// Lets the streams' readers catch up: the next step of a test then happens after they
/// saw the previous ones (the lifecycle and the drift are two sources, in order each).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn network_events_stream_lifecycle_and_drift_in_order() {
    let s = state();
    let reader = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/networks", 7).await })
    };
    // The other network's stream: only its own events.
    let other = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/networks?network=shopdr", 2).await })
    };
    settle().await;
    s.networks
        .create(CreateRequest {
            tdl: TDL.into(),
            file_name: "shop.tdl".into(),
            hosts: vec!["hv1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    s.networks
        .mirror(MirrorRequest {
            source: Some("shop".into()),
            destination: "shopdr".into(),
            hosts: vec!["hv2".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let grown = TDL.replace("    image: nginx\n", "    image: nginx:1.27\n");
    s.networks.update("shop", &grown, "shop.tdl").await.unwrap();
    settle().await;
    // Drift of a node (repaired), of a workload (not a network's: not on this stream), of
    // a segment (not repaired).
    s.control.drift(vec![
        drift(
            kinds::NETWORK_NODE,
            "shop/web",
            1_700_000_000_500_000_000,
            "",
        ),
        drift(
            kinds::WORKLOAD_ADDRESSES,
            "web",
            1_700_000_000_500_000_000,
            "",
        ),
        drift(kinds::NETWORK_SEGMENT, "shop", 0, "bridge br-shop is gone"),
    ]);

    let events = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("events in time")
        .unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "weft.network.created",
            "weft.network.created",
            "weft.network.updated",
            "weft.network.synced",
            "weft.network.drift.detected",
            "weft.network.drift.repaired",
            "weft.network.drift.detected",
        ],
        "{events:#?}"
    );
    let subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        [
            "shop", "shopdr", "shop", "shopdr", "shop/web", "shop/web", "shop"
        ]
    );
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["source"], "/weft/controller/networks");
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique: {events:#?}");
    assert_eq!(events[0]["data"]["role"], "source");
    assert_eq!(events[0]["data"]["hosts"], json!(["hv1"]));
    assert_eq!(events[1]["data"]["role"], "mirror");
    assert!(
        events[2]["data"]["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c.as_str().unwrap().contains("image")),
        "{}",
        events[2]
    );
    assert_eq!(events[3]["data"]["source"], "shop");
    let d = &events[4]["data"];
    assert_eq!(
        (
            d["network"].as_str(),
            d["node"].as_str(),
            d["host"].as_str()
        ),
        (Some("shop"), Some("web"), Some("hv1"))
    );
    assert_eq!(d["what"], "veth nic-web down");
    assert_eq!(
        events[5]["data"]["repaired_unix_ns"],
        1_700_000_000_500_000_000_u64
    );
    assert_eq!(events[6]["data"]["node"], Value::Null);
    assert_eq!(events[6]["data"]["error"], "bridge br-shop is gone");

    let mirror = tokio::time::timeout(Duration::from_secs(10), other)
        .await
        .expect("the mirror's events in time")
        .unwrap();
    let types: Vec<&str> = mirror.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["weft.network.created", "weft.network.synced"]);

    // Nothing is kept to replay: a stream that does not follow is refused.
    let (status, _, body) = call(&s, Method::GET, "/events/networks?follow=false", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn the_deletion_is_an_event_too() {
    let s = state();
    s.networks
        .create(CreateRequest {
            tdl: TDL.into(),
            file_name: String::new(),
            hosts: vec!["hv1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let reader = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/networks?network=shop", 1).await })
    };
    settle().await;
    s.networks.delete("shop").await.unwrap();
    let events = reader.await.unwrap();
    assert_eq!(events[0]["type"], "weft.network.deleted");
    assert_eq!(events[0]["data"], json!({"network": "shop"}));
}

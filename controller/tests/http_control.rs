//! The control plane over REST: GET /hosts and GET /hosts/{host_id}/status show each
//! resource's desired against reported state and the drift the agent repaired;
//! GET /events/control streams drift and unknown kinds; /metrics counts drift.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use weft_control::fake::FakeAgent;
use weft_control::{DriftRepaired, ResourceKey, Spec, kinds};
use weft_proto::v1::{AddressAssignment, WorkloadAddresses};
use weft_shards::ShardConfig;

use common::{call, shard_state, sse_data};

fn addresses(workload: &str, cidr: &str) -> Spec {
    Spec::WorkloadAddresses(WorkloadAddresses {
        workload: workload.into(),
        addresses: vec![AddressAssignment {
            cidr: cidr.into(),
            gateway: String::new(),
            shard_id: "s1".into(),
            allocation_seq: 1,
        }],
    })
}

#[tokio::test]
async fn host_status_shows_pending_applied_failed_and_drift() {
    let s = shard_state(ShardConfig::default());
    let hub = s.control.clone();
    let (status, _, body) = call(&s, Method::GET, "/hosts/hv1/status", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("GET /hosts"),
        "{body}"
    );

    let g = hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));
    let (status, _, body) = call(&s, Method::GET, "/hosts/hv1/status", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resources"][0]["status"], "pending", "{body}");
    assert_eq!(body["in_sync"], false);

    let agent = FakeAgent::default().spawn(hub.clone(), "hv1");
    hub.wait_applied(
        "hv1",
        kinds::WORKLOAD_ADDRESSES,
        "web",
        g,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let (_, _, body) = call(&s, Method::GET, "/hosts/hv1/status", "").await;
    let web = &body["resources"][0];
    assert_eq!(
        (web["kind"].as_str(), web["key"].as_str()),
        (Some("workload-addresses"), Some("web"))
    );
    assert_eq!(web["status"], "applied", "{body}");
    assert_eq!(web["applied_generation"], g);
    assert_eq!(web["observed"][0], "198.18.128.5/22");
    assert_eq!(web["measurements"]["readdress_down_seconds"], 0.0003);
    assert_eq!(body["in_sync"], true, "{body}");
    agent.abort();
    let _ = agent.await;

    let failing = FakeAgent {
        fail: Some("netns web is gone".into()),
        ..Default::default()
    }
    .spawn(Arc::clone(&hub), "hv1");
    let g2 = hub.publish("hv1", "web", addresses("web", "198.18.132.5/22"));
    let _ = hub
        .wait_applied(
            "hv1",
            kinds::WORKLOAD_ADDRESSES,
            "web",
            g2,
            Duration::from_secs(5),
        )
        .await;
    failing.abort();
    hub.drift(vec![DriftRepaired {
        host: "hv1".into(),
        resource: ResourceKey::new(kinds::WORKLOAD_ADDRESSES, "web"),
        what: "address 198.18.128.5/22 removed from eth0".into(),
        detected_unix_ns: 10,
        repaired_unix_ns: 20,
        error: String::new(),
        kept: false,
    }]);
    let (_, _, body) = call(&s, Method::GET, "/hosts/hv1/status", "").await;
    assert_eq!(body["resources"][0]["status"], "failed", "{body}");
    assert_eq!(body["resources"][0]["error"], "netns web is gone");
    assert_eq!(
        body["drift"][0]["what"],
        "address 198.18.128.5/22 removed from eth0"
    );
    assert_eq!(body["drift"][0]["repaired_unix_ns"], 20);
    assert_eq!(body["drift_repaired"], 1);

    let (status, _, body) = call(&s, Method::GET, "/hosts", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["hosts"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["hosts"][0]["host_id"], "hv1");
}

fn drift(what: &str, at: u64, error: &str) -> DriftRepaired {
    DriftRepaired {
        host: "hv1".into(),
        resource: ResourceKey::new(kinds::WORKLOAD_ADDRESSES, "web"),
        what: what.into(),
        detected_unix_ns: at,
        repaired_unix_ns: if error.is_empty() { at + 1 } else { 0 },
        error: error.into(),
        kept: false,
    }
}

#[tokio::test]
async fn control_events_stream_kept_drift_then_live_drift_and_unknown_kinds_and_metrics_count_drift()
 {
    let s = shard_state(ShardConfig::default());
    let hub = s.control.clone();
    hub.drift(vec![drift(
        "address 198.18.128.5/22 removed from eth0",
        10,
        "",
    )]);

    let reader = {
        let s = s.clone();
        tokio::spawn(async move { sse_data(&s, "/events/control", 3).await })
    };
    // Let the stream subscribe before the live events are sent (they are not kept for
    // late subscribers of the live part, only drift is, per host).
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.drift(vec![drift(
        "route 0.0.0.0/0 removed",
        30,
        "netns web is gone",
    )]);
    let agent = FakeAgent {
        kinds: Some(["weave-route".to_owned()].into()),
        ..Default::default()
    }
    .spawn(hub.clone(), "hv1");
    hub.publish("hv1", "web", addresses("web", "198.18.128.5/22"));

    let events = reader.await.unwrap();
    agent.abort();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        types,
        [
            "weft.control.drift.repaired",
            "weft.control.drift.failed",
            "weft.control.kind.unsupported"
        ],
        "{events:#?}"
    );
    assert_eq!(events[0]["specversion"], "1.0");
    assert_eq!(events[0]["subject"], "hv1/workload-addresses/web");
    assert_eq!(
        events[0]["data"]["what"],
        "address 198.18.128.5/22 removed from eth0"
    );
    assert_eq!(events[0]["data"]["host"], "hv1");
    assert_eq!(events[1]["data"]["error"], "netns web is gone");
    assert_eq!(
        events[2]["data"],
        serde_json::json!({"host": "hv1", "kind": "workload-addresses", "resources": 1})
    );

    let (status, _, metrics) = call(&s, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap_or_default();
    for line in [
        r#"weft_control_drift_total{host="hv1",kind="workload-addresses",outcome="repaired"} 1"#,
        r#"weft_control_drift_total{host="hv1",kind="workload-addresses",outcome="failed"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
}

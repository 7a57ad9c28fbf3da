//! Cancelling a migration over REST (`POST /migrations/{id}/cancel`, in-process with
//! `oneshot`) and gRPC (`ShardService.CancelMigration`): the moves not done are rolled
//! back, the shard is In-Use again, the migration is Failed, and every refusal is a
//! problem (or status) that says what to do.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use serde_json::Value;
use weft_controller::AppState;

use common::{call, shard_state};
use weft_control::ControlHub;
use weft_control::fake::FakeAgent;
use weft_shards::ShardConfig;

fn state() -> AppState {
    shard_state(ShardConfig::default())
}

/// A shard of `blue` with `workloads` addresses on host hv1, being deallocated: returns
/// (shard id, migration id, the addresses).
async fn migrating(s: &AppState, workloads: usize) -> (String, String, Vec<Value>) {
    let (status, _, shard) = call(
        s,
        Method::POST,
        "/shards",
        r#"{"network_id":"blue","prefix_len":26}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{shard}");
    let id = shard["id"].as_str().unwrap().to_owned();
    let mut addresses = Vec::new();
    for i in 0..workloads {
        let body = format!(r#"{{"workload":"vm{i}","host_id":"hv1"}}"#);
        let (status, _, a) = call(s, Method::POST, "/networks/blue/addresses", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{a}");
        addresses.push(a);
    }
    let (status, _, m) = call(
        s,
        Method::DELETE,
        &format!("/networks/blue/shards/{id}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{m}");
    (
        id,
        m["migration_id"].as_str().unwrap().to_owned(),
        addresses,
    )
}

async fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reports every desired state of `host` as applied, until aborted.
fn agent(hub: Arc<ControlHub>, host: &'static str) -> tokio::task::JoinHandle<()> {
    FakeAgent::default().spawn(hub, host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_over_rest_rolls_back_and_gives_the_shard_back() {
    let s = state();
    // No agent: the moves wait for hv1 (5 s) and are still in flight at the cancel.
    let (shard, mid, addresses) = migrating(&s, 3).await;
    eventually(Duration::from_secs(3), "new addresses desired", || {
        s.control
            .desired("hv1")
            .workload_addresses()
            .values()
            .all(|v| v[0].shard_id != shard)
    })
    .await;
    let (status, content_type, m) =
        call(&s, Method::POST, &format!("/migrations/{mid}/cancel"), "").await;
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(content_type, "application/json");
    assert_eq!(m["id"], mid.as_str());
    assert_eq!(m["state"], "Failed");
    assert_eq!(m["error"], "cancelled by the operator");
    assert_eq!(
        (
            m["moved"].as_u64(),
            m["rolled_back"].as_u64(),
            m["total"].as_u64()
        ),
        (Some(0), Some(3), Some(3))
    );
    assert!(m["finished"].as_str().unwrap().ends_with('Z'), "{m}");
    assert!(
        m["moves"]
            .as_array()
            .unwrap()
            .iter()
            .all(|mv| mv["state"] == "RolledBack"),
        "{m}"
    );

    let (_, _, got) = call(&s, Method::GET, &format!("/migrations/{mid}"), "").await;
    assert_eq!(got, m, "GET answers what the cancel answered");
    let (_, _, sh) = call(&s, Method::GET, &format!("/shards/{shard}"), "").await;
    assert_eq!(
        (&sh["status"], &sh["network_id"], &sh["resource_count"]),
        (
            &Value::from("In-Use"),
            &Value::from("blue"),
            &Value::from(3)
        )
    );
    let desired = s.control.desired("hv1");
    for a in &addresses {
        let told = &desired.workload_addresses()[a["workload"].as_str().unwrap()];
        assert_eq!(told.len(), 1);
        assert_eq!(
            (told[0].cidr.as_str(), told[0].allocation_seq),
            (a["cidr"].as_str().unwrap(), a["seq"].as_u64().unwrap())
        );
    }
    // The shard takes new allocations again.
    let (status, _, late) = call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"late","host_id":"hv1"}"#,
    )
    .await;
    assert_eq!(
        (status, late["shard_id"].as_str()),
        (StatusCode::CREATED, Some(shard.as_str()))
    );

    let (_, _, events) = call(&s, Method::GET, "/events?follow=false", "").await;
    let failed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "weft.shard.migration.failed")
        .unwrap_or_else(|| panic!("no failed event in {events}"));
    assert_eq!(failed["subject"], format!("migrations/{mid}"));
    assert_eq!(failed["data"]["reason"], "cancelled by the operator");
    assert_eq!(
        (
            failed["data"]["moved"].as_u64(),
            failed["data"]["rolled_back"].as_u64()
        ),
        (Some(0), Some(3))
    );

    let (status, content_type, p) =
        call(&s, Method::POST, &format!("/migrations/{mid}/cancel"), "").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::CONFLICT, "application/problem+json")
    );
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("already failed") && detail.contains("nothing to cancel"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_completed_migration_is_a_conflict_that_says_why() {
    let s = state();
    let hv1 = agent(s.control.clone(), "hv1");
    let (shard, mid, _) = migrating(&s, 2).await;
    eventually(Duration::from_secs(5), "completed", || {
        s.shards.migration(&mid).is_some_and(|m| !m.is_active())
    })
    .await;
    let (status, content_type, p) =
        call(&s, Method::POST, &format!("/migrations/{mid}/cancel"), "").await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::CONFLICT, "application/problem+json"),
        "{p}"
    );
    assert_eq!(p["status"], 409);
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("already completed"), "{detail}");
    assert!(
        detail.contains(&format!("POST /networks/blue/shards/{shard}")),
        "{detail}"
    );
    let (_, _, m) = call(&s, Method::GET, &format!("/migrations/{mid}"), "").await;
    assert_eq!(m["state"], "Completed");
    hv1.abort();
}

/// (method, uri, body, status, field named or None, words the message must contain)
type Case<'a> = (
    Method,
    &'a str,
    &'a str,
    StatusCode,
    Option<&'a str>,
    &'a str,
);

#[tokio::test]
async fn bad_cancel_requests_get_their_4xx_problem() {
    let s = state();
    let (_, mid, _) = migrating(&s, 1).await;
    let cancel = format!("/migrations/{mid}/cancel");
    let cancel = cancel.as_str();
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/migrations/mig-999999/cancel",
            "",
            StatusCode::NOT_FOUND,
            None,
            "GET /migrations",
        ),
        (
            Method::POST,
            cancel,
            r#"{"force":true}"#,
            StatusCode::BAD_REQUEST,
            Some("force"),
            "takes no body",
        ),
        (
            Method::POST,
            cancel,
            "[",
            StatusCode::BAD_REQUEST,
            None,
            "takes no body",
        ),
        (
            Method::GET,
            cancel,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            "not allowed",
        ),
    ];
    for (method, uri, body, expected, field, words) in cases {
        let (status, content_type, problem) = call(&s, method.clone(), uri, body).await;
        let what = format!("{method} {uri} {body}");
        assert_eq!(status, expected, "{what}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{what}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(words),
            "{what}: detail {detail:?} lacks {words:?}"
        );
        if let Some(field) = field {
            assert_eq!(problem["parameter"], field, "{what}: {problem}");
        }
    }
    // None of them touched the migration; an empty object is no body.
    let (status, _, m) = call(&s, Method::POST, cancel, "{}").await;
    assert_eq!(
        (status, &m["state"]),
        (StatusCode::OK, &Value::from("Failed")),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_migration_over_grpc() {
    use weft_controller::api::shards_grpc::ShardApi;
    use weft_proto::v1 as wire;
    use weft_proto::v1::shard_service_client::ShardServiceClient;
    let s = state();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ShardApi::new(s.clone()).into_service();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    let mut c = ShardServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (shard, mid, _) = migrating(&s, 2).await;
    eventually(Duration::from_secs(3), "both moves in flight", || {
        s.shards
            .migration(&mid)
            .is_some_and(|m| m.counts().moving == 2)
    })
    .await;
    let from = s.shards.next_event();
    let mut events = c
        .watch_events(wire::WatchEventsRequest {
            from_sequence: from,
        })
        .await
        .unwrap()
        .into_inner();
    let m = c
        .cancel_migration(wire::CancelMigrationRequest {
            migration_id: mid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (m.id.as_str(), m.state.as_str(), m.error.as_str()),
        (mid.as_str(), "Failed", "cancelled by the operator")
    );
    assert!(m.finished_unix_ns >= m.created_unix_ns && m.finished_unix_ns > 0);
    assert!(m.moves.iter().all(|mv| mv.state == "RolledBack"), "{m:?}");
    let sh = c
        .get_shard(wire::GetShardRequest { shard_id: shard })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((sh.status.as_str(), sh.resource_count), ("In-Use", 2));

    let again = c
        .cancel_migration(wire::CancelMigrationRequest {
            migration_id: mid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(
        again.message().contains("already failed"),
        "{}",
        again.message()
    );
    let missing = c
        .cancel_migration(wire::CancelMigrationRequest {
            migration_id: "mig-999999".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let empty = c
        .cancel_migration(wire::CancelMigrationRequest {
            migration_id: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(
        empty.message().contains("migration_id"),
        "{}",
        empty.message()
    );

    let mut types = Vec::new();
    while !types.iter().any(|t| t == "weft.shard.migration.failed") {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if e.r#type == "weft.shard.migration.failed" {
            let data: Value = serde_json::from_str(&e.data_json).unwrap();
            assert_eq!(
                (data["rolled_back"].as_u64(), data["migration_id"].as_str()),
                (Some(2), Some(mid.as_str()))
            );
            assert_eq!(data["releasing"].as_u64(), Some(2));
        }
        types.push(e.r#type);
    }
    assert_eq!(
        types
            .iter()
            .filter(|t| *t == "weft.address.released")
            .count(),
        0,
        "the new addresses are held until the agent applies the rollback (none reports here): {types:?}"
    );
}

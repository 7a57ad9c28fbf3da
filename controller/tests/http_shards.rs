//! The shard REST API in-process (`app(state)` + `oneshot`): every bad input gets its 4xx
//! as problem+json with a message that says what to do; the spec's endpoints do what
//! they say; events resume by sequence; many concurrent clients never share an address.
//! And the same over gRPC (`ShardService`).

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use weft_controller::AppState;

use common::{call, shard_state};
use weft_controller::api::http::app;
use weft_shards::ShardConfig;
use weft_store::MemoryStore;

fn state() -> AppState {
    shard_state(ShardConfig {
        max_shards_per_network: 2,
        ..ShardConfig::default()
    })
}

#[tokio::test]
async fn spec_endpoints_create_get_allocate_deallocate_and_delete() {
    let s = state();
    let (status, _, shard) = call(&s, Method::POST, "/shards", r#"{"network_id":"blue"}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{shard}");
    assert_eq!(
        shard["cidr"], "198.18.128.0/22",
        "default size 1024 = /22, first free aligned position"
    );
    assert_eq!(shard["size"], 1024);
    assert_eq!(shard["status"], "In-Use");
    assert_eq!(shard["resource_count"], 0);
    let id = shard["id"].as_str().unwrap().to_owned();
    let (status, _, got) = call(&s, Method::GET, &format!("/shards/{id}"), "").await;
    assert_eq!(
        (status, &got["network_id"]),
        (StatusCode::OK, &json!("blue"))
    );
    assert!(got["last_accessed"].as_str().unwrap().ends_with('Z') && got["created"].is_string());

    let (status, _, free) = call(
        &s,
        Method::POST,
        "/shards",
        r#"{"size":256,"family":"ipv6"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{free}");
    assert_eq!(
        (free["cidr"].as_str().unwrap(), &free["status"]),
        ("fd00:80::/120", &json!("Available"))
    );
    let free_id = free["id"].as_str().unwrap().to_owned();
    let (status, _, assigned) = call(
        &s,
        Method::POST,
        &format!("/networks/blue/shards/{free_id}"),
        "",
    )
    .await;
    assert_eq!(
        (status, &assigned["network_id"]),
        (StatusCode::OK, &json!("blue"))
    );

    let (status, _, a) = call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"web","host_id":"hv1"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    assert_eq!(
        a["address"], "198.18.128.2",
        "skips the network address and the gateway"
    );
    assert_eq!(a["cidr"], "198.18.128.2/22");
    let (_, _, b) = call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"web","host_id":"hv1","family":"ipv6"}"#,
    )
    .await;
    assert_eq!(b["address"], "fd00:80::2");
    assert_eq!(
        s.control.desired("hv1").workload_addresses()["web"].len(),
        2,
        "the agent is told"
    );

    let (status, _, list) = call(&s, Method::GET, "/shards?network_id=blue&limit=1", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["shards"].as_array().unwrap().len(), 1);
    let token = list["next_page_token"].as_str().unwrap().to_owned();
    let (_, _, page2) = call(
        &s,
        Method::GET,
        &format!("/shards?network_id=blue&limit=1&page_token={token}"),
        "",
    )
    .await;
    assert_eq!(page2["shards"][0]["id"], free_id.as_str());
    assert!(page2["next_page_token"].is_null());
    let (_, _, in_use) = call(&s, Method::GET, "/shards?status=in-use", "").await;
    assert_eq!(in_use["shards"].as_array().unwrap().len(), 2);

    let (status, _, p) = call(&s, Method::DELETE, &format!("/shards/{id}"), "").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(p["detail"].as_str().unwrap().contains("deallocate"), "{p}");

    let seq = a["seq"].as_u64().unwrap();
    let (status, _, released) = call(
        &s,
        Method::DELETE,
        &format!("/networks/blue/addresses/198.18.128.2?seq={seq}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    let (status, _, all) = call(
        &s,
        Method::DELETE,
        "/networks/blue/workloads/web/addresses",
        "",
    )
    .await;
    assert_eq!(
        (status, all["released"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    assert!(
        !s.control
            .desired("hv1")
            .workload_addresses()
            .contains_key("web")
    );

    let (status, _, d) = call(
        &s,
        Method::DELETE,
        &format!("/networks/blue/shards/{id}"),
        "",
    )
    .await;
    assert_eq!(
        (status, &d["status"], &d["network_id"]),
        (StatusCode::OK, &json!("Available"), &Value::Null)
    );
    let (status, _, _) = call(&s, Method::DELETE, &format!("/shards/{id}"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&s, Method::GET, &format!("/shards/{id}"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deallocating_a_shard_in_use_answers_202_with_the_migration() {
    let s = state();
    let (_, _, shard) = call(
        &s,
        Method::POST,
        "/shards",
        r#"{"network_id":"blue","prefix_len":28}"#,
    )
    .await;
    let id = shard["id"].as_str().unwrap();
    call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"web","host_id":"hv1"}"#,
    )
    .await;
    let (status, _, m) = call(
        &s,
        Method::DELETE,
        &format!("/networks/blue/shards/{id}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{m}");
    let mid = m["migration_id"].as_str().unwrap();
    let (status, _, got) = call(&s, Method::GET, &format!("/migrations/{mid}"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["total"], 1);
    let (_, _, shard) = call(&s, Method::GET, &format!("/shards/{id}"), "").await;
    assert_eq!(shard["status"], "Migrating");
}

/// (method, uri, body, status, field named or None, words the message must contain)
type Case = (
    Method,
    &'static str,
    &'static str,
    StatusCode,
    Option<&'static str>,
    &'static str,
);

#[tokio::test]
async fn every_bad_input_gets_its_4xx_problem_with_a_clear_message() {
    let s = state();
    // Fixtures: blue owns shard-000001 (with one address, seq 1), red owns shard-000002,
    // shard-000003 is free; blue is at its maximum after shard-000004.
    for body in [
        r#"{"network_id":"blue","prefix_len":28}"#,
        r#"{"network_id":"red","prefix_len":28}"#,
        r#"{"prefix_len":28}"#,
        r#"{"network_id":"blue","prefix_len":28}"#,
    ] {
        let (status, _, v) = call(&s, Method::POST, "/shards", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let (_, _, a) = call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"web","host_id":"hv1"}"#,
    )
    .await;
    assert_eq!(a["seq"], 1);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/shards",
            "{",
            StatusCode::BAD_REQUEST,
            None,
            "not valid JSON",
        ),
        (
            Method::POST,
            "/shards",
            "[1]",
            StatusCode::BAD_REQUEST,
            None,
            "JSON object",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"sise":1024}"#,
            StatusCode::BAD_REQUEST,
            Some("sise"),
            "unknown field",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"size":1000}"#,
            StatusCode::BAD_REQUEST,
            Some("size"),
            "power of two from 16 to 4096",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"size":8192}"#,
            StatusCode::BAD_REQUEST,
            Some("size"),
            "power of two",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"size":"big"}"#,
            StatusCode::BAD_REQUEST,
            Some("size"),
            "non-negative integer",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"prefix_len":29}"#,
            StatusCode::BAD_REQUEST,
            Some("prefix_len"),
            "/20 to /28",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"prefix_len":19}"#,
            StatusCode::BAD_REQUEST,
            Some("prefix_len"),
            "/20 to /28",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"prefix_len":28,"family":"ipv6"}"#,
            StatusCode::BAD_REQUEST,
            Some("prefix_len"),
            "/116 to /124",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"size":1024,"prefix_len":24}"#,
            StatusCode::BAD_REQUEST,
            Some("size"),
            "give one of them",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"family":"ipx"}"#,
            StatusCode::BAD_REQUEST,
            Some("family"),
            "ipv4",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"network_id":"a/b"}"#,
            StatusCode::BAD_REQUEST,
            Some("network_id"),
            "letters, digits",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"network_id":""}"#,
            StatusCode::BAD_REQUEST,
            Some("network_id"),
            "must not be empty",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"network_id":7}"#,
            StatusCode::BAD_REQUEST,
            Some("network_id"),
            "expected a string",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"reserved":"yes"}"#,
            StatusCode::BAD_REQUEST,
            Some("reserved"),
            "true or false",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"reserved":true,"network_id":"blue"}"#,
            StatusCode::BAD_REQUEST,
            Some("network_id"),
            "reserved",
        ),
        (
            Method::POST,
            "/shards",
            r#"{"network_id":"blue"}"#,
            StatusCode::CONFLICT,
            None,
            "maximum",
        ),
        (
            Method::GET,
            "/shards/shard-999999",
            "",
            StatusCode::NOT_FOUND,
            None,
            "GET /shards",
        ),
        (
            Method::GET,
            "/shards?status=busy",
            "",
            StatusCode::BAD_REQUEST,
            Some("status"),
            "Available, In-Use",
        ),
        (
            Method::GET,
            "/shards?limit=0",
            "",
            StatusCode::BAD_REQUEST,
            Some("limit"),
            "1 to 1000",
        ),
        (
            Method::GET,
            "/shards?colour=red",
            "",
            StatusCode::BAD_REQUEST,
            Some("colour"),
            "unknown parameter",
        ),
        (
            Method::DELETE,
            "/shards/shard-999999",
            "",
            StatusCode::NOT_FOUND,
            None,
            "does not exist",
        ),
        (
            Method::DELETE,
            "/shards/shard-000001",
            "",
            StatusCode::CONFLICT,
            None,
            "deallocate it from its network first",
        ),
        (
            Method::POST,
            "/networks/blue/shards/shard-999999",
            "",
            StatusCode::NOT_FOUND,
            None,
            "does not exist",
        ),
        (
            Method::POST,
            "/networks/blue/shards/shard-000002",
            "",
            StatusCode::CONFLICT,
            None,
            "DELETE /networks/red/shards/shard-000002",
        ),
        (
            Method::POST,
            "/networks/blue/shards/shard-000003",
            "",
            StatusCode::CONFLICT,
            None,
            "maximum",
        ),
        (
            Method::POST,
            "/networks/bad%20net/shards/shard-000003",
            "",
            StatusCode::BAD_REQUEST,
            Some("network_id"),
            "letters, digits",
        ),
        (
            Method::DELETE,
            "/networks/blue/shards/shard-999999",
            "",
            StatusCode::NOT_FOUND,
            None,
            "does not exist",
        ),
        (
            Method::DELETE,
            "/networks/blue/shards/shard-000002",
            "",
            StatusCode::CONFLICT,
            None,
            "belongs to network red",
        ),
        (
            Method::DELETE,
            "/networks/blue/shards/shard-000003",
            "",
            StatusCode::CONFLICT,
            None,
            "not allocated to any network",
        ),
        (
            Method::POST,
            "/networks/blue/addresses",
            "",
            StatusCode::BAD_REQUEST,
            Some("workload"),
            "required",
        ),
        (
            Method::POST,
            "/networks/blue/addresses",
            r#"{"workload":"web"}"#,
            StatusCode::BAD_REQUEST,
            Some("host_id"),
            "required",
        ),
        (
            Method::POST,
            "/networks/blue/addresses",
            r#"{"workload":"web","host_id":"h","family":"ipv6"}"#,
            StatusCode::CONFLICT,
            None,
            "POST /shards",
        ),
        (
            Method::POST,
            "/networks/green/addresses",
            r#"{"workload":"web","host_id":"h"}"#,
            StatusCode::CONFLICT,
            None,
            "no ipv4 shard",
        ),
        (
            Method::POST,
            "/networks/blue/addresses",
            r#"{"workload":"web","host_id":"h","extra":1}"#,
            StatusCode::BAD_REQUEST,
            Some("extra"),
            "unknown field",
        ),
        (
            Method::DELETE,
            "/networks/blue/addresses/198.18.128.2",
            "",
            StatusCode::BAD_REQUEST,
            Some("seq"),
            "required",
        ),
        (
            Method::DELETE,
            "/networks/blue/addresses/198.18.128.2?seq=x",
            "",
            StatusCode::BAD_REQUEST,
            Some("seq"),
            "not an allocation sequence",
        ),
        (
            Method::DELETE,
            "/networks/blue/addresses/not-an-ip?seq=1",
            "",
            StatusCode::BAD_REQUEST,
            Some("address"),
            "not an IPv4 or IPv6",
        ),
        (
            Method::DELETE,
            "/networks/blue/addresses/198.18.128.9?seq=1",
            "",
            StatusCode::NOT_FOUND,
            None,
            "not allocated",
        ),
        (
            Method::DELETE,
            "/networks/red/addresses/198.18.128.2?seq=1",
            "",
            StatusCode::NOT_FOUND,
            None,
            "not allocated in network red",
        ),
        (
            Method::DELETE,
            "/networks/blue/addresses/198.18.128.2?seq=7",
            "",
            StatusCode::CONFLICT,
            None,
            "current seq",
        ),
        (
            Method::DELETE,
            "/networks/blue/workloads/a%2Fb/addresses",
            "",
            StatusCode::BAD_REQUEST,
            Some("workload"),
            "letters",
        ),
        (
            Method::GET,
            "/migrations/mig-999999",
            "",
            StatusCode::NOT_FOUND,
            None,
            "GET /migrations",
        ),
        (
            Method::GET,
            "/events?from=-1",
            "",
            StatusCode::BAD_REQUEST,
            Some("from"),
            "event sequence",
        ),
        (
            Method::GET,
            "/events?follow=maybe",
            "",
            StatusCode::BAD_REQUEST,
            Some("follow"),
            "true or false",
        ),
        (
            Method::GET,
            "/events?since=3",
            "",
            StatusCode::BAD_REQUEST,
            Some("since"),
            "unknown parameter",
        ),
        (
            Method::PUT,
            "/shards",
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
        assert_eq!(problem["status"], expected.as_u16(), "{what}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(words),
            "{what}: detail {detail:?} lacks {words:?}"
        );
        if let Some(field) = field {
            assert_eq!(problem["parameter"], field, "{what}: {problem}");
            assert!(detail.contains(field), "{what}: {detail}");
        }
    }
}

/// Reads SSE frames until `n` events arrived; returns (id, data JSON) pairs.
async fn sse_events(
    state: &AppState,
    uri: &str,
    last_event_id: Option<&str>,
    n: usize,
) -> Vec<(u64, Value)> {
    let mut request = Request::builder().uri(uri);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = app(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|v| v.trim().parse::<u64>().unwrap());
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|v| serde_json::from_str(v.trim()).unwrap());
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn events_are_cloudevents_with_sequences_that_resume() {
    let s = state();
    let (_, _, shard) = call(
        &s,
        Method::POST,
        "/shards",
        r#"{"network_id":"blue","prefix_len":28}"#,
    )
    .await;
    call(
        &s,
        Method::POST,
        "/networks/blue/addresses",
        r#"{"workload":"web","host_id":"hv1"}"#,
    )
    .await;
    let all = sse_events(&s, "/events?from=1", None, 3).await;
    let types: Vec<&str> = all
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "weft.shard.created",
            "weft.shard.allocated",
            "weft.address.allocated"
        ]
    );
    assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2, 3]);
    let (status, _, listed) = call(&s, Method::GET, "/events?follow=false&from=2", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["events"].as_array().unwrap().len(), 2);
    assert_eq!(
        (
            listed["events"][0]["sequence"].as_u64(),
            listed["next"].as_u64()
        ),
        (Some(2), Some(4))
    );
    let e = &all[0].1;
    assert_eq!(
        (
            e["specversion"].as_str(),
            e["id"].as_str(),
            e["source"].as_str()
        ),
        (Some("1.0"), Some("1"), Some("/weft/controller/shards"))
    );
    assert_eq!(e["data"]["id"], shard["id"]);
    assert!(e["time"].as_str().unwrap().ends_with('Z'));
    // Resume after 2 with Last-Event-ID; then a live event arrives.
    let s2 = s.clone();
    let live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call(
            &s2,
            Method::POST,
            "/networks/blue/addresses",
            r#"{"workload":"db","host_id":"hv1"}"#,
        )
        .await
    });
    let resumed = sse_events(&s, "/events", Some("2"), 2).await;
    assert_eq!(
        resumed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(resumed[1].1["data"]["workload"], "db");
    live.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_over_the_router_never_share_an_address() {
    let config = ShardConfig {
        max_shards_per_network: 8,
        ..ShardConfig::default()
    };
    let s = AppState::builder()
        .shard_config(config)
        .start(Arc::new(MemoryStore::default()))
        .unwrap();
    let tasks: Vec<_> = (0..48)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                let network = format!("n{}", t % 3);
                let mut held: Vec<(String, u64)> = Vec::new();
                let (mut created, mut released) = (0, 0);
                for i in 0..60 {
                    if i % 20 == 0 {
                        let (status, _, _) = call(
                            &s,
                            Method::POST,
                            "/shards",
                            &format!(r#"{{"network_id":"{network}","prefix_len":27}}"#),
                        )
                        .await;
                        created += usize::from(status == StatusCode::CREATED);
                    }
                    let body = format!(r#"{{"workload":"w{t}-{i}","host_id":"h{}"}}"#, t % 5);
                    let (status, _, a) = call(
                        &s,
                        Method::POST,
                        &format!("/networks/{network}/addresses"),
                        &body,
                    )
                    .await;
                    match status {
                        StatusCode::CREATED => held.push((
                            a["address"].as_str().unwrap().to_owned(),
                            a["seq"].as_u64().unwrap(),
                        )),
                        StatusCode::CONFLICT => {} // network full right now
                        other => panic!("{other}: {a}"),
                    }
                    if i % 4 == 3
                        && let Some((addr, seq)) = held.pop()
                    {
                        let (status, _, p) = call(
                            &s,
                            Method::DELETE,
                            &format!("/networks/{network}/addresses/{addr}?seq={seq}"),
                            "",
                        )
                        .await;
                        assert_eq!(status, StatusCode::OK, "{p}");
                        released += 1;
                    }
                }
                (held, created, released)
            })
        })
        .collect();
    let mut live = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (held, c, _) = t.await.unwrap();
        created += c;
        for (addr, _) in held {
            assert!(live.insert(addr.clone()), "{addr} held by two clients");
        }
    }
    let index = s.shards.read();
    index.check_invariants().unwrap();
    assert_eq!(index.allocations().count(), live.len());
    assert_eq!(index.shards().count(), created);
    assert!(
        created <= 3 * 8,
        "per-network maximum held under concurrency"
    );
}

#[tokio::test]
async fn shard_service_over_grpc_does_the_same_operations() {
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
    let mut events = c
        .watch_events(wire::WatchEventsRequest { from_sequence: 1 })
        .await
        .unwrap()
        .into_inner();
    let shard = c
        .create_shard(wire::CreateShardRequest {
            size: 16,
            network_id: "blue".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (shard.cidr.as_str(), shard.status.as_str()),
        ("198.18.128.0/28", "In-Use")
    );
    let bad = c
        .create_shard(wire::CreateShardRequest {
            size: 17,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("size"), "{}", bad.message());
    let a = c
        .allocate_address(wire::AllocateAddressRequest {
            network_id: "blue".into(),
            workload: "web".into(),
            host_id: "hv1".into(),
            family: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.cidr.as_str(), a.gateway.as_str()),
        ("198.18.128.2/28", "198.18.128.1")
    );
    let busy = c
        .delete_shard(wire::DeleteShardRequest {
            shard_id: shard.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(busy.code(), tonic::Code::FailedPrecondition);
    let stale = c
        .release_address(wire::ReleaseAddressRequest {
            network_id: "blue".into(),
            address: a.address.clone(),
            seq: a.seq + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    let list = c
        .list_shards(wire::ListShardsRequest {
            network_id: "blue".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.shards.len(), 1);
    let d = c
        .deallocate_shard(wire::NetworkShardRequest {
            network_id: "blue".into(),
            shard_id: shard.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.migration_id.starts_with("mig-"));
    let m = c
        .get_migration(wire::GetMigrationRequest {
            migration_id: d.migration_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.moves.len(), 1);
    let missing = c
        .get_shard(wire::GetShardRequest {
            shard_id: "shard-9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut types = Vec::new();
    while types.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(5), events.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(e.sequence, types.len() as u64 + 1);
        types.push(e.r#type);
    }
    assert_eq!(
        types,
        [
            "weft.shard.created",
            "weft.shard.allocated",
            "weft.address.allocated",
            "weft.shard.migration.started"
        ]
    );
}

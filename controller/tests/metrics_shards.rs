//! The IP shards on `/metrics`: pool and shard sizes and free addresses, allocations and
//! releases, migrations in progress with their moves, and the duration of finished ones;
//! and the whole exposition as Prometheus' own `promtool check metrics` reads it.

mod common;
#[path = "common/promtool.rs"]
mod promtool;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use weft_controller::AppState;

use common::{call, shard_state};
use promtool::promtool_check_metrics;
use weft_control::fake::FakeAgent;
use weft_shards::ShardConfig;

async fn metrics(s: &AppState) -> String {
    let (status, _, body) = call(s, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().expect("metrics are text").to_owned()
}

/// The value of the sample whose name and labels start with `prefix` (labels in the
/// order the exposition writes them).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn eventually(timeout: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_and_migrations_are_on_metrics() {
    let s = shard_state(ShardConfig::default());
    let (status, _, shard) = call(
        &s,
        Method::POST,
        "/shards",
        r#"{"network_id":"blue","prefix_len":26}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{shard}");
    let id = shard["id"].as_str().unwrap().to_owned();
    let mut addresses = Vec::new();
    for i in 0..3 {
        let body = format!(r#"{{"workload":"vm{i}","host_id":"hv1"}}"#);
        let (status, _, a) = call(&s, Method::POST, "/networks/blue/addresses", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{a}");
        addresses.push((
            a["address"].as_str().unwrap().to_owned(),
            a["seq"].as_u64().unwrap(),
        ));
    }
    let (status, _, released) = call(
        &s,
        Method::DELETE,
        &format!(
            "/networks/blue/addresses/{}?seq={}",
            addresses[0].0, addresses[0].1
        ),
        "",
    )
    .await;
    assert!(status.is_success(), "{status} {released}");

    let text = metrics(&s).await;
    let shard_labels =
        format!(r#"{{shard="{id}",cidr="198.18.128.0/26",network="blue",status="In-Use"}}"#);
    // A /26 holds 64 addresses: 61 usable (no network, gateway, broadcast), 2 in use.
    for (prefix, expected) in [
        (format!("weft_shard_capacity_addresses{shard_labels}"), 61.0),
        (format!("weft_shard_free_addresses{shard_labels}"), 59.0),
        (
            r#"weft_shard_pool_addresses{pool="198.18.128.0/17"}"#.to_owned(),
            32_768.0,
        ),
        (
            r#"weft_shard_pool_carved_addresses{pool="198.18.128.0/17"}"#.to_owned(),
            64.0,
        ),
        (
            r#"weft_shard_pool_allocated_addresses{pool="198.18.128.0/17"}"#.to_owned(),
            2.0,
        ),
        (
            r#"weft_shard_pool_allocated_addresses{pool="fd00:80::/56"}"#.to_owned(),
            0.0,
        ),
        ("weft_shard_allocations_total ".to_owned(), 3.0),
        ("weft_shard_releases_total ".to_owned(), 1.0),
        (r#"weft_shard_migrations{state="running"}"#.to_owned(), 0.0),
        (
            "weft_shard_migration_duration_seconds_count ".to_owned(),
            0.0,
        ),
    ] {
        assert_eq!(value(&text, &prefix), Some(expected), "{prefix} in\n{text}");
    }
    promtool_check_metrics(&text);

    // Deallocating the shard starts a migration; with no agent on hv1 its moves wait.
    let (status, _, m) = call(
        &s,
        Method::DELETE,
        &format!("/networks/blue/shards/{id}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{m}");
    let mid = m["migration_id"].as_str().unwrap().to_owned();
    let text = metrics(&s).await;
    assert_eq!(
        value(&text, r#"weft_shard_migrations{state="running"}"#),
        Some(1.0),
        "{text}"
    );
    let moves: f64 = ["pending", "moving", "done", "skipped", "rolled_back"]
        .iter()
        .filter_map(|state| {
            value(
                &text,
                &format!(
                    r#"weft_shard_migration_moves{{migration="{mid}",shard="{id}",state="{state}"}}"#
                ),
            )
        })
        .sum();
    assert_eq!(moves, 2.0, "both workloads are moves of {mid}:\n{text}");
    let updated = value(
        &text,
        &format!(r#"weft_shard_migration_updated_timestamp_seconds{{migration="{mid}""#),
    )
    .expect("last change of the running migration");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 60.0..=now + 1.0).contains(&updated),
        "updated {updated}, now {now}"
    );

    // An agent applies the new addresses: the migration completes and is timed.
    let agent = FakeAgent::default().spawn(s.control.clone(), "hv1");
    eventually(
        Duration::from_secs(20),
        "the migration completes",
        async || {
            let text = metrics(&s).await;
            value(&text, r#"weft_shard_migrations{state="completed"}"#) == Some(1.0)
        },
    )
    .await;
    agent.abort();
    let text = metrics(&s).await;
    assert_eq!(
        value(&text, "weft_shard_migration_duration_seconds_count "),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"weft_shard_migration_duration_seconds_bucket{le="+Inf"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains(&format!(r#"weft_shard_migration_moves{{migration="{mid}""#)),
        "a finished migration has no progress series:\n{text}"
    );
    // Released: the old shard's two addresses and the first one.
    assert_eq!(
        value(&text, "weft_shard_releases_total "),
        Some(3.0),
        "{text}"
    );
    promtool_check_metrics(&text);
}

//! `weft shards cancel-migration` against a fake controller on a local socket.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::fake_controller;

fn weft(args: &[&str], addr: SocketAddr) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_CONTROLLER", format!("http://{addr}"))
        .output()
        .expect("run weft")
}

#[test]
fn cancel_posts_to_the_migration_and_says_what_was_rolled_back() {
    let (addr, server) = fake_controller(
        "200 OK",
        "application/json",
        r#"{"id":"mig-000007","shard_id":"shard-000002","network_id":"blue","state":"Failed","error":"cancelled by the operator","moved":2,"rolled_back":5,"total":7,"moves":[]}"#,
    );
    let output = weft(&["shards", "cancel-migration", "mig-000007"], addr);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        server.join().expect("server"),
        "POST /migrations/mig-000007/cancel HTTP/1.1"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with("migration mig-000007 cancelled (cancelled by the operator): 2 of 7"),
        "{stdout}"
    );
    assert!(stdout.contains("5 rolled back"), "{stdout}");
    assert!(
        stdout.contains("shard shard-000002 stays in network blue"),
        "{stdout}"
    );
}

#[test]
fn cancelling_a_completed_migration_prints_the_controllers_reason_and_fails() {
    let (addr, server) = fake_controller(
        "409 Conflict",
        "application/problem+json",
        r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"migration mig-000001 already completed: every workload moved; there is nothing to cancel"}"#,
    );
    let output = weft(&["shards", "cancel-migration", "mig-000001"], addr);
    assert!(!output.status.success());
    assert_eq!(
        server.join().expect("server"),
        "POST /migrations/mig-000001/cancel HTTP/1.1"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 409"), "{stderr}");
    assert!(stderr.contains("nothing to cancel"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn an_unknown_migration_is_a_clear_error_and_odd_ids_are_encoded() {
    let (addr, server) = fake_controller(
        "404 Not Found",
        "application/problem+json",
        r#"{"type":"about:blank","title":"Not Found","status":404,"detail":"migration a/b does not exist; list them with GET /migrations"}"#,
    );
    let output = weft(&["shards", "cancel-migration", "a/b"], addr);
    assert!(!output.status.success());
    assert_eq!(
        server.join().expect("server"),
        "POST /migrations/a%2Fb/cancel HTTP/1.1"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("answered 404"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
}

//! `weft tdl export` against a fake controller on a local socket.

mod common;

use std::process::{Command, Output};

use common::fake_controller;

fn weft(args: &[&str], controller: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_CONTROLLER", controller)
        .output()
        .expect("run weft")
}

const ANSWER: &str = r#"{"network":"prod","tdl":"network: prod\naddressing:\n  shards: prod\n  families: [ipv4]\nnodes:\n  db:\n    type: container\n    ports: [5432]\n    host: hv2\n  web:\n    type: container\n    host: hv1\nconnections:\n  web -> db:\n    protocol: tcp\n    ports: [5432]\nsecurity:\n  web -> db:\n    firewall_rule: [allow_tcp_5432]\n","nodes":{"db":{"workload":"db","host":"hv2"},"web":{"workload":"web","host":"hv1"}},"connections":1,"left_out":["web -> 203.0.113.7 tcp/443: 203.0.113.7 is not an exported workload"]}"#;

#[test]
fn export_writes_the_controllers_tdl_to_a_file_and_lists_what_was_left_out() {
    let (addr, server) = fake_controller("200 OK", "application/json", ANSWER);
    let out = std::env::temp_dir().join(format!("weft-export-{}.tdl", std::process::id()));
    let output = weft(
        &[
            "tdl",
            "export",
            "--out",
            out.to_str().unwrap(),
            "--host",
            "hv1,hv2",
            "--network",
            "prod",
            "--no-addresses",
            "--since",
            "1h",
        ],
        &format!("http://{addr}"),
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        server.join().expect("server"),
        "GET /tdl/export?format=json&network=prod&hosts=hv1,hv2&addresses=false&since=1h HTTP/1.1"
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let net = weft_tdl::parse("prod.tdl", &text).unwrap();
    assert_eq!(weft_tdl::format(&net), text);
    assert_eq!(net.connections[0].key(), "web -> db");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("network \"prod\", 2 nodes, 1 connections"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("left out: web -> 203.0.113.7"), "{stderr}");
}

#[test]
fn an_answer_that_is_not_a_tdl_is_not_written() {
    let (addr, server) = fake_controller(
        "200 OK",
        "application/json",
        r#"{"network":"x","tdl":"network: x\nnodes: {}\n","nodes":{},"connections":0,"left_out":[]}"#,
    );
    let output = weft(&["tdl", "export"], &format!("http://{addr}"));
    server.join().expect("server");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not parse"), "{stderr}");
}

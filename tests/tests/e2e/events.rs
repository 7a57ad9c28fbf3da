//! Events that fire by themselves, seen on `GET /events` while real traffic flows: a new
//! dependency's event arrives within a second of its first request (the agent drains
//! every second), and a burst of HTTP 5xx on one edge is a `weft.topology.anomaly`
//! within one bucket width of the burst, without anyone asking for analytics.

use std::io::BufRead as _;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_lab::netns::Netns;
use weft_lab::servers;
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{eventually, skip_unless_root};

/// `/ok` answers 200, `/fail` 500; HTTP/1.1 keep-alive.
const FLAKY: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 500 if self.path.startswith("/fail") else 200
        body = b"fail\n" if code == 500 else b"ok\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"#;

/// The bucket width the controller runs with.
const WIDTH: Duration = Duration::from_secs(2);

/// One event of the stream and when it was read.
struct Seen {
    at: Instant,
    event: Value,
}

/// Follows `GET /events` (from now on) in a thread; every event goes to the channel.
fn follow(controller: &Controller) -> Result<mpsc::Receiver<Seen>> {
    let response = controller
        .client()?
        .get(&controller.http_url("/events"))
        .set("authorization", &controller.authorization())
        .call()
        .context("GET /events")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = std::io::BufReader::new(response.into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(event) = serde_json::from_str::<Value>(data.trim())
                && tx
                    .send(Seen {
                        at: Instant::now(),
                        event,
                    })
                    .is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}

/// Waits (at most `timeout`) for an event of `event_type` whose data has every
/// `(field, value)`; returns when it was read and the event.
fn wait_for(
    events: &mpsc::Receiver<Seen>,
    event_type: &str,
    fields: &[(&str, &str)],
    timeout: Duration,
) -> Result<Seen> {
    let deadline = Instant::now() + timeout;
    let mut others = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let seen = events.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!("no {event_type} with {fields:?} in {timeout:?}; saw: {others:?}")
        })?;
        let e = &seen.event;
        if e["type"] == event_type && fields.iter().all(|(k, v)| e["data"][*k] == *v) {
            return Ok(seen);
        }
        others.push(format!("{} {}", e["type"], e["data"]));
    }
}

/// `count` requests of `url` from `ns`, one connection, any status.
fn requests(ns: &Netns, url: &str, count: usize) -> Result<()> {
    let mut args = vec!["curl", "-sS", "--max-time", "10"];
    for _ in 0..count {
        args.extend(["-o", "/dev/null", url]);
    }
    ns.exec_timeout(Duration::from_secs(20), &args)?;
    Ok(())
}

#[test]
fn new_dependencies_and_anomalies_arrive_on_events_unasked() -> Result<()> {
    if skip_unless_root("new_dependencies_and_anomalies_arrive_on_events_unasked") {
        return Ok(());
    }
    let lab = crate::support::lab(&["client", "api", "ledger"])?;
    let api = servers::python(lab.workload("api")?, "flaky", FLAKY, 8080)?;
    let ledger = servers::python(lab.workload("ledger")?, "ledger", FLAKY, 8080)?;
    let ip = lab.hypervisor().uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let controller = Controller::start_with(&lab, &grpc, &http, &["--bucket-width", "2s"])?;
    let agent = Agent::start(&lab, 0, &controller.grpc_url())?;
    let logs = || {
        format!(
            "controller:\n{}\nagent:\n{}",
            controller.child.tail(30),
            agent.child.tail(20)
        )
    };
    let events = follow(&controller)?;
    let client = &lab.workload("client")?.netns;
    let ok = format!("http://{}:8080/ok", api.ipv4);

    // A new dependency: its event within a second of its first request.
    let first = Instant::now();
    requests(client, &ok, 1)?;
    let appeared = wait_for(
        &events,
        "weft.topology.dependency.appeared",
        &[("source", "client"), ("target", "api")],
        Duration::from_secs(10),
    )
    .with_context(logs)?;
    let took = appeared.at - first;
    eprintln!("client -> api appeared {took:?} after its first request");
    ensure!(
        took <= Duration::from_secs(1),
        "client -> api appeared {took:?} after its first request\n{}",
        logs()
    );
    ensure!(appeared.event["source"] == "/weft/controller/topology");
    ensure!(appeared.event["sequence"].as_u64().is_some());

    // A baseline: 15 good requests a second for 6 buckets (the watch needs 5).
    let steady_until = Instant::now() + WIDTH * 6;
    while Instant::now() < steady_until {
        let tick = Instant::now();
        requests(client, &ok, 15)?;
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    // The baseline raised no error-rate anomaly.
    while let Ok(seen) = events.try_recv() {
        ensure!(
            !(seen.event["type"] == "weft.topology.anomaly"
                && seen.event["data"]["metric"] == "error_rate"),
            "an error-rate anomaly before the burst: {}",
            seen.event
        );
    }
    // The burst: 40 requests answered 500.
    let fail = format!("http://{}:8080/fail", api.ipv4);
    let burst_start = Instant::now();
    requests(client, &fail, 40)?;
    let burst_end = Instant::now();
    let anomaly = wait_for(
        &events,
        "weft.topology.anomaly",
        &[
            ("source", "client"),
            ("target", "api"),
            ("metric", "error_rate"),
        ],
        WIDTH * 5,
    )
    .with_context(logs)?;
    // Read while the burst still ran is 0 here (a bucket that ended mid-burst).
    let took = anomaly.at.saturating_duration_since(burst_end);
    eprintln!(
        "the 5xx burst ({:?}) has its anomaly {:?} after it started, {took:?} after it ended",
        burst_end - burst_start,
        anomaly.at - burst_start
    );
    ensure!(
        took <= WIDTH,
        "the anomaly arrived {took:?} after the burst, more than one bucket ({WIDTH:?})\n{}",
        logs()
    );
    ensure!(anomaly.event["data"]["direction"] == "up");

    // Another new dependency while the watch runs.
    let first = Instant::now();
    requests(client, &format!("http://{}:8080/ok", ledger.ipv4), 1)?;
    let appeared = wait_for(
        &events,
        "weft.topology.dependency.appeared",
        &[("source", "client"), ("target", "ledger")],
        Duration::from_secs(10),
    )
    .with_context(logs)?;
    ensure!(
        appeared.at - first <= Duration::from_secs(1),
        "client -> ledger appeared {:?} after its first request",
        appeared.at - first
    );

    // All of it is in the stored log, in order, with the shards' envelope.
    let page: Value = eventually(Duration::from_secs(5), Duration::from_millis(200), || {
        let page: Value = serde_json::from_str(&controller.get("/events?follow=false&from=1")?)?;
        let types: Vec<&str> = page["events"]
            .as_array()
            .context("events")?
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        ensure!(types.contains(&"weft.topology.anomaly"), "{types:?}");
        Ok(page)
    })?;
    let logged = page["events"].as_array().context("events")?;
    for (i, e) in logged.iter().enumerate() {
        ensure!(e["sequence"] == i as u64 + 1, "{e}");
        ensure!(e["specversion"] == "1.0" && e["datacontenttype"] == "application/json");
    }
    Ok(())
}

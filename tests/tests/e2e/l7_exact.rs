//! Requests counted as the application sees them (issue 12 section 3), on real clients and
//! servers: psql, the mariadb client, a gRPC server with a failing call and a WebSocket echo.
//! The counts asserted are the clients' own (statements they ran, errors they reported,
//! calls that failed, messages they sent), live through the agent (`GET /flows`) and from a
//! capture of the same traffic through `weft import pcap --flows`, exactly, both ways: the
//! agent's kernel program copies HTTP/2 (gRPC, nghttp) and AMQP connections whole, so the
//! live counts come from the same whole turns as the capture's.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_lab::netns::Netns;
use weft_lab::{eventually, servers, skip_unless_root};

use crate::support::{self, Weft};

const GRPC_SERVER: &str = r#"
import sys, grpc, concurrent.futures as f
def ok(req, ctx): return b"ok:" + req
def bad(req, ctx): raise RuntimeError("boom")
h = grpc.method_handlers_generic_handler("demo.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(ok),
    "Fail": grpc.unary_unary_rpc_method_handler(bad)})
s = grpc.server(f.ThreadPoolExecutor(2)); s.add_generic_rpc_handlers((h,))
s.add_insecure_port("%s:%s" % (sys.argv[1], sys.argv[2])); s.start(); s.wait_for_termination()
"#;

/// Calls Say `n` times and Fail once on one channel; prints "calls=N failed=M".
const GRPC_CLIENT: &str = r#"
import sys, grpc
ch = grpc.insecure_channel("%s:%s" % (sys.argv[1], sys.argv[2]))
say = ch.unary_unary("/demo.Echo/Say"); fail = ch.unary_unary("/demo.Echo/Fail")
calls = failed = 0
for i in range(int(sys.argv[3])):
    calls += 1
    try: say(b"x")
    except grpc.RpcError: failed += 1
calls += 1
try: fail(b"y")
except grpc.RpcError: failed += 1
ch.close()
print("calls=%d failed=%d" % (calls, failed))
"#;

const WS_SERVER: &str = r#"
import sys, asyncio, websockets
async def echo(ws, path=None):
    async for m in ws: await ws.send(m)
async def main():
    async with websockets.serve(echo, sys.argv[1], int(sys.argv[2]), compression=None):
        await asyncio.Future()
asyncio.run(main())
"#;

/// Sends `n` text messages, each echoed; prints "sent=N".
const WS_CLIENT: &str = r#"
import sys, asyncio, websockets
async def main():
    n = int(sys.argv[3]); sent = 0
    async with websockets.connect("ws://%s:%s/echo" % (sys.argv[1], sys.argv[2]), compression=None) as ws:
        for i in range(n):
            await ws.send("hello %d" % i); sent += 1
            await ws.recv()
    print("sent=%d" % sent)
asyncio.run(main())
"#;

/// pika: declares a queue, publishes `n` messages, gets two, then declares a missing queue
/// passively (the broker closes the channel with 404); prints "requests=N failed=M".
const AMQP_CLIENT: &str = r#"
import sys, pika
c = pika.BlockingConnection(pika.ConnectionParameters(sys.argv[1], int(sys.argv[2])))
ch = c.channel()
requests = failed = 0
ch.queue_declare(queue="jobs"); requests += 1
for i in range(int(sys.argv[3])):
    ch.basic_publish(exchange="", routing_key="jobs", body=b"job %d" % i); requests += 1
for i in range(2):
    ch.basic_get(queue="jobs", auto_ack=True); requests += 1
try:
    requests += 1
    ch.queue_declare(queue="missing", passive=True)
except pika.exceptions.ChannelClosedByBroker:
    failed += 1
c.close()
print("requests=%d failed=%d" % (requests, failed))
"#;

fn output(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = ns
        .command(args)
        .output()
        .with_context(|| format!("running {args:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// `key=value` from a client's report.
fn reported(out: &str, key: &str) -> Result<u64> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key}= in {out:?}"))
}

/// What the clients said they did.
#[derive(Debug)]
struct Expected {
    pg_queries: u64,
    pg_errors: u64,
    my_queries: u64,
    my_errors: u64,
    grpc_calls: u64,
    grpc_failed: u64,
    ws_sent: u64,
    amqp_requests: u64,
    amqp_failed: u64,
    /// URIs nghttp fetched on one connection (answered by the gRPC server).
    h2_uris: u64,
}

fn count(v: &Value, key: &str, label: &str) -> u64 {
    v[key][label].as_u64().unwrap_or(0)
}

/// The flow (one JSON object with `server`, `requests`, `errors`, `methods`, `statuses`)
/// towards `port` among `flows` (the client's side when both are there), checked against
/// what the clients reported.
fn check(flows: &[Value], e: &Expected) -> Result<()> {
    let to = |port: u16| -> Result<&Value> {
        let suffix = format!(":{port}");
        flows
            .iter()
            .filter(|f| f["server"].as_str().is_some_and(|s| s.ends_with(&suffix)))
            .find(|f| f["direction"].as_str().is_none_or(|d| d == "outbound"))
            .with_context(|| format!("no flow to port {port}"))
    };
    let n = |f: &Value, k: &str| f[k].as_u64().unwrap_or(0);
    let pg = to(5432)?;
    ensure!(pg["protocol"] == "postgres", "{pg}");
    ensure!(
        (n(pg, "requests"), n(pg, "errors")) == (e.pg_queries, e.pg_errors),
        "psql ran {} queries, {} failed: {pg}",
        e.pg_queries,
        e.pg_errors
    );
    let my = to(3306)?;
    ensure!(my["protocol"] == "mysql", "{my}");
    ensure!(
        (n(my, "requests"), n(my, "errors")) == (e.my_queries, e.my_errors),
        "mariadb ran {} queries, {} failed: {my}",
        e.my_queries,
        e.my_errors
    );
    // The gRPC client's connection (POSTs), not nghttp's (GETs) to the same server: the
    // gRPC client ran first, so its flow is the earliest.
    let rpc = flows
        .iter()
        .filter(|f| f["server"].as_str().is_some_and(|s| s.ends_with(":50051")))
        .filter(|f| f["direction"].as_str().is_none_or(|d| d == "outbound"))
        .filter(|f| count(f, "methods", "GET") == 0)
        .min_by_key(|f| f["first_seen_unix_ns"].as_u64().unwrap_or(u64::MAX))
        .context("no gRPC flow")?;
    ensure!(rpc["protocol"] == "grpc", "{rpc}");
    ensure!(
        (n(rpc, "requests"), n(rpc, "errors")) == (e.grpc_calls, e.grpc_failed),
        "the gRPC client made {} calls, {} failed: {rpc}",
        e.grpc_calls,
        e.grpc_failed
    );
    ensure!(count(rpc, "statuses", "200") == e.grpc_calls, "{rpc}");
    ensure!(count(rpc, "paths", "/demo.Echo/Fail") == 1, "{rpc}");
    ensure!(
        count(rpc, "paths", "/demo.Echo/Say") == e.grpc_calls - 1,
        "{rpc}"
    );
    let amqp = to(5672)?;
    ensure!(amqp["protocol"] == "amqp", "{amqp}");
    // The connection and channel setup never count, nor the close after the 404.
    ensure!(
        (n(amqp, "requests"), n(amqp, "errors")) == (e.amqp_requests, e.amqp_failed),
        "pika made {} requests, {} failed: {amqp}",
        e.amqp_requests,
        e.amqp_failed
    );
    let h2 = flows
        .iter()
        .filter(|f| f["server"].as_str().is_some_and(|s| s.ends_with(":50051")))
        .filter(|f| f["direction"].as_str().is_none_or(|d| d == "outbound"))
        .find(|f| count(f, "methods", "GET") > 0)
        .context("no nghttp flow")?;
    ensure!(
        n(h2, "requests") == e.h2_uris && count(h2, "statuses", "200") == e.h2_uris,
        "nghttp fetched {} URIs on one connection: {h2}",
        e.h2_uris
    );
    let ws = to(8765)?;
    ensure!(ws["protocol"] == "websocket", "{ws}");
    ensure!(count(ws, "statuses", "101") == 1, "one upgrade: {ws}");
    ensure!(
        count(ws, "methods", "TEXT") == e.ws_sent,
        "the client sent {} messages: {ws}",
        e.ws_sent
    );
    ensure!(n(ws, "errors") == 0, "a normal close is no error: {ws}");
    Ok(())
}

#[test]
fn requests_are_counted_as_the_clients_made_them() -> Result<()> {
    if skip_unless_root("requests_are_counted_as_the_clients_made_them") {
        return Ok(());
    }
    let lab = support::lab(&["client", "pg", "my", "rpc", "ws", "mq"])?;
    let pg = servers::postgres(lab.workload("pg")?)?;
    let my = servers::mariadb(lab.workload("my")?)?;
    let rpc = servers::python(lab.workload("rpc")?, "grpc", GRPC_SERVER, 50051)?;
    let ws = servers::python(lab.workload("ws")?, "ws", WS_SERVER, 8765)?;
    let mq = servers::rabbitmq(lab.workload("mq")?)?;
    let weft = Weft::start(&lab)?;
    let client = lab.workload("client")?;
    let hv = &lab.hypervisor().netns;
    let pcap = lab.dir().join("client.pcap");
    let pcap_s = pcap.to_string_lossy().into_owned();
    let mut tcpdump = hv.spawn(
        lab.dir(),
        "tcpdump-client",
        &[
            "tcpdump",
            "-i",
            &client.host_if,
            "-U",
            "-s",
            "0",
            "-w",
            &pcap_s,
            "tcp",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(1));
    let ns = &client.netns;

    let sql = "select 1;\nselect * from no_such_table;\nselect 2;\nselect 3;\n";
    let statements = sql.lines().count() as u64;
    let file = lab.dir().join("queries.sql");
    std::fs::write(&file, sql)?;
    let file_s = file.to_string_lossy().into_owned();
    let out = output(
        ns,
        &[
            "psql", "-h", &pg.ipv4, "-U", "postgres", "-d", "postgres", "-f", &file_s,
        ],
    )?;
    let pg_errors = out.matches("ERROR:").count() as u64;
    ensure!(pg_errors == 1, "psql said {out:?}");
    let out = output(
        ns,
        &[
            "sh",
            "-c",
            &format!(
                "mariadb -h {} -u u -ppw --skip-ssl --force < {file_s}",
                my.ipv4
            ),
        ],
    )?;
    let my_errors = out.matches("ERROR ").count() as u64;
    ensure!(my_errors == 1, "mariadb said {out:?}");
    let grpc_out = output(
        ns,
        &[
            "/usr/bin/python3",
            "-c",
            GRPC_CLIENT,
            &rpc.ipv4,
            "50051",
            "4",
        ],
    )?;
    let ws_out = output(
        ns,
        &["/usr/bin/python3", "-c", WS_CLIENT, &ws.ipv4, "8765", "3"],
    )?;
    let amqp_out = output(
        ns,
        &["/usr/bin/python3", "-c", AMQP_CLIENT, &mq.ipv4, "5672", "3"],
    )?;
    // nghttp (h2c, prior knowledge): three streams opened in one packet.
    let uris: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|p| format!("http://{}:50051/{p}", rpc.ipv4))
        .collect();
    let mut argv = vec!["nghttp", "-n"];
    argv.extend(uris.iter().map(String::as_str));
    output(ns, &argv)?;

    let expected = Expected {
        pg_queries: statements,
        pg_errors,
        my_queries: statements,
        my_errors,
        grpc_calls: reported(&grpc_out, "calls")?,
        grpc_failed: reported(&grpc_out, "failed")?,
        ws_sent: reported(&ws_out, "sent")?,
        amqp_requests: reported(&amqp_out, "requests")?,
        amqp_failed: reported(&amqp_out, "failed")?,
        h2_uris: uris.len() as u64,
    };

    // Live: the agent's records, per flow, from the controller.
    eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        let body: Value = serde_json::from_str(&weft.controller.get("/flows?limit=1000")?)?;
        let flows = body["flows"].as_array().context("flows")?;
        check(flows, &expected)
    })
    .with_context(|| format!("live, expected {expected:?}\n{}", weft.logs()))?;

    // The same traffic captured and imported.
    std::thread::sleep(Duration::from_secs(1));
    tcpdump.kill_hard();
    let weft_cli = weft_lab::weft::binary("weft")?;
    let out = std::process::Command::new(weft_cli)
        .args(["import", "pcap", &pcap_s, "--flows"])
        .output()
        .context("weft import pcap --flows")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    check(&flows, &expected).with_context(|| format!("pcap import, expected {expected:?}"))?;
    Ok(())
}

//! Application protocols in the lab: detected from payload (also on a non-standard port),
//! errors the test provokes are counted, and services are named from the registry and
//! from DNS answers seen on the wire.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_lab::netns::Netns;
use weft_lab::topology::Topology;
use weft_lab::weft::{Agent, Controller};
use weft_lab::{eventually, servers, skip_unless_root, traffic};

use crate::support::{self, Weft};

/// Runs a client command that may legitimately exit non-zero (an error reply is the point).
fn run_anyway(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = ns
        .command(args)
        .output()
        .with_context(|| format!("running {args:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn wait_for(weft: &Weft, what: &str, ok: impl Fn(&Topology) -> Result<()>) -> Result<Topology> {
    eventually(Duration::from_secs(25), Duration::from_millis(500), || {
        let t = weft.controller.topology()?;
        ok(&t).with_context(|| format!("waiting for {what}"))?;
        Ok(t)
    })
    .with_context(|| weft.logs())
}

#[test]
fn protocols_errors_and_names_come_from_payload() -> Result<()> {
    if skip_unless_root("protocols_errors_and_names_come_from_payload") {
        return Ok(());
    }
    const HTTP_FAILURES: usize = 3;
    const REDIS_ERRORS: usize = 4;
    let lab = support::lab(&["client", "web", "cache", "kv", "db", "dns", "ext"])?;
    let web = servers::nginx(lab.workload("web")?, support::static_site())?;
    let cache = servers::redis(lab.workload("cache")?)?;
    let kv = servers::redis_on(lab.workload("kv")?, 7777)?;
    let db = servers::postgres(lab.workload("db")?)?;
    let ext_wl = lab.workload("ext")?;
    let ext = servers::nginx(ext_wl, support::static_site())?;
    let dns = servers::dns(lab.workload("dns")?, &[("ext.lab", &ext_wl.ipv4)])?;
    let controller = Controller::start(&lab)?;
    // `ext` is a host weft does not manage: no agent reports it, the registry does not
    // know it, only a DNS answer can name it.
    let agent = Agent::start_excluding(&lab, 0, &controller.grpc_url(), &["ext"], &[])?;
    let weft = Weft { controller, agent };
    let client = &lab.workload("client")?.netns;

    traffic::curl_each(client, &format!("{}/small.json", web.url()), 2, &[])?;
    for _ in 0..HTTP_FAILURES {
        let code = client.exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/fail", web.url()),
        ])?;
        ensure!(code.trim() == "503", "nginx answered {code} to /fail");
    }
    let cli = |host: &str, port: u16, args: &[&str]| -> Result<String> {
        let port = port.to_string();
        let mut argv = vec!["redis-cli", "-h", host, "-p", &port];
        argv.extend_from_slice(args);
        run_anyway(client, &argv)
    };
    cli(&cache.ipv4, cache.port, &["SET", "greeting", "hello"])?;
    for _ in 0..REDIS_ERRORS {
        let out = cli(&cache.ipv4, cache.port, &["INCR", "greeting"])?;
        ensure!(
            out.contains("WRONGTYPE") || out.contains("not an integer"),
            "redis said {out:?}"
        );
    }
    for _ in 0..2 {
        let out = cli(&kv.ipv4, kv.port, &["PING"])?;
        ensure!(out.contains("PONG"), "redis on 7777 said {out:?}");
    }
    let psql = |sql: &str| {
        run_anyway(
            client,
            &[
                "psql", "-h", &db.ipv4, "-U", "postgres", "-d", "postgres", "-Atc", sql,
            ],
        )
    };
    ensure!(psql("select 1")?.trim() == "1", "psql select 1");
    let out = psql("select * from no_such_table")?;
    ensure!(out.contains("does not exist"), "psql said {out:?}");

    let answer = client.exec(&[
        "dig",
        "+short",
        "+time=2",
        "+tries=1",
        &format!("@{}", dns.ipv4),
        "ext.lab",
    ])?;
    ensure!(answer.trim() == ext_wl.ipv4, "dig answered {answer:?}");
    // The DNS answer must be merged before the connection it names.
    wait_for(&weft, "client->dns over dns", |t| {
        let d = t.edge("client", "dns")?;
        ensure!(d.protocol == "dns" && d.transport == "udp", "{d:?}");
        Ok(())
    })?;
    traffic::curl_each(client, &format!("{}/small.json", ext.url()), 2, &[])?;

    let t = wait_for(&weft, "every edge", |t| {
        let web = t.edge("client", "web")?;
        ensure!(
            web.requests >= (2 + HTTP_FAILURES) as u64 && web.errors >= HTTP_FAILURES as u64,
            "{web:?}"
        );
        let cache = t.edge("client", "cache")?;
        ensure!(cache.errors >= REDIS_ERRORS as u64, "{cache:?}");
        t.edge("client", "kv")?;
        let db = t.edge("client", "db")?;
        ensure!(db.errors >= 1, "{db:?}");
        ensure!(
            t.dependencies
                .iter()
                .any(|d| d.source == "client" && d.target.starts_with("ext.lab")),
            "no client->ext.lab yet"
        );
        Ok(())
    })?;

    let web_dep = t.edge("client", "web")?;
    assert_eq!(web_dep.protocol, "http", "{web_dep:?}");
    assert_eq!(
        web_dep.errors, HTTP_FAILURES as u64,
        "503s are the only errors: {web_dep:?}"
    );
    assert_eq!(web_dep.requests, (2 + HTTP_FAILURES) as u64, "{web_dep:?}");
    let cache_dep = t.edge("client", "cache")?;
    assert_eq!(cache_dep.protocol, "redis", "{cache_dep:?}");
    assert_eq!(
        cache_dep.errors, REDIS_ERRORS as u64,
        "one error per INCR of a string: {cache_dep:?}"
    );
    let kv_dep = t.edge("client", "kv")?;
    assert_eq!(
        (kv_dep.protocol.as_str(), kv_dep.port),
        ("redis", 7777),
        "payload beats the port: {kv_dep:?}"
    );
    assert_eq!(kv_dep.errors, 0, "{kv_dep:?}");
    let db_dep = t.edge("client", "db")?;
    assert_eq!(db_dep.protocol, "postgres", "{db_dep:?}");
    assert_eq!(db_dep.errors, 1, "one failed query: {db_dep:?}");
    let ext_dep = t
        .dependencies
        .iter()
        .find(|d| d.source == "client" && d.target.starts_with("ext.lab"))
        .context("client->ext.lab")?;
    assert_eq!(ext_dep.protocol, "http", "{ext_dep:?}");
    assert!(
        !t.dependencies
            .iter()
            .any(|d| d.target.contains(&ext_wl.ipv4)),
        "the DNS name replaces the address: {:?}",
        t.edges()
    );
    Ok(())
}

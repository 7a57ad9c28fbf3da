//! Weaves, end to end: an environment of nginx and PostgreSQL (and a client) on hv1; its
//! history (definitions by revision, volume snapshots every 2 s); a weave branched from a
//! time before a schema change runs beside the environment in its own namespaces with
//! copy-on-write clones of the volumes as they were then; new connections to a port are
//! routed to the weave by the kernel; HTTP requests carrying a header are routed to it by
//! the agent's request router, request by request on one connection; writes in one are
//! not seen in the other until `sync_volumes`; deleting the weave removes what it made. And a weave activated and
//! deactivated 100 times under load (a new connection per request): not one request fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::load::{self, Outcome, Plan};
use weft_lab::weft::Controller;
use weft_lab::{Lab, eventually, skip_unless_root};

use crate::networks::{TwoHypervisors, address, exec, node_logs};

const ENV: &str = "\
network: wvenv
addressing:
  shards: wvpool
nodes:
  client:
    type: vm
  web:
    image: nginx:latest
    ports: [80]
    volumes: [data:/srv]
  db:
    image: postgres:16
    ports: [5432]
    volumes: [data:/var/lib/postgresql]
connections:
  client -> web:
    port: 80
  client -> db:
    port: 5432
";

/// Node `node` of `wvenv`'s logs (what weft notes there included).
fn node_log(lab: &Lab, node: &str) -> String {
    let dir = lab.dir().join("nodes-hv1/wvenv").join(node).join("log");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

/// How often the node's `before_snapshot` hook (a CHECKPOINT) ran before `purpose` ("a
/// snapshot", "a sync to"), by its log.
fn checkpoint_hooks(lab: &Lab, node: &str, purpose: &str) -> usize {
    let before = format!("before {purpose}");
    node_log(lab, node)
        .lines()
        .filter(|l| l.contains(&before) && l.contains("CHECKPOINT") && l.contains("done in"))
        .count()
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The namespace of node `node` of network `net` on hv1.
pub(crate) fn ns(lab: &Lab, net: &str, node: &str) -> String {
    format!("{}-{net}-{node}", lab.node_netns_prefix("hv1"))
}

/// A node's volume directory on hv1 (what its server reads).
fn volume(lab: &Lab, net: &str, node: &str, name: &str) -> PathBuf {
    lab.dir()
        .join("nodes-hv1")
        .join(net)
        .join(node)
        .join("volumes")
        .join(name)
}

fn psql(ns: &str, host: &str, sql: &str) -> Result<String> {
    Ok(
        exec(ns, &["psql", "-h", host, "-U", "postgres", "-tAc", sql])?
            .trim()
            .to_owned(),
    )
}

/// The page nginx serves at `host`, fetched from `ns` on a new connection.
pub(crate) fn page(ns: &str, host: &str) -> Result<String> {
    Ok(exec(
        ns,
        &["curl", "-sS", "--max-time", "3", &format!("http://{host}/")],
    )?
    .trim()
    .to_owned())
}

/// The newest snapshot of `node` reported for network `net`, as (id, taken_unix_ns).
fn newest_snapshot(controller: &Controller, net: &str, node: &str) -> Result<(String, u64)> {
    let s = controller.json("GET", &format!("/networks/{net}/snapshots"), None)?;
    let list = s["snapshots"][node]
        .as_array()
        .with_context(|| format!("no snapshots of {node}: {s}"))?;
    let last = list.last().with_context(|| format!("{node}: none yet"))?;
    Ok((
        last["id"].as_str().unwrap_or_default().to_owned(),
        last["taken_unix_ns"].as_u64().unwrap_or(0),
    ))
}

/// Creates network `name` from `tdl` on hv1 (retried until the agents have registered)
/// and waits until it is in sync.
pub(crate) fn environment(
    controller: &Controller,
    name: &str,
    tdl: &str,
    logs: &dyn Fn() -> String,
) -> Result<Value> {
    let env = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks",
            Some(&json!({"tdl": tdl, "file_name": format!("{name}.tdl"), "hosts": ["hv1"]})),
        )
    })
    .with_context(logs)?;
    eventually(Duration::from_secs(90), Duration::from_millis(200), || {
        let s = controller.json("GET", &format!("/networks/{name}/status"), None)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    Ok(env)
}

fn weave(controller: &Controller, id: &str) -> Result<Value> {
    controller.json("GET", &format!("/weaves/{id}"), None)
}

pub(crate) fn wait_running(
    controller: &Controller,
    id: &str,
    logs: &dyn Fn() -> String,
) -> Result<Value> {
    eventually(Duration::from_secs(90), Duration::from_millis(200), || {
        let w = weave(controller, id)?;
        ensure!(w["state"] == json!("running"), "weave {id}: {w}");
        Ok(w)
    })
    .with_context(logs)
}

#[test]
fn a_weave_from_before_a_schema_change_runs_beside_the_environment() -> Result<()> {
    if skip_unless_root("a_weave_from_before_a_schema_change_runs_beside_the_environment") {
        return Ok(());
    }
    let two = TwoHypervisors::start_full(
        "wvpool",
        &[],
        &[],
        &["--volume-snapshot-interval-seconds", "2"],
    )?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || {
        format!(
            "{}\nenv db:\n{}\nweave db:\n{}",
            two.logs(),
            node_logs(lab, "hv1", "wvenv", "db"),
            node_logs(lab, "hv1", "wvold", "db")
        )
    };
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    let env = environment(controller, "wvenv", ENV, &logs)?;
    let (client, db_ns) = (ns(lab, "wvenv", "client"), ns(lab, "wvenv", "db"));
    let (db, web) = (address(&env, "db")?, address(&env, "web")?);
    phase("environment running");

    // The state before the change: a table, a page.
    eventually(Duration::from_secs(60), Duration::from_millis(250), || {
        psql(&client, &db, "select 1")
    })
    .with_context(logs)?;
    psql(
        &client,
        &db,
        "create table items (id int primary key, name text); insert into items values (1, 'tea')",
    )?;
    std::fs::write(
        volume(lab, "wvenv", "web", "data").join("www/index.html"),
        "v1\n",
    )?;
    ensure!(page(&client, &web)? == "v1", "prod page before the change");
    let written = now_unix_ns();
    // A scheduled snapshot of both nodes taken after PostgreSQL wrote its WAL out
    // (synchronous_commit is off in the profile: up to 0.6 s).
    let settle = 1_500_000_000;
    eventually(Duration::from_secs(30), Duration::from_millis(250), || {
        for node in ["db", "web"] {
            let (_, taken) = newest_snapshot(controller, "wvenv", node)?;
            ensure!(
                taken > written + settle,
                "{node}: no snapshot after the write yet"
            );
        }
        Ok(())
    })
    .with_context(logs)?;
    let before_change = now_unix_ns();
    phase("snapshots of the state before the change");

    // The change: a schema change, a new page, a new node in the definition.
    std::thread::sleep(Duration::from_millis(50));
    psql(
        &client,
        &db,
        "alter table items add column price int; insert into items values (2, 'coffee', 3)",
    )?;
    std::fs::write(
        volume(lab, "wvenv", "web", "data").join("www/index.html"),
        "v2\n",
    )?;
    let changed = ENV.replace("connections:\n", "  extra:\n    type: vm\nconnections:\n");
    controller
        .json(
            "PUT",
            "/networks/wvenv",
            Some(&json!({"tdl": changed, "file_name": "wvenv.tdl"})),
        )
        .with_context(logs)?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = controller.json("GET", "/networks/wvenv/status", None)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        exec(&ns(lab, "wvenv", "extra"), &["true"])?;
        Ok(())
    })
    .with_context(logs)?;
    let history = controller.json("GET", "/networks/wvenv/history", None)?;
    ensure!(
        history["history"].as_array().is_some_and(|h| h.len() >= 2),
        "history of two definitions at least: {history}"
    );
    phase("schema changed, definition changed");

    // The weave, from before the change.
    let started = Instant::now();
    let (code, body) = controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "wvenv", "at": before_change, "id": "wvold"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", logs());
    let w = wait_running(controller, "wvold", &logs)?;
    phase(&format!(
        "weave running after {:.0} ms (ready_seconds {})",
        started.elapsed().as_secs_f64() * 1e3,
        w["ready_seconds"]
    ));
    // The definition of that time: no `extra`; nodes on the environment's host.
    ensure!(
        w["placement"].get("extra").is_none() && w["placement"]["db"] == json!("hv1"),
        "weave placement: {w}"
    );
    ensure!(
        !weft_lab::netns::exists(&ns(lab, "wvold", "extra")),
        "the weave has a node that did not exist then"
    );
    let old_client = ns(lab, "wvold", "client");
    // Its own clients see the state of that time (same addresses, its own layer 2).
    let old_db = eventually(Duration::from_secs(60), Duration::from_millis(250), || {
        psql(
            &old_client,
            &db,
            "select string_agg(name, ',' order by id) from items",
        )
    })
    .with_context(logs)?;
    ensure!(old_db == "tea", "weave's rows: {old_db:?}");
    let old_columns = psql(
        &old_client,
        &db,
        "select count(*) from information_schema.columns where table_name = 'items'",
    )?;
    ensure!(
        old_columns == "2",
        "weave has the column added later: {old_columns}"
    );
    ensure!(page(&old_client, &web)? == "v1", "weave's page");
    ensure!(page(&client, &web)? == "v2", "prod's page");

    // Routing by port: 5432 to the weave, 80 stays with the environment.
    let (code, body) =
        controller.send("POST", "/weaves/wvold/routes", Some(&json!({"port": 5432})))?;
    ensure!(code == 200, "route 5432: {code} {body}");
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let rows = psql(
            &client,
            &db,
            "select string_agg(name, ',' order by id) from items",
        )?;
        ensure!(rows == "tea", "5432 not routed to the weave yet: {rows}");
        Ok(())
    })
    .with_context(logs)?;
    ensure!(page(&client, &web)? == "v2", "port 80 must stay with prod");
    phase("5432 routed to the weave, 80 not");

    // Routing by request: on port 80, requests with `X-Weft-Weave: wvold` go to the weave
    // (its page is v1), every other one to the environment (v2), on one connection too.
    let routers = || -> Result<Vec<String>> {
        let prefix = format!("{}.router.", lab.node_netns_prefix("hv1"));
        Ok(weft_lab::netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect())
    };
    ensure!(
        routers()?.is_empty(),
        "a request router before any route by request"
    );
    let (code, body) = controller.send(
        "POST",
        "/weaves/wvold/routes",
        Some(
            &json!({"port": 80, "node": "web", "header": "X-Weft-Weave", "header_value": "wvold"}),
        ),
    )?;
    ensure!(code == 200, "route 80 by header: {code} {body}");
    ensure!(
        body.contains("\"header\":\"x-weft-weave\""),
        "the route by header in the weave: {body}"
    );
    let url = format!("http://{web}/");
    let with_header = |ns: &str| -> Result<String> {
        Ok(exec(
            ns,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "-H",
                "X-Weft-Weave: wvold",
                &url,
            ],
        )?
        .trim()
        .to_owned())
    };
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let p = with_header(&client)?;
        ensure!(
            p == "v1",
            "80 with the header not routed to the weave yet: {p:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    ensure!(
        page(&client, &web)? == "v2",
        "80 without the header must stay with prod"
    );
    // Four requests on one connection (curl reuses it across --next; num_connects says
    // whether a transfer opened one): weave, prod, weave (other case and spacing), prod
    // (another value).
    let one = exec(
        &client,
        &[
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-w",
            " connects=%{num_connects}\n",
            "-H",
            "X-Weft-Weave: wvold",
            &url,
            "--next",
            "-w",
            " connects=%{num_connects}\n",
            &url,
            "--next",
            "-w",
            " connects=%{num_connects}\n",
            "-H",
            "x-weft-weave:   wvold ",
            &url,
            "--next",
            "-w",
            " connects=%{num_connects}\n",
            "-H",
            "X-Weft-Weave: other",
            &url,
        ],
    )?;
    let lines: Vec<&str> = one
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(
        lines
            == [
                "v1",
                "connects=1",
                "v2",
                "connects=0",
                "v1",
                "connects=0",
                "v2",
                "connects=0"
            ],
        "four requests on one connection, routed one by one: {one:?}"
    );
    // The node's firewall still decides who gets in: db, which the definition does not
    // connect to web, reaches the router (port 80 is steered whatever the source) but
    // neither web through it. The router's connection from db's address is refused by
    // web's rules (the environment's and the weave's alike; their last built-in rule
    // resets a routed connection no rule lets in): a 502 at once, saying so, never a
    // page (nor a wait for the router's connect timeout).
    let from_db = |header: Option<&str>| -> Result<String> {
        let mut c = weft_lab::netns::command_in(&db_ns, &["timeout", "15"]);
        c.args([
            "curl",
            "-sS",
            "--max-time",
            "12",
            "-w",
            " status=%{http_code}",
        ]);
        if let Some(h) = header {
            c.args(["-H", h]);
        }
        c.arg(&url);
        weft_lab::cmd::run(&mut c)
    };
    let (to_weave, to_env) = std::thread::scope(|s| {
        let w = s.spawn(|| from_db(Some("X-Weft-Weave: wvold")));
        let e = from_db(None);
        (w.join(), e)
    });
    let to_weave = to_weave.map_err(|_| anyhow::anyhow!("curl thread panicked"))??;
    let to_env = to_env?;
    for (side, out) in [("target", &to_weave), ("origin", &to_env)] {
        ensure!(
            out.contains(&format!("the {side} is unreachable"))
                && out.contains("refused")
                && out.ends_with("status=502"),
            "db got past web's firewall through the router ({side}): {out:?}\n{}",
            logs()
        );
    }
    let made = routers()?;
    ensure!(made.len() == 1, "one request router for web: {made:?}");
    // Removing the route by header: port 80 is the environment's again.
    let (code, body) = controller.send(
        "DELETE",
        "/weaves/wvold/routes/80?node=web&header=x-weft-weave&header_value=wvold",
        None,
    )?;
    ensure!(code == 200, "remove the route by header: {code} {body}");
    eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        let p = with_header(&client)?;
        ensure!(
            p == "v2",
            "80 with the header still routed to the weave: {p:?}"
        );
        // The steer of web goes back to the weave's node itself: the router goes.
        ensure!(
            routers()?.is_empty(),
            "request router still there: {:?}",
            routers()?
        );
        Ok(())
    })
    .with_context(logs)?;
    phase("80 routed by header, request by request, then back to prod");

    // Writes in one are not seen in the other. In the weave, through the routed port:
    psql(&client, &db, "insert into items values (3, 'weave-only')")?;
    // In the environment, from inside its db node (not through the routed path):
    psql(&db_ns, &db, "insert into items values (4, 'prod-only', 1)")?;
    let prod_rows = psql(
        &db_ns,
        &db,
        "select string_agg(name, ',' order by id) from items",
    )?;
    ensure!(
        prod_rows == "tea,coffee,prod-only",
        "prod rows: {prod_rows}"
    );
    let weave_rows = psql(
        &client,
        &db,
        "select string_agg(name, ',' order by id) from items",
    )?;
    ensure!(weave_rows == "tea,weave-only", "weave rows: {weave_rows}");

    // sync_volumes(environment -> weave, data): the weave's nodes get the environment's
    // volumes as they are now (its own writes replaced).
    std::thread::sleep(Duration::from_millis(1500)); // prod's WAL written out
    let (code, body) = controller.send(
        "POST",
        "/weaves/wvold/sync",
        Some(&json!({"source": "wvenv", "volume": "data"})),
    )?;
    ensure!(code == 200, "sync: {code} {body}\n{}", logs());
    let synced: Value = serde_json::from_str(&body)?;
    let nodes: Vec<&str> = synced["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node"].as_str())
        .collect();
    ensure!(
        nodes.contains(&"db") && nodes.contains(&"web"),
        "synced nodes: {synced}"
    );
    phase(&format!("synced: {synced}"));
    let rows = eventually(Duration::from_secs(60), Duration::from_millis(250), || {
        psql(
            &client,
            &db,
            "select string_agg(name, ',' order by id) from items",
        )
    })
    .with_context(logs)?;
    ensure!(
        rows == "tea,coffee,prod-only",
        "weave after sync (through the routed port): {rows}"
    );
    ensure!(page(&old_client, &web)? == "v2", "weave's page after sync");
    // The sync copied the environment's live PostgreSQL volume after its CHECKPOINT hook.
    ensure!(
        checkpoint_hooks(lab, "db", "a sync to wvold/db") == 1,
        "db: no CHECKPOINT hook before the sync copied its volume:\n{}",
        node_log(lab, "db")
    );
    let snapshot_hooks = checkpoint_hooks(lab, "db", "a snapshot");

    // Deleting the weave: its namespaces and volumes go, 5432 is the environment's again.
    let (code, body) = controller.send("DELETE", "/weaves/wvold", None)?;
    ensure!(code == 200, "delete: {code} {body}");
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        for node in ["client", "web", "db"] {
            ensure!(
                !weft_lab::netns::exists(&ns(lab, "wvold", node)),
                "{node} of the weave still there"
            );
        }
        ensure!(
            !volume(lab, "wvold", "db", "data").exists(),
            "weave's db volume still there"
        );
        Ok(())
    })
    .with_context(logs)?;
    let rows = eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        psql(
            &client,
            &db,
            "select string_agg(name, ',' order by id) from items",
        )
    })?;
    ensure!(rows == "tea,coffee,prod-only", "after delete: {rows}");
    let (code, _) = controller.send("GET", "/weaves/wvold", None)?;
    ensure!(code == 404, "GET after delete: {code}");

    // A weave from now: PostgreSQL's profile checkpoints right before the snapshot (its
    // `before_snapshot` hook), nginx's has none; the weave has the row written just before.
    psql(
        &db_ns,
        &db,
        "insert into items values (5, 'just-before', 1)",
    )?;
    let (code, body) = controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "wvenv", "id": "wvnow"})),
    )?;
    ensure!(
        code == 201,
        "create weave from now: {code} {body}\n{}",
        logs()
    );
    wait_running(controller, "wvnow", &logs)?;
    // The snapshot is taken while the weave is made: by the weave's node (its clone asks
    // for that snapshot) or by the environment's own apply, whichever comes first; the
    // hook runs before it either way.
    ensure!(
        checkpoint_hooks(lab, "db", "a snapshot")
            + checkpoint_hooks(lab, "db", "a clone for wvnow/db")
            > snapshot_hooks,
        "db: no CHECKPOINT hook for this weave's snapshot:\n{}",
        node_log(lab, "db")
    );
    ensure!(
        checkpoint_hooks(lab, "web", "") == 0,
        "web (nginx has no hook) ran one:\n{}",
        node_log(lab, "web")
    );
    let now_rows = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        psql(
            &ns(lab, "wvnow", "client"),
            &db,
            "select string_agg(name, ',' order by id) from items",
        )
    })
    .with_context(logs)?;
    ensure!(
        now_rows == "tea,coffee,prod-only,just-before",
        "weave from now: {now_rows}"
    );
    let (code, body) = controller.send("DELETE", "/weaves/wvnow", None)?;
    ensure!(code == 200, "delete wvnow: {code} {body}");
    phase("weave from now: checkpointed before its snapshot, has the last write");
    Ok(())
}

const ACT: &str = "\
network: wvact
addressing:
  shards: wvapool
nodes:
  client:
    type: vm
  web:
    image: nginx:latest
    ports: [80]
    volumes: [data:/srv]
connections:
  client -> web:
    port: 80
";

/// Counts answers by body, and the failed requests with their errors.
pub(crate) fn tally(samples: &[load::Sample]) -> (usize, usize, Vec<String>) {
    let (mut prod, mut weave, mut failed) = (0, 0, Vec::new());
    for s in samples {
        match &s.outcome {
            Outcome::Ok { body } if body == b"prod\n" => prod += 1,
            Outcome::Ok { body } if body == b"weave\n" => weave += 1,
            Outcome::Ok { body } => failed.push(format!(
                "at {:?}: unexpected body {:?}",
                s.started,
                String::from_utf8_lossy(body)
            )),
            Outcome::Failed(e) => failed.push(format!("at {:?}: {e}", s.started)),
        }
    }
    (prod, weave, failed)
}

#[test]
fn a_weave_activated_100_times_under_load_fails_no_request() -> Result<()> {
    if skip_unless_root("a_weave_activated_100_times_under_load_fails_no_request") {
        return Ok(());
    }
    const SWITCHES: usize = 100;
    let two = TwoHypervisors::start("wvapool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let env = environment(controller, "wvact", ACT, &logs)?;
    let web: std::net::IpAddr = address(&env, "web")?.parse()?;
    let client = ns(lab, "wvact", "client");
    std::fs::write(
        volume(lab, "wvact", "web", "data").join("www/index.html"),
        "prod\n",
    )?;
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        ensure!(page(&client, &web.to_string())? == "prod", "prod page");
        Ok(())
    })
    .with_context(logs)?;

    // A weave from now; its page changed in its own volume only.
    let (code, body) = controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "wvact", "id": "wvnew"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", logs());
    wait_running(controller, "wvnew", &logs)?;
    std::fs::write(
        volume(lab, "wvnew", "web", "data").join("www/index.html"),
        "weave\n",
    )?;
    ensure!(
        page(&ns(lab, "wvnew", "client"), &web.to_string())? == "weave",
        "weave's page"
    );
    ensure!(page(&client, &web.to_string())? == "prod", "prod's page");

    let plan = Plan {
        netns: PathBuf::from(format!("/run/netns/{client}")),
        target: SocketAddr::new(web, 80),
        path: "/".into(),
        rate: 2000,
        threads: 8,
        duration: Duration::from_secs(120),
        max_requests: 400_000,
        timeout: Duration::from_secs(5),
    };
    let running = load::start(&plan)?;
    let t0 = running.t0;
    std::thread::sleep(Duration::from_secs(1));
    let mut switch_errors = Vec::new();
    for i in 0..SWITCHES {
        for (method, path) in [
            ("POST", "/weaves/wvnew/activate"),
            ("DELETE", "/weaves/wvnew/activate"),
        ] {
            let (code, body) = controller.send(method, path, None)?;
            if code != 200 {
                switch_errors.push(format!("switch {i} {method} {path}: {code} {body}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The last state: active. Every request started a second after it is the weave's.
    let (code, body) = controller.send("POST", "/weaves/wvnew/activate", None)?;
    ensure!(code == 200, "final activate: {code} {body}");
    let active_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let samples = running.finish()?;
    ensure!(switch_errors.is_empty(), "switches: {switch_errors:?}");
    let (prod, weave_answers, failed) = tally(&samples);
    eprintln!(
        "{} requests: {prod} answered by the environment, {weave_answers} by the weave, {} failed",
        samples.len(),
        failed.len()
    );
    ensure!(
        failed.is_empty(),
        "{} of {} requests failed, the first: {:?}\n{}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)],
        logs()
    );
    ensure!(
        prod > 1000 && weave_answers > 1000,
        "both sides must have answered: {prod} / {weave_answers}"
    );
    // After the last activation had been applied (1 s), only the weave answers.
    let t_active = active_at.duration_since(t0) + Duration::from_secs(1);
    let late: Vec<&load::Sample> = samples.iter().filter(|s| s.started > t_active).collect();
    ensure!(late.len() > 100, "too few requests after the activation");
    let late_prod = late
        .iter()
        .filter(|s| matches!(&s.outcome, Outcome::Ok { body } if body == b"prod\n"))
        .count();
    if late_prod > 0 {
        bail!(
            "{late_prod} of {} requests after the activation were answered by the environment",
            late.len()
        );
    }
    Ok(())
}

/// A gRPC server (Debian's python3-grpcio, so /usr/bin/python3; generic handlers: no
/// generated code) whose `Who` answers the
/// name of the network namespace it runs in, and whose `Fail` raises.
/// Python: `namespace()`, the name (in /run/netns) of the network namespace the process
/// runs in; the who-servers below start with it.
const WHO_NAMESPACE: &str = r#"
import os
def namespace():
    me = os.stat("/proc/self/ns/net")
    for n in os.listdir("/run/netns"):
        st = os.stat(os.path.join("/run/netns", n))
        if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino):
            return n
    return "?"
"#;

const GRPC_WHO_SERVER: &str = r#"
import os, sys, grpc, concurrent.futures as f
NS = namespace().encode()
def who(req, ctx): return NS
def bad(req, ctx): raise RuntimeError("boom")
def peer(req, ctx): return ctx.peer().encode()
h = grpc.method_handlers_generic_handler("demo.Who", {
    "Who": grpc.unary_unary_rpc_method_handler(who),
    "Peer": grpc.unary_unary_rpc_method_handler(peer),
    "Fail": grpc.unary_unary_rpc_method_handler(bad)})
s = grpc.server(f.ThreadPoolExecutor(8)); s.add_generic_rpc_handlers((h,))
s.add_insecure_port("0.0.0.0:%s" % sys.argv[1]); s.start(); s.wait_for_termination()
"#;

/// Calls on ONE channel (one HTTP/2 connection): six `Who`s in turn (with the header, without,
/// with it in another case, with another value...), eight at once, and a `Fail` with the
/// header. Prints `who <label> <namespace>` per call and `fail <status code>`, then
/// `peer h|n <peer>`: the client's address as the server saw it, with and without the header.
const GRPC_WHO_CLIENT: &str = r#"
import sys, grpc
ch = grpc.insecure_channel("%s:%s" % (sys.argv[1], sys.argv[2]))
who = ch.unary_unary("/demo.Who/Who"); fail = ch.unary_unary("/demo.Who/Fail")
H = [("x-weft-weave", "wvg1")]
for label, md in [("h1", H), ("n1", []), ("h2", [("x-weft-weave", " wvg1 ")]),
                  ("o1", [("x-weft-weave", "other")]), ("h3", H), ("n2", [])]:
    print("who %s %s" % (label, who(b"", metadata=md, timeout=5).decode()), flush=True)
futs = [(("c%d" % i) + ("h" if i % 2 == 0 else "n"), who.future(b"", metadata=H if i % 2 == 0 else [], timeout=5)) for i in range(8)]
for label, fu in futs:
    print("who %s %s" % (label, fu.result().decode()), flush=True)
try:
    fail(b"", metadata=H, timeout=5); print("fail none")
except grpc.RpcError as e:
    print("fail %s" % e.code().name)
peer = ch.unary_unary("/demo.Who/Peer")
for label, md in [("h", H), ("n", [])]:
    print("peer %s %s" % (label, peer(b"", metadata=md, timeout=5).decode()), flush=True)
ch.close()
"#;

/// gRPC routed by a header, call by call on one HTTP/2 connection: the request router
/// serves the client's h2c connection and sends each stream to the environment's `api` or
/// the weave's copy of it (its own HTTP/2 connection to each); answers and gRPC status
/// come back on the client's streams.
#[test]
fn grpc_calls_on_one_connection_are_routed_call_by_call_by_header() -> Result<()> {
    if skip_unless_root("grpc_calls_on_one_connection_are_routed_call_by_call_by_header") {
        return Ok(());
    }
    let two = TwoHypervisors::start("wvgpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let (server, client_py) = (
        lab.dir().join("who_server.py"),
        lab.dir().join("who_client.py"),
    );
    std::fs::write(&server, format!("{WHO_NAMESPACE}{GRPC_WHO_SERVER}"))?;
    std::fs::write(&client_py, GRPC_WHO_CLIENT)?;
    let tdl = format!(
        "\
network: wvgrpc
addressing:
  shards: wvgpool
nodes:
  client:
    type: vm
  api:
    command: /usr/bin/python3 {} 50051
    ports: [50051]
connections:
  client -> api:
    port: 50051
",
        server.display()
    );
    let env = environment(controller, "wvgrpc", &tdl, &logs)?;
    let api = address(&env, "api")?;
    let client = ns(lab, "wvgrpc", "client");
    let client_py = client_py.display().to_string();
    // The calls `(label, namespace)`, and the peers the servers saw (`peer h|n ...`).
    type Calls = Vec<(String, String)>;
    let run_all = || -> Result<(Calls, Vec<String>)> {
        let out = exec(
            &client,
            &[
                "timeout",
                "60",
                "/usr/bin/python3",
                &client_py,
                &api,
                "50051",
            ],
        )?;
        let calls = out
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                match (w.next(), w.next(), w.next()) {
                    (Some("who"), Some(label), Some(ns)) => Some((label.to_owned(), ns.to_owned())),
                    (Some("fail"), Some(code), None) => Some(("fail".to_owned(), code.to_owned())),
                    _ => None,
                }
            })
            .collect();
        let peers = out
            .lines()
            .filter(|l| l.starts_with("peer "))
            .map(str::to_owned)
            .collect();
        Ok((calls, peers))
    };
    let run = || run_all().map(|(calls, _)| calls);
    let env_ns = ns(lab, "wvgrpc", "api");
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        let calls = run()?;
        ensure!(
            calls.len() == 15 && calls.iter().all(|(l, n)| l == "fail" || *n == env_ns),
            "before the weave every call is the environment's: {calls:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    let (code, body) = controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "wvgrpc", "id": "wvg1"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", logs());
    wait_running(controller, "wvg1", &logs)?;
    let (code, body) = controller.send(
        "POST",
        "/weaves/wvg1/routes",
        Some(&json!({"port": 50051, "node": "api", "header": "X-Weft-Weave", "header_value": "wvg1"})),
    )?;
    ensure!(code == 200, "route 50051 by header: {code} {body}");
    let weave_ns = ns(lab, "wvg1", "api");
    let (calls, peers) = eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        let (calls, peers) = run_all()?;
        ensure!(
            calls.first().is_some_and(|(_, n)| *n == weave_ns),
            "the first call (with the header) not routed to the weave yet: {calls:?}"
        );
        Ok((calls, peers))
    })
    .with_context(logs)?;
    // Both servers see the client's address on the router's HTTP/2 connections.
    let client_address = address(&env, "client")?;
    let want_peer = |label: &str| format!("peer {label} ipv4:{client_address}:");
    ensure!(
        peers.len() == 2
            && peers[0].starts_with(&want_peer("h"))
            && peers[1].starts_with(&want_peer("n")),
        "the servers behind the router saw {peers:?}, not the client {client_address}"
    );
    let mut wrong = Vec::new();
    for (label, got) in &calls {
        let want = if label == "fail" {
            "UNKNOWN"
        } else if label.starts_with('h') || label.ends_with('h') {
            weave_ns.as_str()
        } else {
            env_ns.as_str()
        };
        if got != want {
            wrong.push(format!("{label}: {got}, not {want}"));
        }
    }
    ensure!(
        calls.len() == 15 && wrong.is_empty(),
        "15 calls on one connection, each to its side: {wrong:?} in {calls:?}"
    );
    // Fail (an exception in the server) came back through the router as the call's status.
    eprintln!("grpc by header: {calls:?}");
    let (code, body) = controller.send("DELETE", "/weaves/wvg1", None)?;
    ensure!(code == 200, "delete wvg1: {code} {body}");
    Ok(())
}

/// An HTTPS server (Python's `ssl`, that is OpenSSL; HTTP/1.1 keep-alive) whose every
/// answer is the name of the network namespace it runs in and the address the connection
/// came from. `server.py PORT CERT KEY`.
const TLS_WHO_SERVER: &str = r#"
import os, ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
NS = namespace()
class Who(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("%s %s\n" % (NS, self.client_address[0])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s = ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Who)
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"#;

/// TLS routed by server name: a real HTTPS server (OpenSSL) in the environment and in a
/// weave, clients that verify its certificate (curl). The request router does not hold
/// the keys: it routes each TLS connection whole by its ClientHello's server name, taken
/// as the `host` header of a route, and both ends see each other's bytes unchanged (the
/// handshake and the certificate check succeed on both sides). Both servers see the
/// client's own address on the connections the router made to them.
#[test]
fn tls_connections_are_routed_whole_to_the_weave_by_server_name() -> Result<()> {
    if skip_unless_root("tls_connections_are_routed_whole_to_the_weave_by_server_name") {
        return Ok(());
    }
    let two = TwoHypervisors::start("wvtpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let (server, cert, key) = (
        lab.dir().join("tls_who_server.py"),
        lab.dir().join("tls_who.crt"),
        lab.dir().join("tls_who.key"),
    );
    std::fs::write(&server, format!("{WHO_NAMESPACE}{TLS_WHO_SERVER}"))?;
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=www.example"])
        .args(["-addext", "subjectAltName=DNS:www.example,DNS:beta.example"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    ensure!(
        made.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tdl = format!(
        "\
network: wvtls
addressing:
  shards: wvtpool
nodes:
  client:
    type: vm
  api:
    command: /usr/bin/python3 {} 8443 {} {}
    ports: [8443]
connections:
  client -> api:
    port: 8443
",
        server.display(),
        cert.display(),
        key.display()
    );
    let env = environment(controller, "wvtls", &tdl, &logs)?;
    let api = address(&env, "api")?;
    let client = ns(lab, "wvtls", "client");
    let cert = cert.display().to_string();
    // Two requests on one connection to https://NAME:8443/ (the certificate checked).
    let fetch = |name: &str| -> Result<Vec<String>> {
        let url = format!("https://{name}:8443/");
        let out = exec(
            &client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                "--cacert",
                &cert,
                "--resolve",
                &format!("{name}:8443:{api}"),
                &url,
                &url,
            ],
        )?;
        Ok(out.lines().map(str::to_owned).collect())
    };
    // Each answer: the server's namespace and the client's address as the server saw it
    // (the client's own, also through the request router).
    let client_address = address(&env, "client")?;
    let env_ns = format!("{} {client_address}", ns(lab, "wvtls", "api"));
    let both_env = vec![env_ns.clone(), env_ns.clone()];
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        for name in ["www.example", "beta.example"] {
            let got = fetch(name)?;
            ensure!(got == both_env, "before the weave, {name}: {got:?}");
        }
        Ok(())
    })
    .with_context(logs)?;
    let (code, body) = controller.send(
        "POST",
        "/weaves",
        Some(&json!({"environment": "wvtls", "id": "wvt1"})),
    )?;
    ensure!(code == 201, "create weave: {code} {body}\n{}", logs());
    wait_running(controller, "wvt1", &logs)?;
    let weave_ns = format!("{} {client_address}", ns(lab, "wvt1", "api"));
    let (code, body) = controller.send(
        "POST",
        "/weaves/wvt1/routes",
        Some(
            &json!({"port": 8443, "node": "api", "header": "host", "header_value": "beta.example"}),
        ),
    )?;
    ensure!(code == 200, "route 8443 by host: {code} {body}");
    let both_weave = vec![weave_ns.clone(), weave_ns.clone()];
    eventually(Duration::from_secs(30), Duration::from_millis(300), || {
        let got = fetch("beta.example")?;
        ensure!(
            got == both_weave,
            "beta.example not the weave's yet: {got:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    // Every connection goes whole to the side its server name says.
    for round in 0..5 {
        let (beta, www) = (fetch("beta.example")?, fetch("www.example")?);
        ensure!(
            beta == both_weave && www == both_env,
            "round {round}: beta.example {beta:?} (want the weave's), www.example {www:?} (want the environment's)"
        );
    }
    let (code, body) = controller.send(
        "DELETE",
        "/weaves/wvt1/routes/8443?node=api&header=host&header_value=beta.example",
        None,
    )?;
    ensure!(code == 200, "remove the route by host: {code} {body}");
    eventually(Duration::from_secs(20), Duration::from_millis(300), || {
        let got = fetch("beta.example")?;
        ensure!(got == both_env, "beta.example still the weave's: {got:?}");
        Ok(())
    })
    .with_context(logs)?;
    let (code, body) = controller.send("DELETE", "/weaves/wvt1", None)?;
    ensure!(code == 200, "delete wvt1: {code} {body}");
    Ok(())
}

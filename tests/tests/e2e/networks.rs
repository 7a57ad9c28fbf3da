//! A TDL network on two hypervisors, made by the agents: namespaces, a bridge per
//! hypervisor joined by the network's VXLAN, addresses from the network's IP shard, and
//! a default-deny firewall that lets exactly the TDL's connections in. Drift made by hand
//! (an address removed, the firewall table deleted) is repaired and reported; deleting
//! the network removes everything on both hypervisors.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::process::Child;
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{Lab, eventually, netns, skip_unless_root};

const TDL: &str = "\
network: labnet
addressing:
  shards: labpool
nodes:
  web:
    host: hv1
    ports: [7001]
  api:
    host: hv2
    ports: [7001, 7003]
  db:
    host: hv2
    ports: [7002]
connections:
  web -> api:
    port: 7001
  api -> db:
    port: 7002
";

/// `ip netns exec NS args` with a bound; Ok(stdout) when it exits 0.
pub(crate) fn exec(ns: &str, args: &[&str]) -> Result<String> {
    let mut c = netns::command_in(ns, &["timeout", "5"]);
    c.args(args);
    weft_lab::cmd::run(&mut c)
}

/// A TCP listener (socat, echo) on `port` in namespace `ns`.
fn listen(lab: &Lab, ns: &str, port: u16) -> Result<Child> {
    let c = netns::command_in(
        ns,
        &[
            "socat",
            &format!("TCP-LISTEN:{port},reuseaddr,fork"),
            "PIPE",
        ],
    );
    let child = Child::spawn(c, lab.dir(), &format!("listen-{ns}-{port}"))?;
    eventually(Duration::from_secs(5), Duration::from_millis(50), || {
        let out = exec(ns, &["ss", "-Hltn", &format!("sport = :{port}")])?;
        ensure!(!out.trim().is_empty(), "not listening yet");
        Ok(())
    })?;
    Ok(child)
}

/// Whether a TCP connection from `ns` to `addr:port` gets an echo within 2 s.
fn connects(ns: &str, addr: &str, port: u16) -> bool {
    let mut c = netns::command_in(
        ns,
        &[
            "timeout",
            "3",
            "socat",
            "-T",
            "2",
            "-",
            &format!("TCP:{addr}:{port},connect-timeout=2"),
        ],
    );
    c.stdin(std::process::Stdio::piped());
    let Ok(mut child) = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        let _ = stdin.write_all(b"ping\n");
    }
    match child.wait_with_output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).contains("ping"),
        Err(_) => false,
    }
}

pub(crate) fn address(net: &Value, node: &str) -> Result<String> {
    let a = net["placement"][node]["addresses"][0]
        .as_str()
        .with_context(|| format!("no address for {node}: {net}"))?;
    Ok(a.split('/').next().unwrap_or(a).to_owned())
}

/// A lab of two hypervisors with an agent each, a controller, and a shard of network
/// `pool` for the nodes' addresses. Fields drop in order: processes before the lab.
pub(crate) struct TwoHypervisors {
    pub(crate) controller: Controller,
    pub(crate) agents: [Agent; 2],
    pub(crate) lab: Lab,
}

impl TwoHypervisors {
    pub(crate) fn start(pool: &str) -> Result<Self> {
        Self::start_with(pool, &[], &[])
    }

    /// As [`TwoHypervisors::start`], with lab workloads `hv1_workloads` on hv1 (its agent
    /// observes them) and extra flags for hv2's agent.
    pub(crate) fn start_with(
        pool: &str,
        hv1_workloads: &[&str],
        hv2_agent_args: &[&str],
    ) -> Result<Self> {
        Self::start_full(pool, hv1_workloads, hv2_agent_args, &[])
    }

    /// As [`TwoHypervisors::start_with`], with extra flags for the controller.
    pub(crate) fn start_full(
        pool: &str,
        hv1_workloads: &[&str],
        hv2_agent_args: &[&str],
        controller_args: &[&str],
    ) -> Result<Self> {
        Self::start_all(pool, hv1_workloads, &[], hv2_agent_args, controller_args)
    }

    /// As [`TwoHypervisors::start_full`], with extra flags for hv1's agent too.
    pub(crate) fn start_all(
        pool: &str,
        hv1_workloads: &[&str],
        hv1_agent_args: &[&str],
        hv2_agent_args: &[&str],
        controller_args: &[&str],
    ) -> Result<Self> {
        let mut builder = Lab::builder().hypervisor("hv1");
        for w in hv1_workloads {
            builder = builder.workload(w);
        }
        let lab = builder.hypervisor("hv2").build()?;
        let x = lab.x();
        let ip = lab.hypervisors()[0].uplink_root_addr.clone();
        let grpc = format!("{ip}:{}", free_port(&ip)?);
        let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
        let shard_pool = format!("198.19.{x}.128/25");
        let mut args = vec!["--shard-pool", shard_pool.as_str()];
        args.extend_from_slice(controller_args);
        let controller = Controller::start_with(&lab, &grpc, &http, &args)?;
        let agents = [
            Agent::start_with(&lab, 0, &controller.grpc_url(), hv1_agent_args)?,
            Agent::start_with(&lab, 1, &controller.grpc_url(), hv2_agent_args)?,
        ];
        let two = Self {
            controller,
            agents,
            lab,
        };
        two.controller
            .json(
                "POST",
                "/shards",
                Some(&json!({"prefix_len": 27, "network_id": pool})),
            )
            .with_context(|| two.logs())?;
        Ok(two)
    }

    pub(crate) fn logs(&self) -> String {
        format!(
            "controller:\n{}\nhv1 agent:\n{}\nhv2 agent:\n{}",
            self.controller.child.tail(30),
            self.agents[0].child.tail(30),
            self.agents[1].child.tail(30)
        )
    }
}

fn status(controller: &Controller) -> Result<Value> {
    controller.json("GET", "/networks/labnet/status", None)
}

#[test]
fn a_tdl_network_spans_two_hypervisors_with_its_firewall_repairs_drift_and_goes_away() -> Result<()>
{
    if skip_unless_root("a_tdl_network_spans_two_hypervisors") {
        return Ok(());
    }
    let two = TwoHypervisors::start("labpool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();

    // A bad TDL: refused with its position, nothing made.
    let (code, body) = controller.send(
        "POST",
        "/networks",
        Some(&json!({"tdl": "network: labnet\nnodes:\n  web:\n    ports: [70000]\n", "file_name": "bad.tdl"})),
    )?;
    ensure!(code == 422 && body.contains("bad.tdl:4:"), "{code} {body}");

    // Until both agents have registered (with their underlay addresses), the network
    // cannot be placed: refused, and tried again.
    let net = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks",
            Some(&json!({
                "tdl": TDL, "file_name": "labnet.tdl", "hosts": ["hv1", "hv2"],
                // This network keeps to its TDL: changes by hand are put back.
                "source_drift": "repair",
            })),
        )
    })
    .with_context(logs)?;
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let s = status(controller)?;
        ensure!(s["in_sync"] == json!(true), "not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    let ns = |hv: &str, node: &str| format!("{}-labnet-{node}", lab.node_netns_prefix(hv));
    let (web, api, db) = (ns("hv1", "web"), ns("hv2", "api"), ns("hv2", "db"));
    for n in [&web, &api, &db] {
        exec(n, &["true"]).with_context(|| format!("namespace {n}"))?;
    }
    let (api_ip, db_ip) = (address(&net, "api")?, address(&net, "db")?);

    let _l1 = listen(lab, &api, 7001)?;
    let _l3 = listen(lab, &api, 7003)?;
    let _l2 = listen(lab, &db, 7002)?;
    // What the TDL allows gets through, across the VXLAN (web on hv1 -> api on hv2) and
    // on one host (api -> db); nothing else does.
    ensure!(
        connects(&web, &api_ip, 7001),
        "web -> api:7001 refused\n{}",
        logs()
    );
    ensure!(
        connects(&api, &db_ip, 7002),
        "api -> db:7002 refused\n{}",
        logs()
    );
    ensure!(!connects(&web, &api_ip, 7003), "web -> api:7003 was let in");
    ensure!(!connects(&web, &db_ip, 7002), "web -> db:7002 was let in");
    ensure!(
        status(controller)?["source_drift"] == json!("repair"),
        "{}",
        status(controller)?
    );

    // Drift: api's address removed by hand; the agent puts it back and reports it.
    exec(
        &api,
        &["ip", "addr", "flush", "dev", "eth0", "scope", "global"],
    )?;
    eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        let s = status(controller)?;
        let drift = s["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|h| h["drift"].as_array().cloned().unwrap_or_default())
            .find(|d| d["key"] == json!("labnet/api"));
        match drift {
            Some(d) if d["repaired_unix_ns"].as_u64().unwrap_or(0) > 0 => Ok(()),
            _ => bail!("no repaired drift of labnet/api yet: {s}"),
        }
    })
    .with_context(logs)?;
    ensure!(
        connects(&web, &api_ip, 7001),
        "web -> api after the repair\n{}",
        logs()
    );

    // Drift in the firewall: db's table deleted by hand is made again at once.
    exec(&db, &["nft", "delete", "table", "inet", "weft"])?;
    eventually(Duration::from_secs(10), Duration::from_millis(50), || {
        let out = exec(&db, &["nft", "list", "table", "inet", "weft"])?;
        ensure!(out.contains("policy drop"), "{out}");
        Ok(())
    })
    .with_context(logs)?;
    ensure!(
        !connects(&web, &db_ip, 7002),
        "web -> db:7002 after the firewall repair"
    );

    // Deleted: the namespaces and bridges go on both hypervisors.
    controller.json("DELETE", "/networks/labnet", None)?;
    eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        let all = netns::list()?;
        let left: Vec<&String> = all.iter().filter(|n| n.contains("-labnet-")).collect();
        ensure!(left.is_empty(), "left: {left:?}");
        for hv in lab.hypervisors() {
            let out = hv.netns.ip(&["-o", "link", "show"])?;
            ensure!(
                !out.contains(" wb"),
                "a bridge is left on {}: {out}",
                hv.name
            );
        }
        Ok(())
    })
    .with_context(logs)?;
    let (code, _) = controller.send("GET", "/networks/labnet", None)?;
    ensure!(code == 404, "GET after delete: {code}");
    Ok(())
}

const SHOP: &str = "\
network: shop
addressing:
  shards: shoppool
nodes:
  client:
    type: vm
  web:
    image: nginx:latest
    ports: [8080]
    volumes: [data:/srv]
  db:
    image: postgres:16
    ports: [5432]
  cache:
    image: redis:7
    ports: [6379]
connections:
  client -> web:
    port: 8080
  client -> db:
    port: 5432
  client -> cache:
    port: 6379
";

/// What the agent said it sees of resource `key` in a network status.
fn observed_lines(status: &Value, key: &str) -> Vec<String> {
    status["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["resources"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["key"] == json!(key))
        .flat_map(|r| r["observed"].as_array().cloned().unwrap_or_default())
        .filter_map(|o| o.as_str().map(str::to_owned))
        .collect()
}

/// The pid of the process running in node `key` of network `net`, from its agent's
/// report ("nginx pid 123 running (0 restarts)").
fn node_pid(controller: &Controller, net: &str, key: &str) -> Result<u32> {
    let s = controller.json("GET", &format!("/networks/{net}/status"), None)?;
    for h in s["hosts"].as_array().into_iter().flatten() {
        for r in h["resources"].as_array().into_iter().flatten() {
            if r["key"] != json!(key) {
                continue;
            }
            for o in r["observed"].as_array().into_iter().flatten() {
                let o = o.as_str().unwrap_or("");
                if let Some(rest) = o.split(" pid ").nth(1)
                    && let Some(pid) = rest.split_whitespace().next()
                    && let Ok(pid) = pid.parse()
                {
                    return Ok(pid);
                }
            }
        }
    }
    bail!("no pid of {key} in {s}")
}

/// The last lines of a node's logs (kept by its agent under the lab directory).
pub(crate) fn node_logs(lab: &Lab, hv: &str, net: &str, node: &str) -> String {
    let dir = lab
        .dir()
        .join(format!("nodes-{hv}"))
        .join(net)
        .join(node)
        .join("log");
    let mut out = String::new();
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        // Not the test's own queries.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("orders") && !l.contains("STATEMENT"))
            .collect();
        out.push_str(&format!("== {}\n", e.path().display()));
        for l in &lines[lines.len().saturating_sub(25)..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The answers of the shop's servers to the same requests, from its `client` node.
fn answers(client: &str, net: &Value) -> Result<Vec<String>> {
    let (web, db, cache) = (
        address(net, "web")?,
        address(net, "db")?,
        address(net, "cache")?,
    );
    Ok(vec![
        exec(
            client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{web}:8080/"),
            ],
        )?,
        exec(
            client,
            &[
                "psql",
                "-h",
                &db,
                "-U",
                "postgres",
                "-tAc",
                "select 6 * 7, current_setting('port')",
            ],
        )?,
        exec(client, &["redis-cli", "-h", &cache, "ping"])?,
    ])
}

/// Whether Redis at `addr` answers a PING from `ns` within 3 s.
fn redis_answers(ns: &str, addr: &str) -> bool {
    exec(ns, &["timeout", "3", "redis-cli", "-h", addr, "ping"]).is_ok_and(|o| o.contains("PONG"))
}

#[test]
fn a_mirror_on_another_hypervisor_answers_as_its_source_and_refuses_the_same() -> Result<()> {
    if skip_unless_root("a_mirror_on_another_hypervisor_answers_as_its_source") {
        return Ok(());
    }
    let two = TwoHypervisors::start("shoppool")?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let source = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks",
            Some(&json!({"tdl": SHOP, "file_name": "shop.tdl", "hosts": ["hv1"]})),
        )
    })
    .with_context(logs)?;
    let mirror = eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        controller.json(
            "POST",
            "/networks/mirror",
            Some(&json!({"source": "shop", "destination": "shopdr", "hosts": ["hv2"]})),
        )
    })
    .with_context(logs)?;
    for id in ["shop", "shopdr"] {
        eventually(Duration::from_secs(60), Duration::from_millis(200), || {
            let s = controller.json("GET", &format!("/networks/{id}/status"), None)?;
            ensure!(s["in_sync"] == json!(true), "{id} not in sync: {s}");
            Ok(())
        })
        .with_context(logs)?;
    }
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
    phase("both networks in sync");
    let client = |hv: &str, net: &str| format!("{}-{net}-client", lab.node_netns_prefix(hv));
    let (src_client, dr_client) = (client("hv1", "shop"), client("hv2", "shopdr"));
    // The same requests, the same answers; the mirror is its own copy at the source's
    // addresses, on the other hypervisor.
    let want = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        answers(&src_client, &source)
    })
    .with_context(logs)?;
    ensure!(want[0].contains("<h1>web</h1>"), "{want:?}");
    ensure!(want[1].trim() == "42|5432", "{want:?}");
    ensure!(want[2].trim() == "PONG", "{want:?}");
    let got = eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        answers(&dr_client, &mirror)
    })
    .with_context(logs)?;
    ensure!(got == want, "mirror {got:?} != source {want:?}");
    phase("same answers");
    // State replication: a row written in the source database and a key set in the
    // source Redis appear in the mirror (its replicas stream from the source through the
    // agents' replication relays).
    let (src_db, src_cache) = (address(&source, "db")?, address(&source, "cache")?);
    exec(
        &src_client,
        &[
            "psql",
            "-h",
            &src_db,
            "-U",
            "postgres",
            "-tAc",
            "create table orders (id int primary key, item text); insert into orders values (1, 'tea')",
        ],
    )?;
    exec(
        &src_client,
        &["redis-cli", "-h", &src_cache, "set", "cart:1", "tea"],
    )?;
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(30), Duration::from_millis(100), || {
        let row = exec(
            &dr_client,
            &[
                "psql",
                "-h",
                &src_db,
                "-U",
                "postgres",
                "-tAc",
                "select item from orders where id = 1",
            ],
        )?;
        ensure!(row.trim() == "tea", "row not replicated yet: {row:?}");
        let key = exec(
            &dr_client,
            &["redis-cli", "-h", &src_cache, "get", "cart:1"],
        )?;
        ensure!(key.trim() == "tea", "key not replicated yet: {key:?}");
        Ok(())
    })
    .with_context(|| {
        format!(
            "{}\nmirror db log:\n{}",
            logs(),
            node_logs(lab, "hv2", "shopdr", "db")
        )
    })?;
    eprintln!("replicated to the mirror within {:?}", started.elapsed());
    phase("replicated");
    // The mirror's status reports each replica's lag, measured by its agent.
    eventually(Duration::from_secs(45), Duration::from_millis(500), || {
        let s = controller.json("GET", "/networks/shopdr/status", None)?;
        for key in ["shopdr/db", "shopdr/cache"] {
            let lag = observed_lines(&s, key)
                .into_iter()
                .find(|o| o.starts_with("replication lag ") && o.ends_with(" ms"));
            ensure!(lag.is_some(), "no measured lag of {key} yet: {s}");
            eprintln!("{key}: {}", lag.unwrap_or_default());
        }
        Ok(())
    })
    .with_context(logs)?;
    // The mirror's replicas are read-only.
    let refused = exec(
        &dr_client,
        &["redis-cli", "-h", &src_cache, "set", "cart:2", "x"],
    )?;
    ensure!(refused.contains("READONLY"), "{refused}");

    phase("lag reported");
    // Volumes: a page added to the source web's volume is served by the mirror's web
    // after a copy asked for (incremental, swapped in whole).
    let www = lab.dir().join("nodes-hv1/shop/web/volumes/data/www");
    std::fs::write(www.join("new.html"), "fresh from the source\n")?;
    let asked = controller.json("POST", "/networks/shop/sync", None)?;
    ensure!(asked["mirrors"] == json!(["shopdr"]), "{asked}");
    let mirror_web = address(&mirror, "web")?;
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let page = exec(
            &dr_client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{mirror_web}:8080/new.html"),
            ],
        )?;
        ensure!(page.trim() == "fresh from the source", "{page:?}");
        Ok(())
    })
    .with_context(logs)?;
    let synced = observed_lines(
        &controller.json("GET", "/networks/shopdr/status", None)?,
        "shopdr/web",
    );
    ensure!(
        synced
            .iter()
            .any(|o| o.starts_with("volumes synced (generation 1)")),
        "{synced:?}"
    );

    phase("volume copied");
    // Event-driven sync: the source's web server killed; its agent restarts it and
    // reports it, and the mirror's copy is restarted too.
    let mirror_pid_before = node_pid(controller, "shopdr", "shopdr/web")?;
    let pid = node_pid(controller, "shop", "shop/web")?;
    weft_lab::cmd::run(std::process::Command::new("kill").args(["-9", &pid.to_string()]))?;
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let now = node_pid(controller, "shopdr", "shopdr/web")?;
        ensure!(now != mirror_pid_before, "mirror's web still pid {now}");
        Ok(())
    })
    .with_context(logs)?;
    ensure!(
        answers(&dr_client, &mirror)?[0].contains("<h1>web</h1>"),
        "the mirror's web answers after its restart"
    );

    phase("restart followed");
    // What the TDL does not allow is refused in both: web may not reach db.
    for (hv, net) in [("hv1", "shop"), ("hv2", "shopdr")] {
        let web = format!("{}-{net}-web", lab.node_netns_prefix(hv));
        let n = if net == "shop" { &source } else { &mirror };
        ensure!(
            !connects(&web, &address(n, "db")?, 5432),
            "{net}: web -> db:5432 was let in"
        );
    }

    phase("refused alike");
    // Drift in the source is propagated: a rule deleted by hand in the source's cache
    // (client -> cache:6379) and an address added by hand to its web stay there, and the
    // mirror's copies follow.
    let src_cache = format!("{}-shop-cache", lab.node_netns_prefix("hv1"));
    let dr_cache = format!("{}-shopdr-cache", lab.node_netns_prefix("hv2"));
    let cache_ip = address(&source, "cache")?;
    ensure!(
        redis_answers(&src_client, &cache_ip),
        "client -> cache before"
    );
    ensure!(
        redis_answers(&dr_client, &cache_ip),
        "mirror client -> cache before"
    );
    let listing = exec(
        &src_cache,
        &["nft", "-a", "list", "chain", "inet", "weft", "input"],
    )?;
    let handle = listing
        .lines()
        .find(|l| l.contains("6379"))
        .and_then(|l| l.rsplit("# handle ").next())
        .map(|h| h.trim().to_owned())
        .with_context(|| format!("no rule for 6379 in\n{listing}"))?;
    exec(
        &src_cache,
        &[
            "nft", "delete", "rule", "inet", "weft", "input", "handle", &handle,
        ],
    )?;
    let hand_addr = format!("fd00:77:{:x}::7", lab.x());
    let src_web = format!("{}-shop-web", lab.node_netns_prefix("hv1"));
    let dr_web = format!("{}-shopdr-web", lab.node_netns_prefix("hv2"));
    exec(
        &src_web,
        &[
            "ip",
            "addr",
            "add",
            &format!("{hand_addr}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )?;
    eventually(Duration::from_secs(20), Duration::from_millis(100), || {
        let rules = exec(
            &dr_cache,
            &["nft", "list", "chain", "inet", "weft", "input"],
        )?;
        ensure!(
            !rules.contains("6379"),
            "the mirror's cache still has\n{rules}"
        );
        let addrs = exec(&dr_web, &["ip", "-o", "addr", "show", "dev", "eth0"])?;
        ensure!(addrs.contains(&hand_addr), "the mirror's web has\n{addrs}");
        Ok(())
    })
    .with_context(logs)?;
    phase("source drift propagated");
    // Kept in the source (not repaired), refused in both, and reported as kept.
    let rules = exec(
        &src_cache,
        &["nft", "list", "chain", "inet", "weft", "input"],
    )?;
    ensure!(
        !rules.contains("6379"),
        "the source's cache was repaired:\n{rules}"
    );
    ensure!(
        exec(&src_web, &["ip", "-o", "addr", "show", "dev", "eth0"])?.contains(&hand_addr),
        "the source's web lost the address added by hand"
    );
    ensure!(
        !redis_answers(&src_client, &cache_ip),
        "client -> cache after"
    );
    ensure!(
        !redis_answers(&dr_client, &cache_ip),
        "mirror client -> cache after"
    );
    for id in ["shop", "shopdr"] {
        let st = controller.json("GET", &format!("/networks/{id}/status"), None)?;
        let hc = &st["hand_changes"];
        ensure!(
            hc["cache"]["firewall"].is_array() && hc["web"]["addresses"].is_array(),
            "{id}: hand changes not shown: {st}"
        );
        ensure!(
            hc["web"]["addresses"].as_array().is_some_and(|a| a
                .iter()
                .any(|x| x.as_str().is_some_and(|x| x.starts_with(&hand_addr)))),
            "{id}: {hc}"
        );
    }
    let st = controller.json("GET", "/networks/shop/status", None)?;
    ensure!(st["source_drift"] == json!("propagate"), "{st}");
    let kept = st["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["drift"].as_array().cloned().unwrap_or_default())
        .filter(|d| d["kept"] == json!(true))
        .count();
    ensure!(
        kept >= 2,
        "the kept changes are not reported as drift: {st}"
    );

    for id in ["shopdr", "shop"] {
        controller.json("DELETE", &format!("/networks/{id}"), None)?;
    }
    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let left: Vec<String> = netns::list()?
            .into_iter()
            .filter(|n| n.contains("-shop-") || n.contains("-shopdr-"))
            .collect();
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(())
    })
    .with_context(logs)?;
    Ok(())
}

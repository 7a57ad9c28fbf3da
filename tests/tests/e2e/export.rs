//! `weft tdl export` round trip: workloads with real servers and real traffic on hv1 are
//! observed by hv1's agent; the TDL that `GET /tdl/export` writes of them is mirrored onto
//! hv2; the same requests inside the mirror are observed by hv2's agent (a network node's
//! traffic is its workload `<network>.<node>`), and the mirror shows the same topology:
//! the same dependencies (protocol, transport, port) and, exported in turn, the same TDL.
//! What the export does not allow is refused in the mirror, though the same connection
//! works between the original workloads.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::lab::Workload;
use weft_lab::netns::Netns;
use weft_lab::servers::{self, Server, Site};
use weft_lab::topology::Topology;
use weft_lab::weft::Controller;
use weft_lab::{eventually, skip_unless_root};

use crate::networks::{TwoHypervisors, address, exec};

/// The exported network's name, and the shard network its addresses come from.
const EXPORTED: &str = "shopx";
/// The mirror of the exported TDL, on hv2.
const MIRROR: &str = "shopxdr";
/// The mirror of the export that keeps the workloads' addresses.
const ADDRESSED: &str = "shopxaddr";
const NODES: [&str; 4] = ["cache", "client", "db", "web"];

/// One observed dependency, without its counters: (source, target, protocol, transport,
/// port).
type Edge = (String, String, String, String, u16);

/// The dependencies among `names` (workload name -> node name) in `t`, with node names.
fn edges(t: &Topology, name: impl Fn(&str) -> Option<String>) -> BTreeSet<Edge> {
    t.dependencies
        .iter()
        .filter_map(|d| {
            Some((
                name(&d.source)?,
                name(&d.target)?,
                d.protocol.clone(),
                d.transport.clone(),
                d.port,
            ))
        })
        .collect()
}

/// The requests the shop's client makes: an HTTP page, a SQL query, Redis commands.
fn requests(client: &str, web: &str, db: &str, cache: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..3 {
        out.push(exec(
            client,
            &[
                "curl",
                "-sS",
                "--max-time",
                "3",
                &format!("http://{web}:80/items.json"),
            ],
        )?);
        out.push(exec(
            client,
            &[
                "psql",
                "-h",
                db,
                "-U",
                "postgres",
                "-tAc",
                &format!("select 6 * 7 + {i}"),
            ],
        )?);
        out.push(exec(
            client,
            &["redis-cli", "-h", cache, "set", &format!("k{i}"), "v"],
        )?);
        out.push(exec(
            client,
            &["redis-cli", "-h", cache, "get", &format!("k{i}")],
        )?);
    }
    Ok(out)
}

/// Whether `from` gets a SQL answer from `db` (within ~2 s).
fn reaches_db(from: &str, db: &str) -> bool {
    exec(
        from,
        &[
            "env",
            "PGCONNECT_TIMEOUT=2",
            "psql",
            "-h",
            db,
            "-U",
            "postgres",
            "-tAc",
            "select 1",
        ],
    )
    .is_ok_and(|o| o.trim() == "1")
}

/// Whether `from` gets a PONG from `cache` (within the 5 s of [`exec`]).
fn reaches_cache(from: &str, cache: &str) -> bool {
    exec(from, &["redis-cli", "-h", cache, "ping"]).is_ok_and(|o| o.trim() == "PONG")
}

fn site() -> Site {
    Site::Static(vec![(
        "items.json".into(),
        br#"{"items":[{"id":1,"name":"weft"}]}"#.to_vec(),
    )])
}

/// GET /tdl/export of `hosts` as network `name` (addresses from the shards when it is
/// created): the answer and its TDL parsed.
fn export(controller: &Controller, hosts: &str, name: &str) -> Result<(Value, weft_tdl::Network)> {
    let answer = controller.json(
        "GET",
        &format!("/tdl/export?hosts={hosts}&network={name}&addresses=false&format=json"),
        None,
    )?;
    let tdl = answer["tdl"]
        .as_str()
        .with_context(|| format!("no tdl in {answer}"))?;
    let net = weft_tdl::parse("export.tdl", tdl).map_err(|e| anyhow::anyhow!("{e}\n{tdl}"))?;
    Ok((answer, net))
}

/// `net` with its nodes renamed by `rename` (in nodes, connections and security) and
/// placed on `host`.
fn renamed(
    mut net: weft_tdl::Network,
    name: &str,
    host: &str,
    rename: impl Fn(&str) -> String,
) -> weft_tdl::Network {
    net.name = name.to_owned();
    net.addressing.shards = name.to_owned();
    net.nodes = std::mem::take(&mut net.nodes)
        .into_iter()
        .map(|(n, mut node)| {
            node.host = Some(host.to_owned());
            (rename(&n), node)
        })
        .collect();
    for c in &mut net.connections {
        (c.from, c.to) = (rename(&c.from), rename(&c.to));
    }
    for s in &mut net.security {
        (s.from, s.to) = (rename(&s.from), rename(&s.to));
    }
    net
}

#[test]
fn an_exported_tdl_mirrored_onto_another_hypervisor_shows_the_same_topology() -> Result<()> {
    if skip_unless_root("an_exported_tdl_mirrored_onto_another_hypervisor") {
        return Ok(());
    }
    // hv2's agent observes the network nodes' veths (`wn...`) as well as lab workloads.
    let two = TwoHypervisors::start_with(EXPORTED, &NODES, &["--interfaces", "wn*"])?;
    let (lab, controller) = (&two.lab, &two.controller);
    let logs = || two.logs();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());

    // The source: real servers in lab workloads on hv1, and real requests.
    let _web = servers::nginx(lab.workload("web")?, site())?;
    let _db = servers::postgres(lab.workload("db")?)?;
    let _cache = servers::redis(lab.workload("cache")?)?;
    let ip = |w: &str| -> Result<String> { Ok(lab.workload(w)?.ipv4.clone()) };
    let client = lab.workload("client")?.netns.name().to_owned();
    let want = requests(&client, &ip("web")?, &ip("db")?, &ip("cache")?).with_context(logs)?;
    ensure!(want[0].contains("\"weft\""), "{want:?}");
    ensure!(want[1].trim() == "42" && want[3].trim() == "v", "{want:?}");
    phase("source requests answered");

    let source_node = |w: &str| NODES.contains(&w).then(|| w.to_owned());
    let wanted_pairs: BTreeSet<(String, String, u16)> =
        [("web", 80), ("db", 5432), ("cache", 6379)]
            .into_iter()
            .map(|(t, p)| ("client".to_owned(), t.to_owned(), p))
            .collect();
    let pairs = |e: &BTreeSet<Edge>| -> BTreeSet<(String, String, u16)> {
        e.iter()
            .map(|(s, t, _, _, p)| (s.clone(), t.clone(), *p))
            .collect()
    };
    let source_edges = eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        let e = edges(&controller.topology()?, source_node);
        // Every dependency classified by its protocol (not only seen as bytes).
        ensure!(
            pairs(&e) == wanted_pairs && e.iter().all(|d| !d.2.is_empty() && d.2 != "unknown"),
            "source dependencies so far: {e:?}"
        );
        Ok(e)
    })
    .with_context(logs)?;
    eprintln!("source dependencies: {source_edges:?}");
    phase("source topology observed");

    // The export: a node per workload on hv1, a connection and a security entry per
    // observed dependency allowing exactly its port.
    let (answer, exported) = export(controller, "hv1", EXPORTED)?;
    let tdl = answer["tdl"].as_str().unwrap_or_default().to_owned();
    eprintln!("exported TDL:\n{tdl}left out: {}", answer["left_out"]);
    let nodes: BTreeSet<&str> = exported.nodes.keys().map(String::as_str).collect();
    ensure!(nodes == BTreeSet::from(NODES), "{tdl}");
    for n in NODES {
        ensure!(
            answer["nodes"][n] == json!({"workload": n, "host": "hv1"}),
            "{answer}"
        );
    }
    let connections: BTreeSet<(String, String, u16)> = exported
        .connections
        .iter()
        .flat_map(|c| c.ports.iter().map(|p| (c.from.clone(), c.to.clone(), *p)))
        .collect();
    ensure!(connections == wanted_pairs, "connections of\n{tdl}");
    ensure!(
        exported
            .connections
            .iter()
            .all(|c| c.protocol == weft_tdl::Protocol::Tcp),
        "{tdl}"
    );
    for s in &exported.security {
        let rules: Vec<String> = s.rules.iter().map(ToString::to_string).collect();
        let port = wanted_pairs
            .iter()
            .find(|(f, t, _)| *f == s.from && *t == s.to)
            .map(|p| p.2)
            .with_context(|| format!("security for {} -> {}", s.from, s.to))?;
        ensure!(
            s.rules
                == vec![weft_tdl::FirewallRule {
                    verdict: weft_tdl::Verdict::Allow,
                    protocol: weft_tdl::Protocol::Tcp,
                    port: Some(port),
                }],
            "security {} -> {}: {rules:?}",
            s.from,
            s.to
        );
    }
    ensure!(exported.security.len() == 3, "{tdl}");
    ensure!(exported.nodes["web"].ports == vec![80], "{tdl}");

    // Mirrored onto hv2 as it was written.
    let mirror = eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        controller.json(
            "POST",
            "/networks/mirror",
            Some(&json!({"tdl": tdl, "file_name": format!("{EXPORTED}.tdl"),
                         "destination": MIRROR, "hosts": ["hv2"]})),
        )
    })
    .with_context(logs)?;
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = controller.json("GET", &format!("/networks/{MIRROR}/status"), None)?;
        ensure!(s["in_sync"] == json!(true), "{MIRROR} not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    phase("mirror in sync");

    // The same servers in the mirror's nodes (the export says what talks to what, not
    // what runs), at the addresses the mirror's shard gave them.
    let ns = |node: &str| format!("{}-{MIRROR}-{node}", lab.node_netns_prefix("hv2"));
    let dir = lab.dir().join("mirror-servers");
    std::fs::create_dir_all(&dir)?;
    // Servers run as other users (postgres): let them in.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let node = |n: &str| -> Result<Workload> {
        Ok(Workload {
            name: n.to_owned(),
            netns: Netns::existing(&ns(n)),
            ipv4: address(&mirror, n)?,
            ipv6: String::new(),
            host_if: String::new(),
            hypervisor: 1,
            dir: dir.clone(),
        })
    };
    let (m_web, m_db, m_cache) = (node("web")?, node("db")?, node("cache")?);
    let mirror_servers: Vec<Server> = vec![
        servers::nginx(&m_web, site()).with_context(logs)?,
        servers::postgres(&m_db).with_context(logs)?,
        servers::redis(&m_cache).with_context(logs)?,
    ];
    phase("servers running in the mirror's nodes");

    // The same requests in the mirror: the same answers.
    let got = eventually(Duration::from_secs(20), Duration::from_millis(200), || {
        requests(&ns("client"), &m_web.ipv4, &m_db.ipv4, &m_cache.ipv4)
    })
    .with_context(logs)?;
    ensure!(got == want, "mirror answered {got:?}, the source {want:?}");
    phase("mirror requests answered alike");

    // The mirror's observed topology: its nodes, by hv2's agent, with the same
    // dependencies (protocol, transport, port) as the source's.
    let prefix = format!("{MIRROR}.");
    let mirror_node = |w: &str| {
        w.strip_prefix(&prefix)
            .filter(|n| NODES.contains(n))
            .map(str::to_owned)
    };
    eventually(Duration::from_secs(30), Duration::from_millis(500), || {
        let e = edges(&controller.topology()?, mirror_node);
        ensure!(
            e == source_edges,
            "mirror dependencies {e:?}, source {source_edges:?}"
        );
        Ok(())
    })
    .with_context(logs)?;
    phase("mirror topology observed: the same");

    // Exported in turn, the mirror is the same network: same nodes (`shopxdr-web` is the
    // node name of workload `shopxdr.web`), ports, connections and security, on hv2.
    let (again_answer, again) = export(controller, "hv2", "again")?;
    let back = renamed(again, EXPORTED, "hv1", |n| {
        n.strip_prefix(&format!("{MIRROR}-"))
            .unwrap_or(n)
            .to_owned()
    });
    ensure!(
        back == exported,
        "the mirror exports as\n{}\nnot as\n{tdl}",
        again_answer["tdl"].as_str().unwrap_or_default()
    );
    for n in NODES {
        ensure!(
            again_answer["nodes"][format!("{MIRROR}-{n}")]
                == json!({"workload": format!("{MIRROR}.{n}"), "host": "hv2"}),
            "{again_answer}"
        );
    }
    phase("the mirror exports to the same TDL");

    // What the export does not allow: web -> db and db -> cache work between the
    // original workloads (nothing stops them there), and are refused in the mirror.
    let web_ns = lab.workload("web")?.netns.name().to_owned();
    let db_ns = lab.workload("db")?.netns.name().to_owned();
    ensure!(reaches_db(&web_ns, &ip("db")?), "source web -> db:5432");
    ensure!(
        reaches_cache(&db_ns, &ip("cache")?),
        "source db -> cache:6379"
    );
    ensure!(
        !reaches_db(&ns("web"), &m_db.ipv4),
        "mirror: web -> db:5432 was let in"
    );
    ensure!(
        !reaches_cache(&ns("db"), &m_cache.ipv4),
        "mirror: db -> cache:6379 was let in"
    );
    // ... while what it allows still gets through.
    ensure!(
        reaches_db(&ns("client"), &m_db.ipv4),
        "mirror: client -> db"
    );
    phase("not exported, refused");

    // The servers leave the nodes' namespaces before the mirror is deleted.
    drop(mirror_servers);
    controller.json("DELETE", &format!("/networks/{MIRROR}"), None)?;

    // The default export keeps the workloads' registered addresses (IPv4 and IPv6 host
    // prefixes): mirrored as written, its nodes get exactly those.
    let with = controller.json(
        "GET",
        &format!("/tdl/export?hosts=hv1&network={EXPORTED}&format=json"),
        None,
    )?;
    let with_tdl = with["tdl"].as_str().unwrap_or_default();
    let placed = controller
        .json(
            "POST",
            "/networks/mirror",
            Some(
                &json!({"tdl": with_tdl, "file_name": format!("{EXPORTED}.tdl"),
                         "destination": ADDRESSED, "hosts": ["hv2"]}),
            ),
        )
        .with_context(|| format!("mirroring\n{with_tdl}"))?;
    for n in NODES {
        let w = lab.workload(n)?;
        let mut got: Vec<String> = placed["placement"][n]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        got.sort();
        let mut want = vec![format!("{}/32", w.ipv4), format!("{}/128", w.ipv6)];
        want.sort();
        ensure!(
            got == want,
            "{n}: placed at {got:?}, registered {want:?}\n{placed}"
        );
    }
    eventually(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = controller.json("GET", &format!("/networks/{ADDRESSED}/status"), None)?;
        ensure!(s["in_sync"] == json!(true), "{ADDRESSED} not in sync: {s}");
        Ok(())
    })
    .with_context(logs)?;
    let v6 = exec(
        &format!("{}-{ADDRESSED}-web", lab.node_netns_prefix("hv2")),
        &["ip", "-o", "addr", "show", "dev", "eth0"],
    )?;
    ensure!(v6.contains(&lab.workload("web")?.ipv6), "{v6}");
    phase("the export with addresses mirrors at those addresses");
    controller.json("DELETE", &format!("/networks/{ADDRESSED}"), None)?;

    eventually(Duration::from_secs(30), Duration::from_millis(200), || {
        let left: Vec<String> = weft_lab::netns::list()?
            .into_iter()
            .filter(|n| n.contains(&format!("-{MIRROR}-")) || n.contains(&format!("-{ADDRESSED}-")))
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            bail!("left: {left:?}")
        }
    })
    .with_context(logs)?;
    Ok(())
}

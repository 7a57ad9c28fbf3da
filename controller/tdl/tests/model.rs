//! What parse() makes of valid files, and the validations not covered by tests/bad.

use std::fs;
use std::path::Path;

use weft_tdl::{Command, Direction, Family, NodeType, Protocol, parse};

fn good(name: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/good")
            .join(name),
    )
    .unwrap()
}

/// The errors of `text`, as `line:col: message` (without the file name).
fn errors(text: &str) -> Vec<String> {
    match parse("t.tdl", text) {
        Ok(n) => panic!("parsed: {n:?}"),
        Err(e) => e
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
            .collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn the_spec_example() {
    let net = parse("spec.tdl", &good("spec_example.tdl")).unwrap();
    assert_eq!(net.name, "production_us_east");
    assert_eq!(net.vni, None, "assigned by the controller later");
    assert_eq!(
        net.addressing.shards, "production_us_east",
        "defaults to the network name"
    );
    assert_eq!(net.addressing.families, [Family::Ipv4]);
    let web = &net.nodes["web_server_1"];
    assert_eq!(web.node_type, NodeType::Vm);
    assert_eq!(web.image.as_deref(), Some("ubuntu_latest"));
    assert_eq!(web.cpu_millis, Some(4000));
    assert_eq!(web.memory_bytes, Some(8_000_000_000));
    assert_eq!(web.ports, [80, 443]);
    let db = &net.nodes["db_server_1"];
    assert_eq!(db.node_type, NodeType::Container);
    assert_eq!(db.image.as_deref(), Some("postgres:latest"));
    assert_eq!(net.connections.len(), 1);
    let c = &net.connections[0];
    assert_eq!(
        (c.from.as_str(), c.to.as_str(), c.direction),
        ("db_server_1", "web_server_1", Direction::Both)
    );
    assert_eq!(
        (c.protocol, c.ports.as_slice()),
        (Protocol::Tcp, &[5432u16][..])
    );
    assert_eq!(net.security.len(), 1);
    assert_eq!(net.security[0].key(), "db_server_1 <-> web_server_1");
    assert_eq!(net.security[0].rules[0].to_string(), "allow_tcp_5432");
}

#[test]
fn shop_merges_defaults_and_kinds() {
    let net = parse("shop.tdl", &good("shop.tdl")).unwrap();
    assert_eq!(
        (net.vni, net.vlan, net.mtu),
        (Some(4242), Some(100), Some(1450))
    );
    assert_eq!(net.addressing.shards, "shop-prod");
    assert_eq!(net.addressing.families, [Family::Ipv4, Family::Ipv6]);
    let web = &net.nodes["web"];
    // defaults only
    assert_eq!(
        (web.cpu_millis, web.memory_bytes),
        (Some(500), Some(256 << 20))
    );
    assert_eq!(web.node_type, NodeType::Container);
    assert_eq!(web.ports, [80, 443], "sorted");
    assert_eq!(
        web.command,
        Some(Command::Exec(vec![
            "nginx".into(),
            "-g".into(),
            "daemon off;".into()
        ]))
    );
    assert_eq!(
        web.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.20.0.10/24", "fd00:20::10/64"]
    );
    assert_eq!(web.env["LOG_LEVEL"], "info");
    let db = &net.nodes["db"];
    // kind database (cpu 2, service) inherits base_db (memory 1GiB, LOG_LEVEL warn) over defaults
    assert_eq!(
        (db.cpu_millis, db.memory_bytes, db.node_type),
        (Some(2000), Some(1 << 30), NodeType::Service)
    );
    assert_eq!(
        db.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["LOG_LEVEL=warn", "POSTGRES_PASSWORD=secret", "TZ=UTC"]
    );
    assert_eq!(db.host.as_deref(), Some("hv1"));
    assert_eq!(db.volumes.len(), 2);
    assert_eq!(
        (
            db.volumes[0].name.as_str(),
            db.volumes[0].path.as_str(),
            db.volumes[0].size_bytes
        ),
        ("pgdata", "/var/lib/postgresql/data", None)
    );
    assert_eq!(db.volumes[1].size_bytes, Some(10 << 30));
    let cache = &net.nodes["cache"];
    assert_eq!(
        cache.memory_bytes,
        Some(512_000_000),
        "the node's own value wins over its kind"
    );
    assert_eq!(
        cache.command,
        Some(Command::Shell("redis-server --appendonly yes".into()))
    );
    // `db <- cache` is stored as `cache -> db`; connections sorted by (from, to).
    let keys: Vec<String> = net.connections.iter().map(|c| c.key()).collect();
    assert_eq!(keys, ["cache -> db", "cache <-> web", "web -> db"]);
    assert_eq!(net.connections[1].bandwidth_bps, Some(100_000_000));
    assert_eq!(net.connections[2].bandwidth_bps, Some(1_000_000_000));
    let rules: Vec<String> = net
        .security
        .iter()
        .map(|s| {
            format!(
                "{}: {:?}",
                s.key(),
                s.rules.iter().map(ToString::to_string).collect::<Vec<_>>()
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            "cache <-> web: [\"allow_icmp\"]",
            "web -> db: [\"deny_tcp_22\", \"allow_tcp_5432\"]"
        ]
    );
}

#[test]
fn every_error_is_reported_sorted() {
    let e =
        errors("network: Bad Name\nvni: 0\nnodes:\n  a: {cpu: x, memory: y}\n  b: {ports: [0]}\n");
    assert_eq!(e.len(), 5, "{e:#?}");
    let positions: Vec<&str> = e
        .iter()
        .map(|s| {
            s.splitn(3, ':')
                .take(2)
                .collect::<Vec<_>>()
                .join(":")
                .leak() as &str
        })
        .collect();
    assert_eq!(positions, ["1:10", "2:6", "4:12", "4:23", "5:15"]);
}

#[test]
fn structure_errors() {
    assert_eq!(
        one_error("- a\n- b\n"),
        "1:1: the file must be a mapping with network:, nodes: and so on, found a list"
    );
    assert!(one_error("nodes:\n  a: {}\n").contains("missing `network: <name>`"));
    assert!(one_error("network: n\n").contains("missing `nodes:`"));
    assert_eq!(
        one_error("network: n\nnodes:\n"),
        "2:1: nodes: is empty; a network needs at least one node"
    );
    assert_eq!(
        one_error("network: n\nnodes: {}\n"),
        "2:1: nodes: is empty; a network needs at least one node"
    );
    assert!(
        one_error("network: n\nnodes:\n  a: {}\n---\nnetwork: m\n")
            .starts_with("4:1: a TDL file holds one YAML document")
    );
    assert!(
        one_error("network: n\nnodes:\n  a: [1]\n")
            .starts_with("3:6: node \"a\" must be a mapping")
    );
    assert!(
        one_error("network: [n]\nnodes:\n  a: {}\n")
            .starts_with("1:10: network must be a string, found a list")
    );
    assert!(
        one_error("network: n\nnetwork: m\nnodes:\n  a: {}\n")
            .contains("duplicate key \"network\"")
    );
    assert!(
        one_error("network: n\nnodes:\n  a: {image: x, image: y}\n")
            .starts_with("3:17: duplicate key \"image\" in node \"a\"")
    );
    assert!(
        one_error("network: n\nnode:\n  a: {}\nnodes:\n  a: {}\n")
            .contains("unknown key \"node\" in the file (top level); did you mean \"nodes\"?")
    );
    assert!(
        one_error("network: n\nnodes:\n  a: {zzzzzz: 1}\n").contains("the keys are: type, image")
    );
    let big = format!(
        "network: n\nnodes:\n  a: {{}}\n#{}\n",
        "x".repeat(weft_tdl::MAX_BYTES)
    );
    assert!(one_error(&big).starts_with("1:1: the file is 1048"));
    assert!(
        one_error("\u{0}").starts_with("1:1: not valid YAML"),
        "{:?}",
        errors("\u{0}")
    );
}

#[test]
fn node_field_errors() {
    let n = |fields: &str| one_error(&format!("network: n\nnodes:\n  a: {{{fields}}}\n"));
    assert!(n("type: router").contains("unknown type \"router\"; use vm, container or service"));
    assert!(n("image: \"\"").contains("image \"\" is empty"));
    assert!(n("cpu: 0.0001").contains("cpu"));
    assert!(n("cpu: 5000").contains("more than 4096 CPUs"));
    assert!(n("memory: -1GB").contains("memory"));
    assert!(n("ports: {a: 1}").contains("ports must be a list"));
    assert!(
        n("ports: [http]").contains("port must be a whole number from 1 to 65535, found \"http\"")
    );
    assert!(n("command: \" \"").contains("command is empty"));
    assert!(n("command: []").contains("command is an empty list"));
    assert!(n("command: [[x]]").contains("a command argument must be a string"));
    assert!(n("volumes: [data]").contains("is not name:/path/in/node"));
    assert!(n("volumes: [\"data:relative\"]").contains("must be absolute"));
    assert!(n("volumes: [\"d:/a/../b\"]").contains("no .. component"));
    assert!(n("volumes: [\"Data:/x\"]").contains("volume name \"Data\" contains 'D'"));
    assert!(n("volumes: [\"d:/x\", \"d:/y\"]").contains("volume \"d\" is listed twice"));
    assert!(n("volumes: [{name: d}]").contains("a volume needs name: and path:"));
    assert!(n("volumes: [{name: d, path: /x, size: 0}]").contains("volume size \"0\" is zero"));
    assert!(n("volumes: {d: /x}").contains("volumes must be a list"));
    assert!(n("host: \"hv 1\"").contains("host \"hv 1\" contains ' '"));
    assert!(n("addresses: [10.0.0.1]").contains("has no prefix length"));
    assert!(n("addresses: [10.0.0.1/33]").contains("prefix length \"33\""));
    assert!(n("addresses: [10.0.0.1/24, 10.0.0.1/16]").contains("10.0.0.1 is listed twice"));
    assert!(n("env: {1X: a}").contains("\"1X\" is not a variable name"));
    assert!(n("env: {X: [a]}").contains("X must be a string, found a list"));
    assert!(n("env: [X]").contains("env of node \"a\" must be a mapping"));
    assert!(n("kind: x").contains("no kind named \"x\" (there is no kinds: section)"));
    let long = "a".repeat(49);
    assert!(
        one_error(&format!("network: n\nnodes:\n  {long}: {{}}\n"))
            .contains("longer than 48 characters")
    );
    assert!(one_error("network: n\nnodes:\n  -a: {}\n").contains("starts with \"-\""));
    assert!(one_error("network: n\nnodes:\n  Web: {}\n").contains("did you mean \"web\"?"));
}

#[test]
fn addressing_and_network_errors() {
    let t = |top: &str| one_error(&format!("network: n\n{top}\nnodes:\n  a: {{}}\n"));
    assert!(t("mtu: 100").contains("mtu 100 is out of range; use a number from 576 to 9216"));
    assert!(
        t("mtu: 1000\naddressing: {families: [ipv6]}").contains("below IPv6's minimum of 1280")
    );
    assert!(
        t("addressing: {families: [ipx]}").contains("unknown family \"ipx\"; use ipv4 and/or ipv6")
    );
    assert!(t("addressing: {families: []}").contains("families is empty"));
    assert!(t("addressing: {shards: \"a b\"}").contains("shards \"a b\" contains ' '"));
    assert!(t("addressing: {shard: x}").contains("did you mean \"shards\"?"));
    assert!(
        t("vni: lots").contains("vni must be a whole number from 1 to 16777215, found \"lots\"")
    );
    let e = one_error(
        "network: n\nnodes:\n  a: {addresses: [10.0.0.1/24]}\n  b: {addresses: [10.0.0.1/16]}\n",
    );
    assert_eq!(
        e,
        "4:19: node \"b\": address 10.0.0.1 is also node \"a\"'s; give each node its own address"
    );
}

#[test]
fn kinds_and_defaults() {
    let net = parse(
        "k.tdl",
        "network: n\ndefaults: {kind: small, memory: 1GB, ports: [1], env: {A: d, B: d}}\nkinds:\n  small: {cpu: 1, inherits: tiny, env: {B: k}}\n  tiny: {cpu: 0.25, type: vm, ports: [2, 3]}\n  big: {cpu: 8}\nnodes:\n  a: {}\n  b: {kind: big, ports: [4]}\n  c: {env: {A: n}}\n",
    )
    .unwrap();
    let a = &net.nodes["a"];
    assert_eq!(
        (a.cpu_millis, a.node_type, a.memory_bytes),
        (Some(1000), NodeType::Vm, Some(1_000_000_000))
    );
    assert_eq!(
        a.ports,
        [2, 3],
        "lists replace: the kind's over the defaults'"
    );
    assert_eq!(
        a.env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>(),
        ["A=d", "B=k"]
    );
    let b = &net.nodes["b"];
    assert_eq!(
        (b.cpu_millis, b.node_type),
        (Some(8000), NodeType::Container),
        "b's own kind replaces the default kind"
    );
    assert_eq!(b.ports, [4]);
    assert_eq!(net.nodes["c"].env["A"], "n");
    assert!(
        one_error("network: n\nkinds:\n  k: {kind: x}\nnodes:\n  a: {}\n")
            .contains("(a kind names the kind it extends with inherits:)")
    );
    assert!(
        one_error("network: n\nkinds:\n  k: {inherits: nope}\nnodes:\n  a: {}\n")
            .starts_with("3:17: kind \"k\" inherits \"nope\", which is not a kind (kinds are: k)")
    );
    assert!(
        one_error("network: n\nkinds:\n  k: {inherits: k}\nnodes:\n  a: {}\n")
            .contains("inherits cycle k -> k")
    );
    assert!(
        one_error("network: n\ndefaults: {kind: x}\nnodes:\n  a: {}\n  b: {}\n")
            .starts_with("2:18: defaults: no kind named \"x\"")
    );
    // A long chain resolves (no recursion, no quadratic walk).
    let mut t = String::from("network: n\nkinds:\n  k0: {cpu: 3}\n");
    for i in 1..5000 {
        t.push_str(&format!("  k{i}: {{inherits: k{}}}\n", i - 1));
    }
    t.push_str("nodes:\n  a: {kind: k4999}\n");
    assert_eq!(
        parse("chain.tdl", &t).unwrap().nodes["a"].cpu_millis,
        Some(3000)
    );
}

#[test]
fn connections_and_security() {
    let base = "network: n\nnodes:\n  a: {}\n  b: {}\n  c: {}\n";
    let t = |rest: &str| format!("{base}{rest}");
    let net = parse("c.tdl", &t("connections:\n  b <- a: {ports: [443, 80, 80]}\nsecurity:\n  a -> b: {firewall_rule: [allow_tcp_8080, allow_tcp_8080]}\n")).unwrap();
    assert_eq!(net.connections[0].key(), "a -> b");
    assert_eq!(net.connections[0].ports, [80, 443]);
    assert_eq!(net.security[0].rules.len(), 1, "duplicates dropped");
    // A one-way rule on a two-way connection is fine, in either direction.
    assert!(
        parse(
            "c.tdl",
            &t("connections:\n  a <-> b: {}\nsecurity:\n  b -> a: {firewall_rule: deny_all}\n")
        )
        .is_ok()
    );
    // Two one-way connections, one each way, are two connections.
    assert_eq!(
        parse(
            "c.tdl",
            &t("connections:\n  a -> b: {}\n  b -> a: {protocol: udp}\n")
        )
        .unwrap()
        .connections
        .len(),
        2
    );
    assert!(
        one_error(&t(
            "connections:\n  a -> b: {}\nsecurity:\n  a <-> b: {firewall_rule: allow_all}\n"
        ))
        .contains("is \"a -> b\", which does not go both ways")
    );
    assert!(
        one_error(&t("connections:\n  a -> b: {}\n  a <-> b: {}\n"))
            .contains("duplicates \"a -> b\" (line 7)")
    );
    assert!(
        one_error(&t("connections:\n  a -> b: {protocol: icmp, port: 1}\n"))
            .contains("icmp has no ports")
    );
    assert!(
        one_error(&t("connections:\n  a -> b: {port: 1, ports: [2]}\n"))
            .contains("give port: or ports:, not both")
    );
    assert!(
        one_error(&t("connections:\n  a => b: {}\n"))
            .contains("is not \"a <-> b\", \"a -> b\" or \"b <- a\"")
    );
    assert!(
        one_error(&t("connections:\n  a -> b: {prot: udp}\n")).contains("did you mean \"port\"?")
    );
    assert!(
        one_error(&t("connections:\n  a -> b: [tcp]\n"))
            .contains("connection \"a -> b\" must be a mapping")
    );
    assert!(one_error(&t("connections:\n  a -> b: {bandwidth: 0kbit}\n")).contains("is zero"));
    assert!(
        one_error(&t("connections:\n  a -> b: {}\nsecurity:\n  a -> b: {}\n"))
            .contains("has no firewall_rule")
    );
    assert!(
        one_error(&t(
            "connections:\n  a -> b: {}\nsecurity:\n  a -> b: {firewall_rule: []}\n"
        ))
        .contains("empty list")
    );
    assert!(one_error(&t("connections:\n  a <-> b: {}\nsecurity:\n  a -> b: {firewall_rule: allow_all}\n  a <-> b: {firewall_rule: deny_all}\n")).contains("overlaps \"a -> b\""));
    // The unknown node's column points at its name, quoted keys included.
    assert_eq!(
        one_error(&t("connections:\n  \"a -> zz\": {}\n")),
        "7:9: connection \"a -> zz\": no node named \"zz\" (nodes are: a, b, c); add it under nodes: or fix the name"
    );
    // Both unknown names are reported.
    assert_eq!(errors(&t("connections:\n  x <-> y: {}\n")).len(), 2);
    // An unknown node in a security key.
    assert!(
        one_error(&t(
            "connections:\n  a -> b: {}\nsecurity:\n  a -> q: {firewall_rule: allow_all}\n"
        ))
        .contains("security \"a -> q\": no node named \"q\"")
    );
}

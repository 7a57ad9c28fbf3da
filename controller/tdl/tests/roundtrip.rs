//! parse(format(n)) == n over generated networks, and parse never panics.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use weft_tdl::{
    Addressing, Cidr, Command, Connection, Direction, Family, FirewallRule, Network, Node,
    NodeType, Protocol, Security, Verdict, Volume, format, parse,
};

fn node_type() -> impl Strategy<Value = NodeType> {
    prop_oneof![
        Just(NodeType::Vm),
        Just(NodeType::Container),
        Just(NodeType::Service)
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Icmp),
        Just(Protocol::Any)
    ]
}

fn sorted_ports(max: usize) -> impl Strategy<Value = Vec<u16>> {
    prop::collection::vec(1..=65535u16, 0..max).prop_map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

fn command() -> impl Strategy<Value = Option<Command>> {
    prop_oneof![
        Just(None),
        ".{0,12}"
            .prop_filter("non-blank", |s: &String| !s.trim().is_empty())
            .prop_map(|s| Some(Command::Shell(s))),
        (
            "[a-z/][a-z0-9/._-]{0,8}",
            prop::collection::vec(".{0,8}", 0..3)
        )
            .prop_map(|(p, mut args)| {
                args.insert(0, p);
                Some(Command::Exec(args))
            }),
    ]
}

fn volumes() -> impl Strategy<Value = Vec<Volume>> {
    prop::collection::btree_map(
        "[a-z0-9][a-z0-9_-]{0,6}",
        ("(/[a-z0-9_. :-]{1,6}){1,3}", prop::option::of(1..u64::MAX)),
        0..3,
    )
    .prop_map(|m| {
        m.into_iter()
            .filter(|(_, (p, _))| !p.split('/').any(|c| c == ".."))
            .map(|(name, (path, size_bytes))| Volume {
                name,
                path,
                size_bytes,
            })
            .collect()
    })
}

fn node() -> impl Strategy<Value = (Node, usize)> {
    (
        node_type(),
        prop::option::of("[a-z][a-z0-9:._/@-]{0,15}"),
        prop::option::of(1..=4_096_000u32),
        prop::option::of(1..=u64::MAX),
        sorted_ports(4),
        command(),
        volumes(),
        prop::option::of("[A-Za-z0-9._-]{1,10}"),
        0..3usize,
        prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,6}", ".{0,10}", 0..3),
    )
        .prop_map(
            |(
                node_type,
                image,
                cpu_millis,
                memory_bytes,
                ports,
                command,
                volumes,
                host,
                addrs,
                env,
            )| {
                (
                    Node {
                        node_type,
                        image,
                        cpu_millis,
                        memory_bytes,
                        ports,
                        command,
                        volumes,
                        host,
                        addresses: Vec::new(),
                        env,
                    },
                    addrs,
                )
            },
        )
}

fn rule() -> impl Strategy<Value = FirewallRule> {
    (
        prop_oneof![Just(Verdict::Allow), Just(Verdict::Deny)],
        protocol(),
        prop::option::of(1..=65535u16),
    )
        .prop_map(|(verdict, protocol, port)| FirewallRule {
            verdict,
            protocol,
            port: if protocol.has_ports() { port } else { None },
        })
}

type RawConn = (usize, usize, bool, Protocol, Vec<u16>, Option<u64>);
type RawSec = (usize, u8, Vec<FirewallRule>);

fn overlaps(a: (&str, &str, Direction), b: (&str, &str, Direction)) -> bool {
    let same = (a.0 == b.0 && a.1 == b.1) || (a.0 == b.1 && a.1 == b.0);
    same && (a.2 == Direction::Both || b.2 == Direction::Both || (a.0 == b.0 && a.1 == b.1))
}

/// `head` with the nodes (and their number of addresses), connections and security
/// entries made valid: addresses unique and of the network's families, no self or
/// overlapping connections, each security entry on a connection in a compatible direction.
fn build(
    mut head: Network,
    nodes: BTreeMap<String, (Node, usize)>,
    raw_conns: Vec<RawConn>,
    raw_secs: Vec<RawSec>,
) -> Network {
    let families = head.addressing.families.clone();
    let names: Vec<String> = nodes.keys().cloned().collect();
    let nodes: BTreeMap<String, Node> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, (name, (mut n, count)))| {
            for k in 0..count {
                for f in &families {
                    n.addresses.push(match f {
                        Family::Ipv4 => Cidr {
                            addr: IpAddr::V4(Ipv4Addr::new(10, i as u8, 0, k as u8 + 1)),
                            prefix: 24,
                        },
                        Family::Ipv6 => Cidr {
                            addr: IpAddr::V6(Ipv6Addr::new(
                                0xfd00,
                                i as u16,
                                0,
                                0,
                                0,
                                0,
                                0,
                                k as u16 + 1,
                            )),
                            prefix: 64,
                        },
                    });
                }
            }
            n.addresses.sort();
            (name, n)
        })
        .collect();
    let mut connections: Vec<Connection> = Vec::new();
    for (i, j, both, protocol, ports, bandwidth_bps) in raw_conns {
        let (a, b) = (&names[i % names.len()], &names[j % names.len()]);
        if a == b {
            continue;
        }
        let (from, to, direction) = if !both {
            (a.clone(), b.clone(), Direction::Forward)
        } else if a < b {
            (a.clone(), b.clone(), Direction::Both)
        } else {
            (b.clone(), a.clone(), Direction::Both)
        };
        if connections
            .iter()
            .any(|c| overlaps((&c.from, &c.to, c.direction), (&from, &to, direction)))
        {
            continue;
        }
        let ports = if protocol.has_ports() {
            ports
        } else {
            Vec::new()
        };
        connections.push(Connection {
            from,
            to,
            direction,
            protocol,
            ports,
            bandwidth_bps,
        });
    }
    connections.sort_by(|a, b| (&a.from, &a.to, a.direction).cmp(&(&b.from, &b.to, b.direction)));
    let mut security: Vec<Security> = Vec::new();
    for (ci, pick, mut rules) in raw_secs {
        if connections.is_empty() || rules.is_empty() {
            continue;
        }
        let c = &connections[ci % connections.len()];
        let (from, to, direction) = match (c.direction, pick % 3) {
            (Direction::Forward, _) | (Direction::Both, 0) => {
                (c.from.clone(), c.to.clone(), c.direction)
            }
            (Direction::Both, 1) => (c.from.clone(), c.to.clone(), Direction::Forward),
            _ => (c.to.clone(), c.from.clone(), Direction::Forward),
        };
        if security
            .iter()
            .any(|s| overlaps((&s.from, &s.to, s.direction), (&from, &to, direction)))
        {
            continue;
        }
        rules.sort();
        rules.dedup();
        security.push(Security {
            from,
            to,
            direction,
            rules,
        });
    }
    security.sort_by(|a, b| (&a.from, &a.to, a.direction).cmp(&(&b.from, &b.to, b.direction)));
    head.nodes = nodes;
    head.connections = connections;
    head.security = security;
    head
}

fn network() -> impl Strategy<Value = Network> {
    (
        "[a-z0-9][a-z0-9_-]{0,12}",
        prop::option::of(1..=16_777_215u32),
        prop::option::of(1..=4094u16),
        prop::option::of(1280..=9216u16),
        "[A-Za-z0-9._-]{1,16}",
        prop_oneof![
            Just(vec![Family::Ipv4]),
            Just(vec![Family::Ipv6]),
            Just(vec![Family::Ipv4, Family::Ipv6])
        ],
        prop::collection::btree_map("[a-z0-9][a-z0-9_-]{0,8}", node(), 1..6),
        prop::collection::vec(
            (
                0..8usize,
                0..8usize,
                any::<bool>(),
                protocol(),
                sorted_ports(3),
                prop::option::of(1..=u64::MAX),
            ),
            0..8,
        ),
        prop::collection::vec(
            (0..8usize, any::<u8>(), prop::collection::vec(rule(), 0..4)),
            0..5,
        ),
    )
        .prop_map(
            |(name, vni, vlan, mtu, shards, families, nodes, conns, secs)| {
                let head = Network {
                    name,
                    vni,
                    vlan,
                    mtu,
                    addressing: Addressing { shards, families },
                    nodes: BTreeMap::new(),
                    connections: Vec::new(),
                    security: Vec::new(),
                };
                build(head, nodes, conns, secs)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn format_parses_back_to_the_same_network(net in network()) {
        let text = format(&net);
        let again = parse("formatted.tdl", &text);
        prop_assert!(again.is_ok(), "{}\n---\n{}", again.unwrap_err(), text);
        prop_assert_eq!(again.unwrap(), net.clone(), "{}", text);
        let json = serde_json::to_string(&net).unwrap();
        prop_assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), net);
    }

    #[test]
    fn parse_never_panics_on_anything(text in "(?s).{0,300}") {
        let _ = parse("any.tdl", &text);
    }

    #[test]
    fn parse_never_panics_on_yaml_shaped_text(
        lines in prop::collection::vec(
            ("[ ]{0,6}", prop::sample::select(vec![
                "network", "nodes", "connections", "security", "kinds", "defaults", "vni", "- ",
                "web", "db", "a <-> b", "a -> b", "inherits", "kind", "ports", "port", "cpu",
                "memory", "addresses", "firewall_rule", "env", "volumes", "{", "[", "&x", "*x",
            ]), prop::option::of(prop::sample::select(vec![
                ": x", ": 0", ": [1, 2]", ": {}", ":", ": 8GB", ": allow_all", ": -1", ": ~",
                ": [::1/64]", ": \"q\"", ": 99999999999999999999999",
            ]))),
            0..30,
        )
    ) {
        let text: String = lines
            .iter()
            .map(|(indent, key, value)| format!("{indent}{key}{}\n", value.unwrap_or("")))
            .collect();
        let _ = parse("shaped.tdl", &text);
    }
}

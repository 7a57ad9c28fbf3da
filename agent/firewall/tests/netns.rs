//! Real firewalls in real namespaces (needs root: skipped otherwise).

mod support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{Netns, link};
use weft_firewall::{
    Error, EventKind, InboundRule, NamespaceFirewall, PortRange, Prefix, Protocol, Ruleset,
    Verdict, Watcher, apply, drift, read,
};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("skipped: needs root (network namespaces, nf_tables)");
    }
    r
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn tcp(port: u16, from: &[&str]) -> InboundRule {
    InboundRule {
        sources: from.iter().map(|s| p(s)).collect(),
        protocol: Protocol::Tcp,
        ports: vec![PortRange::single(port)],
        verdict: Verdict::Accept,
    }
}

fn icmp_accept() -> InboundRule {
    InboundRule {
        sources: vec![],
        protocol: Protocol::Icmp,
        ports: vec![],
        verdict: Verdict::Accept,
    }
}

/// A TCP listener on `[::]:port` (IPv4 too) inside `ns`, accepting until dropped.
struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(ns: &Netns, port: u16) -> Listener {
    let file = std::fs::File::open(&ns.path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        // SAFETY: setns on an open namespace fd; this thread only.
        assert_eq!(
            unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        let l = TcpListener::bind(("::", port)).expect("bind");
        l.set_nonblocking(true).unwrap();
        tx.send(()).unwrap();
        while !s.load(Ordering::Relaxed) {
            match l.accept() {
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    rx.recv().expect("listener ready");
    Listener {
        stop,
        thread: Some(thread),
    }
}

/// Whether a TCP connection from `ns` to `addr` is established within 300 ms.
fn connects(ns: &Netns, addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
}

fn pings(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c1", "-W1", addr]).status.success()
}

#[test]
fn inbound_default_deny_with_allowed_tcp_and_icmp() {
    if !root() {
        return;
    }
    let a = Netns::new();
    let b = Netns::new();
    link(&a, &b);
    let _l1 = listen(&b, 8080);
    let _l2 = listen(&b, 9090);
    // Without a firewall everything gets through: the blocking below is the firewall's.
    assert!(connects(&a, "198.18.0.2:9090"));
    assert!(connects(&a, "[fd00::2]:9090"));
    assert!(pings(&a, "198.18.0.2"));

    let mut rs = Ruleset {
        rules: vec![tcp(8080, &["198.18.0.1/32", "fd00::1/128"])],
    };
    let r = apply(b.path(), &rs).unwrap();
    assert!(r.changed);
    assert!(
        connects(&a, "198.18.0.2:8080"),
        "tcp 8080 from A allowed (IPv4)"
    );
    assert!(
        connects(&a, "[fd00::2]:8080"),
        "tcp 8080 from A allowed (IPv6)"
    );
    let t = Instant::now();
    assert!(!connects(&a, "198.18.0.2:9090"), "tcp 9090 dropped (IPv4)");
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert!(!connects(&a, "[fd00::2]:9090"), "tcp 9090 dropped (IPv6)");
    assert!(!pings(&a, "198.18.0.2"), "ping dropped (IPv4)");
    assert!(!pings(&a, "fd00::2"), "ping dropped (IPv6)");
    // B's own outbound connections still work: their replies are established.
    let _la = listen(&a, 7070);
    assert!(connects(&b, "198.18.0.1:7070"));
    assert!(connects(&b, "[fd00::1]:7070"));

    rs.rules.push(icmp_accept());
    let r = apply(b.path(), &rs).unwrap();
    assert!(r.changed);
    assert!(pings(&a, "198.18.0.2"), "ping allowed (IPv4)");
    assert!(pings(&a, "fd00::2"), "ping allowed (IPv6)");

    // A source that is not A's: 8080 dropped too.
    let rs = Ruleset {
        rules: vec![tcp(8080, &["198.18.0.100/32"])],
    };
    apply(b.path(), &rs).unwrap();
    assert!(!connects(&a, "198.18.0.2:8080"));
    // A drop rule before an accept rule wins (first match).
    let rs = Ruleset {
        rules: vec![
            InboundRule {
                sources: vec![p("198.18.0.0/30")],
                protocol: Protocol::Tcp,
                ports: vec!["8000-8100".parse().unwrap()],
                verdict: Verdict::Drop,
            },
            tcp(8080, &[]),
            tcp(9090, &[]),
        ],
    };
    apply(b.path(), &rs).unwrap();
    assert!(!connects(&a, "198.18.0.2:8080"));
    assert!(
        connects(&a, "[fd00::2]:8080"),
        "the IPv4 drop does not cover IPv6"
    );
    assert!(connects(&a, "198.18.0.2:9090"));
}

#[test]
fn nft_shows_what_we_built() {
    if !root() {
        return;
    }
    let b = Netns::new();
    let rs = Ruleset {
        rules: vec![
            tcp(8080, &["198.18.0.1/32", "fd00::/64"]),
            InboundRule {
                sources: vec![p("198.18.0.0/15")],
                protocol: Protocol::Udp,
                ports: vec!["5000-5010".parse().unwrap()],
                verdict: Verdict::Drop,
            },
            icmp_accept(),
        ],
    };
    apply(b.path(), &rs).unwrap();
    let out = b.nft(&["list", "ruleset"]);
    println!("{out}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    let expect = [
        "table inet weft {",
        "chain input {",
        "type filter hook input priority filter; policy drop;",
        "ct state established,related accept comment \"weft built-in\"",
        "iif \"lo\" meta mark != 0x57460001 accept comment \"weft built-in\"",
        "icmpv6 type 133-136 accept comment \"weft built-in\"",
        "ip saddr 198.18.0.1 tcp dport 8080 accept comment \"weft rule 1\"",
        "ip6 saddr fd00::/64 tcp dport 8080 accept comment \"weft rule 1\"",
        "ip saddr 198.18.0.0/15 udp dport 5000-5010 drop comment \"weft rule 2\"",
        "meta l4proto icmp accept comment \"weft rule 3\"",
        "meta l4proto ipv6-icmp accept comment \"weft rule 3\"",
        "meta mark 0x57460001 meta l4proto tcp reject with tcp reset comment \"weft built-in\"",
    ];
    // In this order, and nothing else in the chain.
    let mut at = 0;
    for e in expect {
        let i = lines[at..]
            .iter()
            .position(|l| *l == e)
            .unwrap_or_else(|| panic!("{e:?} not found (in order) in:\n{out}"));
        at += i + 1;
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("comment \"weft"))
            .count(),
        9
    );
    // No other table.
    assert_eq!(lines.iter().filter(|l| l.starts_with("table ")).count(), 1);
}

/// A table an agent before `ROUTED_MARK` wrote (its loopback rule `iif "lo" accept`,
/// which let the request router carry any client past the node's rules): the legacy rule
/// reads as a built-in to replace, not as a change by hand, and one apply writes the
/// current loopback rule in its place and the routed reject it lacked, keeping the user
/// rules.
#[test]
fn a_table_of_an_older_agent_gets_the_current_built_in_rules() {
    if !root() {
        return;
    }
    let b = Netns::new();
    let rs = Ruleset {
        rules: vec![tcp(5432, &["198.18.0.5/32"])],
    };
    // The table as it is now, then its loopback rule as older agents wrote it, and
    // without the routed reject at the end (older agents had none).
    apply(b.path(), &rs).unwrap();
    let rules = read(b.path()).unwrap().input_rules().unwrap().to_vec();
    let handle = rules[1].handle;
    let reject = rules.last().unwrap().handle;
    b.nft(&[
        "delete",
        "rule",
        "inet",
        "weft",
        "input",
        "handle",
        &reject.to_string(),
    ]);
    b.nft(&[
        "replace",
        "rule",
        "inet",
        "weft",
        "input",
        "handle",
        &handle.to_string(),
        "iif",
        "lo",
        "accept",
        "comment",
        "\"weft built-in\"",
    ]);
    let o = read(b.path()).unwrap();
    let d = drift(&rs, &o);
    assert!(
        d.iter()
            .any(|l| l.starts_with("built-in rule (iif lo accept) of an older agent")),
        "{d:?}"
    );
    assert!(
        d.contains(
            &"built-in rule (meta mark 0x57460001 tcp reject with tcp reset) missing".to_owned()
        ),
        "{d:?}"
    );
    assert!(
        d.iter().all(|l| l.starts_with("built-in")),
        "only built-in rules differ: {d:?}"
    );
    let live = o.live_rules().expect("weft's shape");
    assert!(live.foreign.is_empty(), "{:?}", live.foreign);
    assert_eq!(live.ruleset, rs, "the user rules read back");
    let r = apply(b.path(), &live.ruleset).unwrap();
    assert!(r.changed);
    assert_eq!(drift(&rs, &read(b.path()).unwrap()), Vec::<String>::new());
    let out = b.nft(&["list", "ruleset"]);
    assert!(
        out.contains("iif \"lo\" meta mark != 0x57460001 accept")
            && !out.contains("iif \"lo\" accept")
            && out.contains("meta mark 0x57460001 meta l4proto tcp reject with tcp reset"),
        "{out}"
    );
}

/// Waits for a watcher event that needs a check (someone else changed table inet weft).
fn wait_foreign(w: &mut Watcher, bound: Duration) -> (weft_firewall::Event, Duration) {
    let t = Instant::now();
    loop {
        let left = bound.saturating_sub(t.elapsed());
        let e = w
            .next_timeout(Some(left))
            .unwrap()
            .unwrap_or_else(|| panic!("no event within {bound:?}"));
        if e.needs_check() {
            let took = t.elapsed();
            // The rest of that batch, up to its generation event: one comparison for it.
            if e.kind != EventKind::Overrun {
                loop {
                    let g = w
                        .next_timeout(Some(bound))
                        .unwrap()
                        .expect("the batch's generation event");
                    if matches!(g.kind, EventKind::Generation { .. }) && g.portid == e.portid {
                        break;
                    }
                }
            }
            return (e, took);
        }
    }
}

#[test]
fn drift_is_seen_named_and_repaired() {
    if !root() {
        return;
    }
    let b = Netns::new();
    let rs = Ruleset {
        rules: vec![tcp(5432, &["198.18.0.5/32"]), icmp_accept()],
    };
    let (mut fw, mut w) = NamespaceFirewall::open_with_watcher(b.path()).unwrap();
    let r = fw.apply(&rs).unwrap();
    assert!(r.changed);
    assert_eq!(
        r.messages,
        2 + 2 + 3 + 3 + 1,
        "begin, end, table, chain, 3 built-in rules, 3 user rules, the routed reject"
    );
    // Our own apply's events are all marked own.
    std::thread::sleep(Duration::from_millis(20));
    let mut own = 0;
    while let Some(e) = w.try_next().unwrap() {
        assert!(e.own && !e.needs_check(), "{e:?}");
        own += 1;
    }
    assert!(own >= 7, "table, chain, rules, generation: {own}");

    // No false drift; a second apply changes nothing (no events, same handles).
    let o = fw.read().unwrap();
    assert_eq!(drift(&rs, &o), Vec::<String>::new());
    let r2 = fw.apply(&rs).unwrap();
    assert!(!r2.changed && r2.messages == 0);
    assert_eq!(fw.read().unwrap(), o);
    assert!(
        w.next_timeout(Some(Duration::from_millis(100)))
            .unwrap()
            .is_none()
    );
    assert_eq!(
        read(b.path()).unwrap().table,
        o.table,
        "a fresh socket reads the same"
    );

    let user_handle = o.input_rules().unwrap()[3].handle;
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            vec![
                "delete".into(),
                "rule".into(),
                "inet".into(),
                "weft".into(),
                "input".into(),
                "handle".into(),
                user_handle.to_string(),
            ],
            vec!["rule 1 (tcp 5432 from 198.18.0.5/32 accept) missing"],
        ),
        (
            vec![
                "flush".into(),
                "chain".into(),
                "inet".into(),
                "weft".into(),
                "input".into(),
            ],
            vec![
                "built-in rule (ct state established,related accept) missing",
                "rule 1 (tcp 5432 from 198.18.0.5/32 accept) missing",
                "rule 2 (icmp accept) part (icmpv6 accept) missing",
            ],
        ),
        (
            vec![
                "delete".into(),
                "table".into(),
                "inet".into(),
                "weft".into(),
            ],
            vec!["table inet weft deleted"],
        ),
        (
            vec![
                "chain".into(),
                "inet".into(),
                "weft".into(),
                "input".into(),
                "{ policy accept; }".into(),
            ],
            vec!["chain input policy accept, want drop"],
        ),
        (
            vec![
                "add".into(),
                "rule".into(),
                "inet".into(),
                "weft".into(),
                "input".into(),
                "tcp".into(),
                "dport".into(),
                "22".into(),
                "accept".into(),
            ],
            vec!["extra rule handle"],
        ),
        (
            vec![
                "insert".into(),
                "rule".into(),
                "inet".into(),
                "weft".into(),
                "input".into(),
                "counter".into(),
                "drop".into(),
            ],
            vec!["extra rule handle"],
        ),
        (
            vec![
                "add".into(),
                "chain".into(),
                "inet".into(),
                "weft".into(),
                "other".into(),
            ],
            vec!["extra chain other (0 rules)"],
        ),
        (
            vec![
                "add".into(),
                "table".into(),
                "inet".into(),
                "weft".into(),
                "{ flags dormant; }".into(),
            ],
            vec!["table inet weft flags 0x1 (dormant), want 0"],
        ),
    ];
    for (cmd, want) in cases {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        b.nft(&args);
        let (ev, took) = wait_foreign(&mut w, Duration::from_secs(2));
        println!("{:?}: {:?} after {took:?}", args.join(" "), ev.kind);
        assert!(!ev.own);
        let d = drift(&rs, &fw.read().unwrap());
        for want in &want {
            assert!(
                d.iter().any(|x| x.starts_with(want)),
                "{args:?}: {want:?} not in {d:?}"
            );
        }
        let r = fw.apply(&rs).unwrap();
        assert!(r.changed, "{args:?}");
        assert_eq!(r.drift_before, d);
        assert_eq!(
            drift(&rs, &fw.read().unwrap()),
            Vec::<String>::new(),
            "{args:?}"
        );
        // The repair's own events do not ask for another check.
        std::thread::sleep(Duration::from_millis(10));
        while let Some(e) = w.try_next().unwrap() {
            assert!(!e.needs_check(), "{args:?}: {e:?}");
        }
    }
    // Events of other tables are not ours to check.
    b.nft(&["add", "table", "ip", "other"]);
    let e = w
        .next_timeout(Some(Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(e.kind, EventKind::NewTable);
    assert!(!e.is_weft() && !e.needs_check());
    assert_eq!(drift(&rs, &fw.read().unwrap()), Vec::<String>::new());
}

#[tokio::test(flavor = "current_thread")]
async fn watcher_on_tokio() {
    if !root() {
        return;
    }
    let b = Netns::new();
    let mut w = Watcher::open(b.path()).unwrap();
    let rs = Ruleset {
        rules: vec![tcp(80, &[])],
    };
    apply(b.path(), &rs).unwrap();
    // Another socket's apply: not own for this watcher.
    let e = tokio::time::timeout(Duration::from_secs(2), w.next())
        .await
        .unwrap()
        .unwrap();
    assert!(e.is_weft() && e.needs_check(), "{e:?}");
    let ns = b.name.clone();
    let del = tokio::task::spawn_blocking(move || {
        support::must(
            "ip",
            &[
                "netns", "exec", &ns, "nft", "delete", "table", "inet", "weft",
            ],
        )
    });
    let e = loop {
        let e = tokio::time::timeout(Duration::from_secs(2), w.next())
            .await
            .unwrap()
            .unwrap();
        if e.kind == EventKind::DelTable {
            break e;
        }
    };
    del.await.unwrap();
    assert!(e.is_weft() && !e.own);
}

#[test]
fn errors_name_the_namespace() {
    if !root() {
        return;
    }
    let e = apply(
        Some(std::path::Path::new("/run/netns/weft-fw-does-not-exist")),
        &Ruleset::default(),
    )
    .unwrap_err();
    assert!(matches!(e, Error::NetnsOpen { .. }), "{e}");
    assert!(
        e.to_string().contains("/run/netns/weft-fw-does-not-exist"),
        "{e}"
    );
    assert_eq!(e.errno(), Some(libc::ENOENT));
    let b = Netns::new();
    let bad = Ruleset {
        rules: vec![InboundRule {
            sources: vec![],
            protocol: Protocol::Icmp,
            ports: vec![PortRange::single(1)],
            verdict: Verdict::Accept,
        }],
    };
    let e = apply(b.path(), &bad).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
}

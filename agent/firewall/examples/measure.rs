//! Measurements of weft-firewall (needs root):
//!
//! `cargo run -p weft-firewall --example measure --release [-- NAMESPACES [INJECTIONS]]`
//! (defaults 1000 and 100).
//!
//! 1. A 20-rule ruleset applied into NAMESPACES fresh namespaces (their creation with
//!    `ip -batch` is set-up, not measured): per namespace, opening the socket (thread,
//!    `setns`, socket) and the apply (read + one batch); then on the kept sockets, the
//!    same ruleset again (read and compare only) and a changed one (flush and refill).
//! 2. Drift: INJECTIONS times, a rule deleted by another netlink socket (as `nft delete
//!    rule` does, without a process start in the figure) while a watcher thread waits
//!    in poll(2): from the delete request to the watcher holding the event (detect), to
//!    read + drift naming the difference (compare), to the repair committed (repair).
//!    Then INJECTIONS / 5 times the same with the `nft` binary started by
//!    `ip netns exec`, where process start-up is inside the figure.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use weft_firewall::{
    Event, EventKind, InboundRule, NamespaceFirewall, PortRange, Prefix, Protocol, Ruleset,
    Verdict, drift,
};

fn ruleset(variant: u16) -> Ruleset {
    let rules = (0..20u16)
        .map(|i| {
            let src: Prefix = if i % 2 == 0 {
                format!("198.18.{}.0/24", i).parse().unwrap()
            } else {
                format!("fd00:{i:x}::/64").parse().unwrap()
            };
            InboundRule {
                sources: vec![src],
                protocol: if i % 3 == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                ports: vec![PortRange::single(8000 + i + variant)],
                verdict: if i == 19 {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                },
            }
        })
        .collect();
    Ruleset { rules }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn summary(name: &str, v: &mut [Duration]) {
    let sum: Duration = v.iter().sum();
    let mean = sum / v.len().max(1) as u32;
    println!(
        "  {name:<38} mean {:>10}  p50 {:>10}  p99 {:>10}  max {:>10}",
        ms(mean),
        ms(pct(v, 0.5)),
        ms(pct(v, 0.99)),
        ms(pct(v, 1.0))
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(1000);
    let injections = args.get(1).copied().unwrap_or(100);

    println!(
        "weft-firewall measure: {n} namespaces, 20-rule ruleset (23 kernel rules), {injections} injections"
    );
    let t = Instant::now();
    let many = support::ManyNetns::new(n);
    println!(
        "set-up: {n} namespaces made in {:.1} s (not measured)",
        t.elapsed().as_secs_f64()
    );
    let paths = many.paths();

    let rs = ruleset(0);
    let mut open = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    let mut handles = Vec::with_capacity(n);
    let mut messages = 0;
    let all = Instant::now();
    for p in &paths {
        let t0 = Instant::now();
        let mut fw = NamespaceFirewall::open(Some(p)).expect("open");
        let t1 = Instant::now();
        let r = fw.apply(&rs).expect("apply");
        let t2 = Instant::now();
        assert!(r.changed);
        messages = r.messages;
        open.push(t1 - t0);
        first.push(t2 - t1);
        handles.push(fw);
    }
    let total = all.elapsed();
    println!(
        "apply into {n} new namespaces: {:.1} s in all, {} per namespace ({messages} messages in one batch each)",
        total.as_secs_f64(),
        ms(total / n as u32)
    );
    summary("open socket in namespace", &mut open);
    summary("apply (read + batch)", &mut first);

    let mut same = Vec::with_capacity(n);
    for fw in &mut handles {
        let t0 = Instant::now();
        let r = fw.apply(&rs).expect("apply again");
        same.push(t0.elapsed());
        assert!(!r.changed);
    }
    summary("apply unchanged, kept socket", &mut same);
    let rs2 = ruleset(100);
    let mut changed = Vec::with_capacity(n);
    for fw in &mut handles {
        let t0 = Instant::now();
        let r = fw.apply(&rs2).expect("apply changed");
        changed.push(t0.elapsed());
        assert!(r.changed);
    }
    summary("apply changed ruleset, kept socket", &mut changed);
    let mut reads = Vec::with_capacity(n);
    for fw in &mut handles {
        let t0 = Instant::now();
        let o = fw.read().expect("read");
        assert!(drift(&rs2, &o).is_empty());
        reads.push(t0.elapsed());
    }
    summary("read + drift, kept socket", &mut reads);
    drop(handles);
    drop(many);

    // Drift detection and repair.
    let ns = support::Netns::new();
    let (mut fw, mut w) = NamespaceFirewall::open_with_watcher(ns.path()).expect("open");
    fw.apply(&rs).expect("apply");
    let mut injector = NamespaceFirewall::open(ns.path()).expect("injector");
    w.drain().expect("drain");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Event>(1024);
    let s = stop.clone();
    let watcher = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match w.next_timeout(Some(Duration::from_millis(100))) {
                Ok(Some(e)) => {
                    let gen_foreign = matches!(e.kind, EventKind::Generation { .. }) && !e.own;
                    if (e.needs_check() || gen_foreign) && tx.send(e).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("watcher: {e}"),
            }
        }
    });
    let wait = |kind_gen: bool| -> Event {
        loop {
            let e = rx
                .recv_timeout(Duration::from_secs(2))
                .expect("event within 2 s");
            if matches!(e.kind, EventKind::Generation { .. }) == kind_gen {
                return e;
            }
        }
    };
    let (mut detect, mut compare, mut repair) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..injections {
        let o = fw.read().expect("read");
        let victim = o.input_rules().expect("rules")[3 + i % 20].handle;
        std::thread::sleep(Duration::from_millis(2));
        let t0 = Instant::now();
        injector.delete_rule(victim).expect("inject");
        let e = wait(false);
        let t_event = e.received;
        wait(true); // the rest of that batch is in
        let d = drift(&rs, &fw.read().expect("read"));
        let t_compared = Instant::now();
        assert!(d.iter().any(|x| x.ends_with("missing")), "{d:?}");
        let r = fw.apply(&rs).expect("repair");
        let t_repaired = Instant::now();
        assert!(r.changed);
        detect.push(t_event.saturating_duration_since(t0));
        compare.push(t_compared - t0);
        repair.push(t_repaired - t0);
    }
    println!(
        "drift by another netlink socket ({injections} rule deletions), from the delete request:"
    );
    summary("watcher has the event (detect)", &mut detect);
    summary("read + drift name it", &mut compare);
    summary("repair committed", &mut repair);

    let (mut detect, mut repair) = (Vec::new(), Vec::new());
    for i in 0..(injections / 5).max(1) {
        let o = fw.read().expect("read");
        let victim = o.input_rules().expect("rules")[3 + i % 20]
            .handle
            .to_string();
        let t0 = Instant::now();
        let mut child = std::process::Command::new("ip")
            .args([
                "netns", "exec", &ns.name, "nft", "delete", "rule", "inet", "weft", "input",
                "handle", &victim,
            ])
            .spawn()
            .expect("nft");
        let e = wait(false);
        wait(true);
        let d = drift(&rs, &fw.read().expect("read"));
        assert!(!d.is_empty());
        fw.apply(&rs).expect("repair");
        detect.push(e.received.saturating_duration_since(t0));
        repair.push(t0.elapsed());
        assert!(child.wait().expect("nft").success());
    }
    println!("drift by `ip netns exec .. nft delete rule` (process start-up included):");
    summary("watcher has the event (detect)", &mut detect);
    summary("repair committed", &mut repair);
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = watcher.join();
}

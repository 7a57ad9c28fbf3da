//! The lab with several hypervisors and its helpers (no weft binaries): the underlay,
//! VXLAN between hypervisor bridges, nftables rulesets and the process supervisor.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_lab::nft::NftRuleset;
use weft_lab::supervise::{Policy, Supervised};
use weft_lab::{Lab, eventually, links, netns, servers, skip_unless_root, traffic};

/// Two hypervisors on one underlay, each with a workload. The bridges are separate L2
/// segments until a VXLAN joins them; then the workloads reach each other (IPv4, IPv6,
/// full-size frames), and again not once the VXLAN guards drop. Every hypervisor reaches
/// the controller's address (the first uplink's root end). Drop removes everything.
#[test]
fn vxlan_over_the_underlay_joins_two_hypervisors() -> Result<()> {
    if skip_unless_root("vxlan_over_the_underlay_joins_two_hypervisors") {
        return Ok(());
    }
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("a1")
        .hypervisor("hv2")
        .workload("b1")
        .build()?;
    let [hv1, hv2] = lab.hypervisors() else {
        panic!("two hypervisors expected");
    };
    let a1 = lab.workload("a1")?;
    let b1 = lab.workload("b1")?;
    assert_eq!((a1.hypervisor, b1.hypervisor), (0, 1));
    assert_ne!(hv1.gateway4, hv2.gateway4);
    let (u1, u2) = (
        hv1.underlay.as_ref().context("hv1 underlay")?,
        hv2.underlay.as_ref().context("hv2 underlay")?,
    );
    assert_eq!(traffic::ping_loss(&hv1.netns, &u2.addr4, 2)?, 0.0);
    assert_eq!(traffic::ping_loss(&hv2.netns, &u1.addr6, 2)?, 0.0);
    for hv in [hv1, hv2] {
        assert_eq!(
            traffic::ping_loss(&hv.netns, &hv1.uplink_root_addr, 1)?,
            0.0,
            "{} reaches the controller address",
            hv.name
        );
        assert_eq!(traffic::ping_loss(&hv.netns, &hv.uplink_root_addr, 1)?, 0.0);
    }
    // Each workload reaches its own gateway; the other hypervisor's workload is on
    // another L2 segment.
    assert_eq!(traffic::ping_loss(&a1.netns, &hv1.gateway4, 1)?, 0.0);
    assert_eq!(traffic::ping_loss(&b1.netns, &hv2.gateway4, 1)?, 0.0);
    assert_eq!(traffic::ping_loss(&a1.netns, &b1.ipv4, 1)?, 100.0);

    let vxlans = lab.join_bridges(4242)?;
    assert_eq!(vxlans.len(), 2);
    assert_eq!(vxlans[0].peers()?, vec![u2.addr4.clone()]);
    // a1's neighbour entry for b1 is still failing from the ping above: wait it out.
    eventually(Duration::from_secs(10), Duration::from_millis(200), || {
        ensure!(
            traffic::ping_loss(&a1.netns, &b1.ipv4, 1)? == 0.0,
            "b1 not reachable yet"
        );
        Ok(())
    })?;
    assert_eq!(traffic::ping_loss(&a1.netns, &b1.ipv4, 3)?, 0.0);
    assert_eq!(traffic::ping_loss(&b1.netns, &a1.ipv6, 3)?, 0.0);
    // A full 1500-byte IPv4 packet, not fragmented: the underlay has room for VXLAN.
    a1.netns.exec_timeout(
        Duration::from_secs(10),
        &[
            "ping", "-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", &b1.ipv4,
        ],
    )?;

    let dev = vxlans[0].name().to_string();
    drop(vxlans);
    ensure!(
        hv1.netns.ip(&["link", "show", "dev", &dev]).is_err(),
        "{dev} still exists"
    );
    assert_eq!(traffic::ping_loss(&a1.netns, &b1.ipv4, 1)?, 100.0);

    let names = lab.netns_names();
    assert_eq!(
        names.len(),
        5,
        "two hypervisors, two workloads, the underlay: {names:?}"
    );
    let uplinks = [hv1.uplink_root_if.clone(), hv2.uplink_root_if.clone()];
    drop(lab);
    let listed = netns::list()?;
    for n in &names {
        assert!(!listed.contains(n), "{n} still exists after drop");
    }
    for u in &uplinks {
        assert!(!links::root_link_exists(u), "{u} still exists");
    }
    Ok(())
}

/// A TCP connect that works, fails while an nftables rule drops the port, and works again
/// once the ruleset's guard drops (its table is gone).
#[test]
fn nft_ruleset_blocks_a_port_until_dropped() -> Result<()> {
    if skip_unless_root("nft_ruleset_blocks_a_port_until_dropped") {
        return Ok(());
    }
    let lab = Lab::builder()
        .workload("client")
        .workload("server")
        .build()?;
    let client = lab.workload("client")?;
    let server = lab.workload("server")?;
    let echo = servers::tcp_echo(server, 7007)?;
    let connect = || -> Result<String> {
        client.netns.exec_timeout(
            Duration::from_secs(8),
            &[
                "sh",
                "-c",
                &format!(
                    "echo hello-nft | socat -t 2 - TCP4:{}:{},connect-timeout=2",
                    echo.ipv4, echo.port
                ),
            ],
        )
    };
    ensure!(
        connect()?.contains("hello-nft"),
        "the echo answers before the rule"
    );

    let rules = NftRuleset::load(
        &server.netns,
        "table inet weftlab {\n\
           chain input {\n\
             type filter hook input priority 0;\n\
             tcp dport 7007 drop\n\
           }\n\
         }\n",
    )?;
    assert_eq!(
        rules.tables(),
        [("inet".to_string(), "weftlab".to_string())]
    );
    assert!(
        connect().is_err(),
        "connect must fail while port 7007 is dropped:\n{}",
        rules.listing()
    );
    // The same table cannot be loaded twice (drop would remove the other's table).
    assert!(NftRuleset::load(&server.netns, "table inet weftlab { }\n").is_err());

    drop(rules);
    let tables = server.netns.exec(&["nft", "list", "tables"])?;
    ensure!(!tables.contains("weftlab"), "table left behind: {tables}");
    ensure!(
        connect()?.contains("hello-nft"),
        "the echo answers again after the drop"
    );
    Ok(())
}

/// A supervised process in a namespace, killed with SIGKILL, comes back with a new pid in
/// the same namespace, each run logging to its own files; drop stops it for good.
#[test]
fn supervised_process_comes_back_after_sigkill() -> Result<()> {
    if skip_unless_root("supervised_process_comes_back_after_sigkill") {
        return Ok(());
    }
    let lab = Lab::builder().workload("w1").build()?;
    let hv = lab.hypervisor();
    let policy = Policy {
        max_restarts: 3,
        backoff: Duration::from_millis(50),
        ..Policy::default()
    };
    let s = Supervised::start(
        Some(&hv.netns),
        &["sh", "-c", "echo started $$; exec sleep 1000"],
        lab.dir(),
        "sleeper",
        policy,
    )?;
    // In the namespace once `ip netns exec` switched to it.
    let in_netns = |pid: u32| {
        eventually(Duration::from_secs(5), Duration::from_millis(20), || {
            ensure!(
                hv.netns.pids().contains(&i32::try_from(pid)?),
                "{pid} not in {}",
                hv.netns.name()
            );
            Ok(())
        })
    };
    let first = eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        s.pid().context("not running")
    })?;
    in_netns(first)?;
    // Killed only once it runs the command (not while `ip netns exec` still prepares).
    eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        ensure!(
            s.output().contains(&format!("started {first}\n")),
            "not started yet"
        );
        Ok(())
    })?;

    // SAFETY: kill has no memory-safety preconditions; `first` is our child.
    let rc = unsafe { libc::kill(i32::try_from(first)?, libc::SIGKILL) };
    ensure!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    let second = s.wait_restarted(first, Duration::from_secs(10))?;
    assert_ne!(first, second);
    assert_eq!(s.restarts(), 1);
    in_netns(second)?;
    let runs = s.runs();
    assert_eq!(runs.len(), 2);
    assert!(
        runs[0].exit.as_deref().unwrap_or("").contains("SIGKILL"),
        "{runs:?}"
    );
    assert_ne!(
        runs[0].stdout, runs[1].stdout,
        "each run logs to its own file"
    );
    eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        let out = s.output();
        ensure!(
            out.contains(&format!("started {first}\n"))
                && out.contains(&format!("started {second}\n")),
            "both runs logged: {out:?}; runs {:?}",
            s.runs()
        );
        Ok(())
    })?;

    drop(s);
    eventually(Duration::from_secs(5), Duration::from_millis(20), || {
        ensure!(
            !hv.netns.pids().contains(&i32::try_from(second)?),
            "{second} still runs"
        );
        Ok(())
    })?;
    Ok(())
}

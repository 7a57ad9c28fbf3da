//! The lab itself (no weft binaries): namespaces, bridge, addresses, cleanup.

use weft_lab::{Lab, netns, skip_unless_root, traffic};

#[test]
fn lab_connects_workloads_over_ipv4_and_ipv6_and_removes_everything_on_drop() {
    if skip_unless_root("lab_connects_workloads_over_ipv4_and_ipv6_and_removes_everything_on_drop")
    {
        return;
    }
    let lab = Lab::builder()
        .hypervisor("hv1")
        .workload("alpha")
        .workload("beta")
        .build()
        .unwrap();
    let a = lab.workload("alpha").unwrap();
    let b = lab.workload("beta").unwrap();
    assert_eq!(traffic::ping_loss(&a.netns, &b.ipv4, 3).unwrap(), 0.0);
    assert_eq!(traffic::ping_loss(&a.netns, &b.ipv6, 3).unwrap(), 0.0);
    // The gateway and the controller uplink answer too.
    let hv = lab.hypervisor();
    assert_eq!(traffic::ping_loss(&a.netns, &hv.gateway4, 1).unwrap(), 0.0);
    assert_eq!(
        traffic::ping_loss(&hv.netns, &hv.uplink_root_addr, 1).unwrap(),
        0.0
    );

    let names = lab.netns_names();
    assert_eq!(names.len(), 3);
    let listed = netns::list().unwrap();
    for n in &names {
        assert!(listed.contains(n), "{n} missing from {listed:?}");
    }
    let uplink = hv.uplink_root_if.clone();
    let dir = lab.dir().to_path_buf();
    drop(lab);

    let listed = netns::list().unwrap();
    for n in &names {
        assert!(
            !listed.contains(n),
            "{n} still exists after drop: {listed:?}"
        );
    }
    assert!(
        !weft_lab::links::root_link_exists(&uplink),
        "{uplink} still exists"
    );
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn servers_answer_inside_the_lab() {
    if skip_unless_root("servers_answer_inside_the_lab") {
        return;
    }
    use weft_lab::servers::{self, Site};
    let lab = Lab::builder()
        .workload("client")
        .workload("web")
        .workload("api")
        .workload("db")
        .workload("cache")
        .build()
        .unwrap();
    let api = servers::nginx(
        lab.workload("api").unwrap(),
        Site::Static(vec![
            ("data.json".into(), b"{\"ok\":true}\n".to_vec()),
            ("blob.bin".into(), servers::blob(200 * 1024)),
        ]),
    )
    .unwrap();
    let web = servers::nginx(
        lab.workload("web").unwrap(),
        Site::Proxy {
            upstream: api.addr(),
        },
    )
    .unwrap();
    let client = &lab.workload("client").unwrap().netns;
    let t = traffic::curl_keepalive(client, &format!("{}/blob.bin", web.url()), 3, &[]).unwrap();
    assert_eq!(traffic::total_download(&t), 3 * 200 * 1024);
    assert_eq!(t.iter().map(|t| t.num_connects).sum::<u64>(), 1);
    let t6 = traffic::curl_each(
        client,
        &format!("http://[{}]/data.json", web.ipv6),
        2,
        &["-6"],
    )
    .unwrap();
    assert_eq!(t6.len(), 2);

    let db = servers::postgres(lab.workload("db").unwrap()).unwrap();
    traffic::pgbench_init(client, &db.ipv4).unwrap();
    assert!(traffic::pgbench_run(client, &db.ipv4, 2, 2).unwrap() > 0);
    let cache = servers::redis(lab.workload("cache").unwrap()).unwrap();
    let out = traffic::redis_benchmark(client, &cache.ipv4, 200, 2).unwrap();
    assert!(out.contains("SET") && out.contains("GET"), "{out}");
}

#[test]
fn raw_frames_udp_and_netem_work_in_the_lab() {
    if skip_unless_root("raw_frames_udp_and_netem_work_in_the_lab") {
        return;
    }
    use std::time::Duration;
    use weft_lab::{rawframes, servers};
    let lab = Lab::builder()
        .workload("sender")
        .workload("receiver")
        .build()
        .unwrap();
    let s = lab.workload("sender").unwrap();
    let r = lab.workload("receiver").unwrap();

    let mut rx = rawframes::start_receiver(r, 20).unwrap();
    rawframes::send(s, r).unwrap();
    rawframes::wait_all_received(&mut rx, Duration::from_secs(15)).unwrap();

    let echo = servers::udp_echo(r, 5005).unwrap();
    assert_eq!(
        traffic::udp_roundtrips(&s.netns, &echo.ipv4, echo.port, 3).unwrap(),
        3
    );
    let tcp = servers::tcp_echo(r, 7007).unwrap();
    let out = s
        .netns
        .exec_timeout(
            Duration::from_secs(10),
            &[
                "sh",
                "-c",
                &format!(
                    "echo hello-tcp | socat -t 2 - TCP6:[{}]:{}",
                    r.ipv6, tcp.port
                ),
            ],
        )
        .unwrap();
    assert!(out.contains("hello-tcp"), "{out}");

    let delay = weft_lab::delay::egress_delay(r, 20).unwrap();
    println!("delay by {}", delay.method());
    let out = s
        .netns
        .exec_timeout(
            Duration::from_secs(10),
            &["ping", "-n", "-c", "3", "-i", "0.2", &r.ipv4],
        )
        .unwrap();
    let avg: f64 = out
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in {out}"));
    assert!(
        (19.0..40.0).contains(&avg),
        "ping avg {avg} ms with a 20 ms delay ({})",
        delay.method()
    );
    // TCP handshakes and transfers still work through the delay.
    let t = traffic::curl_each(&s.netns, &format!("http://{}:{}/", r.ipv4, 80), 1, &[]);
    assert!(
        t.is_err(),
        "no web server in this lab: the connection must be refused, not hang"
    );
}
